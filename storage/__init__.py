"""Incident storage: SQLAlchemy models, Alembic migrations, the repository and the retrying writer.

Entry points: `storage.db.connect`, `storage.repository.IncidentRepository`,
`storage.writer.IncidentWriter`, `storage.format.format_incidents`.
"""
