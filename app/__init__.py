"""The application shell: commands and servers around the pipeline's stages.

Not pipeline stages: `scratchwatch detect` (`detect.py`) runs the detector on photos, and
`scratchwatch serve` (`api.py`, `serve.py`, `web/`) is the HTTP API and web page over the
incident store. The server only reads the store (and writes review marks), so it can run on
another machine than the daemon, against the same database and snapshot folder.
"""
