"""`scratchwatch serve`: the API and page under uvicorn, on the configured address (loopback by default)."""

from __future__ import annotations

import logging

from pipeline.config import Settings

log = logging.getLogger("scratchwatch.api")


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT. The token is checked before the database is opened, so a
    missing token is one line (ConfigError, exit 2) and not a half-started server."""
    import uvicorn

    from app.api import api_token, create_app
    from storage.db import connect

    token = api_token(settings)
    engine = connect(settings.database_url)
    try:
        app = create_app(settings, engine, token=token)
        log.info("serving the API and page on http://%s:%d/ (snapshots under %s)", host, port, settings.data_dir / "snapshots")
        uvicorn.run(app, host=host, port=port, log_config=None, server_header=False)
    finally:
        engine.dispose()
