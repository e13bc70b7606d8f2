"""Alembic migrations (installed as ``lenscat.migrations``); the only way lenscat's schema changes."""
