"""Storage fixtures: an engine and repository on every database of `database_url`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from storage.db import connect
from storage.repository import IncidentRepository


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = connect(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def repo(engine: Engine) -> IncidentRepository:
    return IncidentRepository(engine)
