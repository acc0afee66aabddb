"""`scratchwatch serve`: the API and page under uvicorn, on the configured address (loopback by default)."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from pipeline.config import Settings

log = logging.getLogger("scratchwatch.api")


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT. The token is checked before the database is opened, so a
    missing token is one line (ConfigError, exit 2) and not a half-started server."""
    from app.api import api_token, create_app
    from storage.db import connect
    from storage.snapshot_files import snapshot_root

    token = api_token(settings)
    engine = connect(settings.database_url)
    try:
        app = create_app(settings, engine, token=token)
        log.info("serving the API and page on http://%s:%d/ (snapshots under %s)", host, port, snapshot_root(settings.data_dir))
        server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None, server_header=False))
        server.run()
    finally:
        engine.dispose()


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT end it with exit 0 like `scratchwatch run`.

    uvicorn's own handlers re-raise the signal once shut down, so the process would die "killed
    by SIGTERM" after a clean stop; systemd and scripts read that as a failure.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(signum: int, _frame: object) -> None:
            log.info("%s: stopping the API", signal.Signals(signum).name)
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
