"""The HTTP API of `scratchwatch serve` (FastAPI; OpenAPI schema at /openapi.json, docs at /docs).

Read-only over the incident store except for one write, a review mark. Every route but
`/api/health` needs `Authorization: Bearer <token>`; the token is compared in constant time and
appears in no log line (it travels in a header, and uvicorn's access log prints only the path).
The web page (`app/web/`, plain HTML/JS) is served from `/` by the same process.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from pipeline.config import ConfigError, Settings
from storage.query import MAX_PAGE, CursorError, IncidentQuery, Sort
from storage.repository import CameraRecord, IncidentRecord, IncidentRepository
from storage.snapshot_files import SNAPSHOT_FIELDS, SnapshotUnavailable, resolve_snapshot, snapshot_root

TOKEN_ENV = "SCRATCHWATCH_API_TOKEN"
WEB_DIR = Path(__file__).resolve().parent / "web"
PLACEHOLDER = WEB_DIR / "placeholder.svg"
"""Shown instead of a snapshot that cannot be served: the page stays usable, the log says why."""

log = logging.getLogger("scratchwatch.api")
_bearer = HTTPBearer(auto_error=False, description="The token of `api.token` or $SCRATCHWATCH_API_TOKEN.")


def api_token(settings: Settings) -> str:
    """$SCRATCHWATCH_API_TOKEN, else `api.token`; ConfigError when neither is set (no open API by accident)."""
    token = os.environ.get(TOKEN_ENV) or (settings.api.token.get_secret_value() if settings.api.token else "")
    if not token.strip():
        raise ConfigError(f"no API token: set {TOKEN_ENV} (or api.token in the config) before `scratchwatch serve`")
    return token


class IncidentListParams(IncidentQuery):
    """Query parameters of `GET /api/incidents`: the filters plus sort and keyset pagination."""

    sort: Sort = Field(default="newest", title="Sort", description="newest or oldest (opened_at), or score (highest first).")
    limit: int = Field(default=50, ge=1, le=MAX_PAGE, title="Page size", description=f"Incidents per page, 1..{MAX_PAGE}.")
    cursor: str | None = Field(
        default=None, title="Cursor", description="`next_cursor` of the previous page, with the same filters and sort."
    )
    count: bool = Field(default=False, title="Count", description="Also return `total`, the number of matching incidents.")


class IncidentPage(BaseModel):
    items: list[IncidentRecord] = Field(description="Incidents of this page, in the requested order.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    total: int | None = Field(default=None, description="Matching incidents (only when `count=true`).")


class ReviewIn(BaseModel):
    verdict: Literal["confirmed", "false-alarm"] = Field(description="confirmed: real damage; false-alarm: not damage.")
    note: str | None = Field(default=None, max_length=2000, description="Free text kept with the verdict.")


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


def create_app(settings: Settings, engine: Engine, *, token: str | None = None) -> FastAPI:
    """The API and the page over `engine`; snapshots under `<data_dir>/snapshots`.

    `token` defaults to `api_token(settings)`; the reviewer name recorded is `api.user`.
    """
    app = FastAPI(
        title="ScratchWatch",
        version="1",
        description="Incidents of car damage found in parking-lot video: list, filter, inspect, review.",
    )
    app.state.repo = IncidentRepository(engine)
    app.state.token = (token or api_token(settings)).encode()
    app.state.snapshot_root = snapshot_root(settings.data_dir)
    app.state.reviewer = settings.api.user
    app.middleware("http")(_security_headers)
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.include_router(_public)
    app.include_router(_protected)
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


_SECURITY_HEADERS = {
    # the page loads only its own script and style, and images from the API as blob: URLs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
    """Headers that keep the page from being framed or fed foreign scripts, on every response."""
    response = await call_next(request)
    response.headers.update(_SECURITY_HEADERS)
    return response


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is down or refuses: 503 with a retry hint, the reason in the log only (never a 500)."""
    log.warning("%s %s: database error: %s", request.method, request.url.path, getattr(exc, "orig", exc))
    return JSONResponse({"detail": "database unavailable"}, status_code=503, headers={"Retry-After": "5"})


def _require_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the bearer token matches; hmac.compare_digest so timing tells nothing about it."""
    given = credentials.credentials.encode() if credentials is not None else b""
    if credentials is None or not hmac.compare_digest(given, request.app.state.token):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


_public = APIRouter(prefix="/api")
_protected = APIRouter(prefix="/api", dependencies=[Depends(_require_token)])


def _repo(request: Request) -> IncidentRepository:
    return request.app.state.repo


Repo = Annotated[IncidentRepository, Depends(_repo)]


@_public.get("/health", response_model=Health, summary="Liveness and database reachability (no token needed)")
def health(repo: Repo) -> Health:
    try:
        with repo.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # the reason goes to the log, not to an unauthenticated caller
        log.warning("health: database unreachable: %s", exc)
        raise HTTPException(503, "database unreachable") from None
    return Health(status="ok", database="ok")


@_protected.get("/incidents", response_model=IncidentPage, summary="Incidents matching the filters, one page")
def list_incidents(repo: Repo, params: Annotated[IncidentListParams, Query()]) -> IncidentPage:
    try:
        page = repo.page(params, sort=params.sort, limit=params.limit, cursor=params.cursor)
    except CursorError as exc:
        raise HTTPException(422, [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]) from None
    total = repo.count(params) if params.count else None
    return IncidentPage(items=page.items, next_cursor=page.next_cursor, total=total)


@_protected.get("/incidents/{incident_id}", response_model=IncidentRecord, summary="One incident, every field")
def get_incident(repo: Repo, incident_id: int) -> IncidentRecord:
    return _incident(repo, incident_id)


@_protected.post("/incidents/{incident_id}/review", response_model=IncidentRecord, summary="Mark an incident reviewed")
def review_incident(request: Request, repo: Repo, incident_id: int, review: ReviewIn) -> IncidentRecord:
    """The only write: the verdict and note, who (`api.user`) and when (UTC); a later review replaces it."""
    record = repo.review(incident_id, review.verdict, by=request.app.state.reviewer, note=review.note)
    if record is None:
        raise HTTPException(404, f"no incident with id {incident_id}")
    log.info("incident %d reviewed: %s by %s", incident_id, review.verdict, request.app.state.reviewer)
    return record


_IMAGE_RESPONSES = {200: {"content": {"image/jpeg": {}, "image/svg+xml": {}}, "description": "JPEG, or the SVG placeholder"}}


@_protected.get("/incidents/{incident_id}/snapshot", response_class=FileResponse, responses=_IMAGE_RESPONSES,
                summary="The annotated best frame")
def incident_snapshot(request: Request, repo: Repo, incident_id: int) -> FileResponse:
    return _image(request, repo, incident_id, "snapshot")


@_protected.get("/incidents/{incident_id}/crop", response_class=FileResponse, responses=_IMAGE_RESPONSES,
                summary="The damage crop at full resolution")
def incident_crop(request: Request, repo: Repo, incident_id: int) -> FileResponse:
    return _image(request, repo, incident_id, "crop")


@_protected.get("/incidents/{incident_id}/car", response_class=FileResponse, responses=_IMAGE_RESPONSES,
                summary="The whole car with the damage boxes (404 when the car stage found none)")
def incident_car(request: Request, repo: Repo, incident_id: int) -> FileResponse:
    return _image(request, repo, incident_id, "car")


@_protected.get("/cameras", response_model=list[CameraRecord], summary="Cameras and replayed files, last seen first")
def cameras(repo: Repo) -> list[CameraRecord]:
    return repo.cameras()


def _image(request: Request, repo: IncidentRepository, incident_id: int, image: str) -> FileResponse:
    """The JPEG the database names for this incident, or a placeholder (and a warning) when it cannot be served."""
    record = _incident(repo, incident_id)
    stored = getattr(record, SNAPSHOT_FIELDS[image])
    if not stored:
        raise HTTPException(404, f"incident {incident_id} has no {image} image")
    headers = {"Cache-Control": "private, no-cache"}
    try:
        path = resolve_snapshot(request.app.state.snapshot_root, stored)
    except SnapshotUnavailable as exc:
        log.warning("incident %d %s: %s; serving a placeholder", incident_id, image, exc)
        return FileResponse(PLACEHOLDER, media_type="image/svg+xml", headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers)


def _incident(repo: IncidentRepository, incident_id: int) -> IncidentRecord:
    record = repo.get(incident_id)
    if record is None:
        raise HTTPException(404, f"no incident with id {incident_id}")
    return record
