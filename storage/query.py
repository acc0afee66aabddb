"""What a list of incidents is filtered by, validated once for the CLI and the HTTP API.

`IncidentQuery` is a pydantic model so that both front ends reject the same bad values with
the same message naming the parameter (the API answers 422, the CLI prints one line and exits
2). Times without an offset are local time of the machine that parses them, because that is
the clock an operator reads; ISO-8601 with an offset (or `Z`) is taken as written.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

SORTS = ("newest", "oldest", "score")
"""newest/oldest: by opened_at; score: highest best_score first."""
Sort = Literal["newest", "oldest", "score"]
REVIEW_STATES = ("reviewed", "unreviewed", "confirmed", "false-alarm")
MAX_PAGE = 500


class CursorError(ValueError):
    """A cursor that this server did not hand out, or one for another sort order."""


def parse_time(value: Any) -> Any:
    """ISO-8601 (`2025-06-01T08:00:00Z`, `2025-06-01 08:00`, `2025-06-01`) to an aware datetime.

    A time without an offset is the local time of this machine. Anything that is not a string
    (a datetime from code, which the storage layer refuses when naive) is left as it is.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not a time: {value!r} (ISO-8601, e.g. 2025-06-01T08:00 local or 2025-06-01T06:00Z)") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


Time = Annotated[datetime, BeforeValidator(parse_time)]
Score = Annotated[float, Field(ge=0, le=1)]


class IncidentQuery(BaseModel):
    """Filters of `incidents list/export/stats` and `GET /api/incidents`; None means "any"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str | None = Field(default=None, title="Camera", description="Camera id (replays: `replay:<file stem>`).")
    since: Time | None = Field(
        default=None, title="Since", description="Opened at or after this time: ISO-8601; without an offset it is local time."
    )
    until: Time | None = Field(default=None, title="Until", description="Opened before this time (same format as since).")
    min_score: Score | None = Field(default=None, title="Lowest score", description="best_score >= this (0..1).")
    max_score: Score | None = Field(default=None, title="Highest score", description="best_score <= this (0..1).")
    kind: Literal["live", "replay"] | None = Field(
        default=None, title="Kind", description="live: a camera stream; replay: a video file replayed."
    )
    video: str | None = Field(
        default=None,
        title="Video file",
        description="The incident's source: the full path or URL, or a file name (matches any folder).",
        min_length=1,
    )
    state: Literal["open", "closed"] | None = Field(
        default=None, title="State", description="open: the damage is still being tracked; closed: the track ended."
    )
    review: Literal["reviewed", "unreviewed", "confirmed", "false-alarm"] | None = Field(
        default=None, title="Review", description="reviewed (any verdict), unreviewed, or one verdict."
    )

    @field_validator("until")
    @classmethod
    def _until_after_since(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("since")
        if since and until and until <= since:
            raise ValueError("must be later than since")
        return until

    @field_validator("max_score")
    @classmethod
    def _max_not_below_min(cls, max_score: float | None, info: ValidationInfo) -> float | None:
        min_score = info.data.get("min_score")
        if min_score is not None and max_score is not None and max_score < min_score:
            raise ValueError("must not be below min_score")
        return max_score


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(parameter, message) of the first problem, for a one-line error."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] != "value_error" and isinstance(error.get("input"), str):
        message += f" (got {error['input']!r})"
    return ".".join(str(part) for part in error["loc"]), message


def encode_cursor(sort: str, key: Any, incident_id: int) -> str:
    """An opaque token for "the rows after this one": the sort, its key value and the id tiebreak."""
    if isinstance(key, datetime):
        key = key.astimezone(timezone.utc).isoformat()
    raw = json.dumps([sort, key, incident_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    """(key, id) of a cursor made by `encode_cursor` for the same sort; CursorError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, key, incident_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise CursorError("not a cursor this server handed out") from None
    if cursor_sort != sort:
        raise CursorError(f"cursor belongs to sort={cursor_sort!r}, not {sort!r}")
    if not isinstance(incident_id, int) or isinstance(incident_id, bool):
        raise CursorError("not a cursor this server handed out")
    try:
        key = float(key) if sort == "score" else datetime.fromisoformat(key)
    except (TypeError, ValueError):
        raise CursorError("not a cursor this server handed out") from None
    if isinstance(key, datetime) and key.tzinfo is None:
        raise CursorError("not a cursor this server handed out")
    return key, incident_id
