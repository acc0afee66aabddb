"""Incident storage: SQLAlchemy models, Alembic migrations, the repository and the retrying writer.

Entry points: `storage.db.connect`, `storage.repository.IncidentRepository` (with the filters of
`storage.query.IncidentQuery`), `storage.writer.IncidentWriter`, `storage.format.format_incidents`,
`storage.snapshot_files.resolve_snapshot`.
"""
