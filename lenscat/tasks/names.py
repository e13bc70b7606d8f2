"""Celery task names: the strings workers, Celery beat and ``send_task`` agree on.

They are part of the protocol between running processes (a queued message names its task), so the
strings never change; code refers to these constants only. Importing this module imports no Celery.
"""

from __future__ import annotations

__all__ = [
    "CROSSMATCH_CATALOG",
    "EMBED_CHUNK",
    "LENSMODEL_CHUNK",
    "REPROCESS",
    "SCAN_SPECTRA_CHUNK",
    "SCORE_CHUNK",
    "TASK_OF_JOB_KIND",
]

#: embed one chunk of an ``embed`` job (:mod:`lenscat.tasks.embedding`)
EMBED_CHUNK = "lenscat.embed_chunk"
#: score one chunk of a ``score`` job (:mod:`lenscat.tasks.scoring`)
SCORE_CHUNK = "lenscat.score_chunk"
#: scan one chunk of a ``spectral_scan`` job (:mod:`lenscat.tasks.spectra`)
SCAN_SPECTRA_CHUNK = "lenscat.scan_spectra_chunk"
#: model one chunk of a ``lensmodel`` job (:mod:`lenscat.tasks.modelling`)
LENSMODEL_CHUNK = "lenscat.lensmodel_chunk"
#: plan the missing work of the latest model versions (Celery beat; :mod:`lenscat.tasks.scoring`)
REPROCESS = "lenscat.reprocess"
#: cross-match a literature catalogue (:mod:`lenscat.tasks.catalogue`)
CROSSMATCH_CATALOG = "lenscat.crossmatch_catalog"

#: the task that runs a chunk of each job kind (``lenscat.jobs.kind``)
TASK_OF_JOB_KIND: dict[str, str] = {
    "embed": EMBED_CHUNK,
    "score": SCORE_CHUNK,
    "spectral_scan": SCAN_SPECTRA_CHUNK,
    "lensmodel": LENSMODEL_CHUNK,
}
