"""Image embeddings of catalogue sources: planning a job, running one chunk, precomputed vectors.

``plan_embed_job`` finds the sources with a cutout and no embedding from the encoder version and
splits them into source_id ranges; a worker runs ``embed_chunk`` per range: read the cutouts
(grouped by file, in file order), run the encoder, upsert the vectors. Work is keyed on
(encoder version, source), so a chunk run twice, or redelivered after a worker died, writes each
vector once. A new encoder version makes every source "missing" again for that version.

A source whose cutout cannot be embedded (its file missing or unreadable, a row that cannot be
read, non-finite pixels, a cutout smaller than the encoder's crop or with other bands) is recorded
in ``lenscat.job_item_failures`` with the reason and skipped; the other sources of the chunk are
embedded and written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey
from lenscat.embeddings.vectors import upsert_embeddings
from lenscat.errors import LenscatError
from lenscat.images.formats import get_format
from lenscat.images.store import open_store, read_fits_cutout, resample
from lenscat.jobs.chunks import finish_chunk
from lenscat.jobs.failures import clear_item_failures, record_item_failures, without_failed_items
from lenscat.jobs.service import create_job, outside_open_chunks, plan_chunks
from lenscat.registry.checkpoints import verify_checkpoint
from lenscat.registry.device import select_device
from lenscat.registry.loaders import ANY_ARCHITECTURE, load_model, register_loader
from lenscat.registry.versions import ModelVersion, get_model

DEFAULT_CHUNK = 1024
DEFAULT_BATCH = 128


def verified_checkpoint(model: ModelVersion) -> Path:
    """The checkpoint file of an encoder version, checked to exist and to match its sha256.

    Raises
    ------
    LenscatError
        The version holds precomputed vectors only.
    CheckpointError
        The file is missing or was changed (:func:`lenscat.registry.checkpoints.verify_checkpoint`).
    """
    if model.origin == "external" or not model.checkpoint_path:
        raise LenscatError(f"encoder {model.label} holds precomputed vectors only; it has no checkpoint to run")
    return verify_checkpoint(model)


@register_loader("encoder", ANY_ARCHITECTURE)
def _load_encoder_version(model: ModelVersion, device: str | None) -> Any:
    """Registry loader of every encoder architecture: the network on ``device``, in eval mode.

    A version of architecture ``classifier-features``
    (:func:`lenscat.embeddings.encoder_derive.encoder_from_classifier`)
    loads as :class:`lenscat.models.features.ClassifierFeatures`: a classifier's penultimate layer.
    """
    from lenscat.models.checkpoint import load_encoder
    from lenscat.models.features import FEATURES_ARCH, load_features

    if model.origin == "external" or not model.checkpoint_path:
        raise LenscatError(f"encoder {model.label} holds precomputed vectors only; it has no checkpoint to run")
    path = Path(model.checkpoint_path)  # verified by load_model
    encoder: Any
    if model.architecture == FEATURES_ARCH:  # a classifier's penultimate layer
        encoder, _meta = load_features(path)
    else:
        encoder, _meta = load_encoder(path)
    return encoder.to(select_device(device)).eval()


def load_encoder_for(model: ModelVersion, device: str | None = None) -> tuple[Any, str]:
    """The torch encoder of a model version and its device, loaded once per process and checked by sha256.

    ``device`` defaults to ``LENSCAT_DEVICE``, else CUDA when available (:func:`lenscat.registry.device.select_device`).
    """
    dev = select_device(device)
    return load_model(model, dev), dev


def _survey_ids(surveys: list[str] | None, session: Session) -> list[int] | None:
    if not surveys:
        return None
    return [get_survey(s, session=session).survey_id for s in surveys]


def _missing_sql(model_id: int, with_surveys: bool) -> str:
    return (
        "SELECT s.source_id AS id FROM lenscat.sources s WHERE s.cutout_file_id IS NOT NULL "
        + ("AND s.survey_id = ANY(:sids) " if with_surveys else "")
        + "AND NOT EXISTS (SELECT 1 FROM lenscat.embeddings e "
        f"WHERE e.model_id = {int(model_id)} AND e.source_id = s.source_id)"
    )


@dataclass
class PlannedJob:
    """A submitted-to-be job."""

    job_id: int
    model: ModelVersion
    n_items: int
    n_chunks: int


def plan_embed_job(
    encoder: str,
    *,
    surveys: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
    exclude_open: bool = False,
    retry_failed: bool = True,
    session: Session,
) -> PlannedJob:
    """Create an ``embed`` job over the sources that lack an embedding from the encoder.

    Parameters
    ----------
    encoder
        Encoder name (latest version) or ``name@version``.
    surveys
        Only sources of these surveys (default: all with cutouts).
    chunk_size
        Sources per Celery task.
    batch_size
        Images per forward pass in the worker.
    exclude_open
        Leave out sources already in a queued or running chunk of this encoder (scheduled runs).
    retry_failed
        Include sources whose embedding failed before under this version (False: leave them out
        until their input changes, see :func:`lenscat.jobs.failures.without_failed_items`).
    session
        Database session; the caller commits before submitting the chunks.
    """
    model = get_model("encoder", encoder, session=session)
    if model.origin == "external":
        raise LenscatError(f"encoder {model.label} holds precomputed vectors only; nothing to run")
    if batch_size < 1:
        raise LenscatError(f"batch size must be >= 1, got {batch_size}")
    sids = _survey_ids(surveys, session)
    params = {
        "encoder": model.label,
        "surveys": surveys or [],
        "batch_size": int(batch_size),
        "chunk_size": int(chunk_size),
    }
    job_id = create_job("embed", model.model_id, params, session=session)
    id_sql = _missing_sql(model.model_id, bool(sids))
    if not retry_failed:
        id_sql = without_failed_items(id_sql, model.model_id)
    if exclude_open:
        id_sql = outside_open_chunks(id_sql, "embed", model.model_id)
    n_items, n_chunks = plan_chunks(job_id, id_sql, {"sids": sids} if sids else {}, chunk_size, session=session)
    return PlannedJob(job_id, model, n_items, n_chunks)


def _job(job_id: int, session: Session) -> tuple[ModelVersion, dict[str, Any]]:
    row = session.execute(
        text("SELECT model_id, params FROM lenscat.jobs WHERE job_id = :j"), {"j": job_id}
    ).one_or_none()
    if row is None:
        raise LenscatError(f"no job {job_id}")
    return get_model("encoder", int(row.model_id), session=session), dict(row.params)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_ITEM_ERRORS = (LenscatError, OSError, ValueError, KeyError, IndexError)
"""What reading one source's cutout can raise for a reason of that source (its file, its row)."""


def _finite_rows(ids: np.ndarray, images: np.ndarray, failures: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Drop images with a NaN or infinite pixel (recorded as failures)."""
    ok = np.isfinite(images.reshape(len(images), -1)).all(axis=1) if len(images) else np.ones(0, bool)
    failures += [(int(i), "cutout has NaN or infinite pixels") for i in ids[~ok]]
    return ids[ok], images[ok]


def _cutout_batches(
    rows: Sequence[Any], batch_size: int, spec: dict[str, Any], failures: list[tuple[int, str]]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(source_ids, images) batches: HDF5 rows in file order; FITS cutouts resampled to ``spec``.

    A source whose cutout cannot be read (file missing or not a cutout store, row unreadable,
    resampling impossible) or holds non-finite pixels is appended to ``failures`` as
    (source_id, reason) and left out of the batches.
    """
    import astropy.units as u

    by_file: dict[tuple[str, str], list[tuple[int, int, Any]]] = {}
    for r in rows:
        by_file.setdefault((r.path, r.format), []).append((int(r.cutout_row), int(r.source_id), r.member_paths))
    fits_ids: list[int] = []
    fits_imgs: list[np.ndarray] = []
    stamp = int(spec.get("stamp", 152))
    for (path, fmt), items in by_file.items():
        items.sort(key=lambda t: (t[0], t[1]))
        if get_format(fmt).single_object:  # one object per file (set): read, resample to the encoder's pixels
            for _, sid, members in items:
                try:
                    cut = read_fits_cutout(list(members) if members else path)
                    res = resample(
                        cut,
                        float(spec.get("pixel_scale_arcsec", 0.262)) * u.arcsec,
                        (stamp, stamp),
                        tuple(spec.get("bands", ("g", "r", "z"))),
                    )
                except _ITEM_ERRORS as exc:
                    failures.append((sid, _one_line(exc)))
                    continue
                fits_ids.append(sid)
                fits_imgs.append(res.data)
            continue
        try:
            store = open_store(path, fmt)
            len(store)  # opens the file: a missing or malformed file fails here, for all its sources
        except _ITEM_ERRORS as exc:
            failures += [(sid, _one_line(exc)) for _, sid, _ in items]
            continue
        for i in range(0, len(items), batch_size):
            part = items[i : i + batch_size]
            file_rows = np.array([p[0] for p in part], dtype=np.int64)
            ids = np.array([p[1] for p in part], dtype=np.int64)
            try:
                images = store.get(file_rows)
            except _ITEM_ERRORS:  # find which rows: read them one by one
                good_ids, good_imgs = [], []
                for sid, fr in zip(ids.tolist(), file_rows.tolist(), strict=True):
                    try:
                        good_imgs.append(store.get(np.array([fr], dtype=np.int64))[0])
                        good_ids.append(sid)
                    except _ITEM_ERRORS as exc:
                        failures.append((sid, f"{path}: row {fr}: {_one_line(exc)}"))
                if not good_ids:
                    continue
                ids, images = np.array(good_ids, dtype=np.int64), np.stack(good_imgs)
            ids, images = _finite_rows(ids, images, failures)
            if len(ids):
                yield ids, images
    for i in range(0, len(fits_ids), batch_size):
        ids, images = _finite_rows(
            np.array(fits_ids[i : i + batch_size], dtype=np.int64), np.stack(fits_imgs[i : i + batch_size]), failures
        )
        if len(ids):
            yield ids, images


def _shape_problem(encoder: Any, model: ModelVersion, shape: tuple[int, ...]) -> str | None:
    """Why images of ``shape`` (N, bands, H, W) cannot go through the encoder, or None."""
    from lenscat.models.inference import _preprocessing

    if len(shape) != 4:
        return f"cutout has shape {tuple(shape[1:])}, expected (bands, H, W)"
    in_chans = int(getattr(encoder, "in_chans", 0) or 0)
    if in_chans and shape[1] != in_chans:
        return f"cutout has {shape[1]} bands, encoder {model.label} takes {in_chans}"
    pre = _preprocessing(encoder, True)
    if pre is not None:
        try:
            pre._check(tuple(shape))
        except LenscatError as exc:
            return f"encoder {model.label}: {_one_line(exc)}"
    return None


def embed_chunk(
    job_id: int, chunk_no: int, lo_id: int, hi_id: int, *, session: Session, device: str | None = None
) -> int:
    """Embed the sources of one chunk that still lack a vector, and mark the chunk done.

    Runs in the caller's transaction: the vectors, the failures of sources that could not be
    embedded (``lenscat.job_item_failures``) and the chunk's ``done`` mark commit together.
    Returns the number of vectors written.
    """
    from lenscat.models.inference import encode

    t0 = time.perf_counter()
    model, params = _job(job_id, session)
    sids = _survey_ids(params.get("surveys") or None, session)
    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.cutout_row, f.path, f.format, f.member_paths
            FROM lenscat.sources s JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id BETWEEN :lo AND :hi
            """
            + ("AND s.survey_id = ANY(:sids) " if sids else "")
        ),
        {"lo": lo_id, "hi": hi_id, **({"sids": sids} if sids else {})},
    ).all()
    # leave out what a previous attempt wrote: a range scan and a set difference, not an anti-join
    # (planned on statistics from before this job's writes, that can turn quadratic)
    done = set(
        session.execute(
            text("SELECT source_id FROM lenscat.embeddings WHERE model_id = :m AND source_id BETWEEN :lo AND :hi"),
            {"m": model.model_id, "lo": lo_id, "hi": hi_id},
        ).scalars()
    )
    rows = [r for r in rows if int(r.source_id) not in done]
    n = 0
    failures: list[tuple[int, str]] = []
    if rows:
        encoder, dev = load_encoder_for(model, device)
        batch_size = int(params.get("batch_size") or DEFAULT_BATCH)
        ids_all: list[np.ndarray] = []
        vecs_all: list[np.ndarray] = []
        for ids, images in _cutout_batches(rows, batch_size, model.input_spec or {}, failures):
            problem = _shape_problem(encoder, model, tuple(images.shape))
            if problem is not None:  # a whole file's cutouts share their shape
                failures += [(int(i), problem) for i in ids]
                continue
            vecs = np.asarray(encode(encoder, images, batch_size=batch_size, device=dev))
            ok = np.isfinite(vecs).all(axis=1)
            failures += [(int(i), f"encoder {model.label} gave a non-finite vector") for i in ids[~ok]]
            ids_all.append(ids[ok])
            vecs_all.append(vecs[ok])
        if ids_all and sum(len(x) for x in ids_all):
            written_ids = np.concatenate(ids_all)
            n = upsert_embeddings(model, written_ids, np.concatenate(vecs_all), job_id=job_id, session=session)
            clear_item_failures(model.model_id, written_ids, lo_id, hi_id, session=session)
    n_failed = record_item_failures(job_id, model.model_id, "embed", failures, session=session)
    finish_chunk(job_id, chunk_no, n, time.perf_counter() - t0, session=session, n_failed=n_failed)
    return n


def embed_images(
    model: ModelVersion, images: np.ndarray, *, device: str | None = None, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Unit-length embeddings of (n, bands, H, W) survey-like cutouts under an encoder version."""
    from lenscat.models.inference import encode

    encoder, dev = load_encoder_for(model, device)
    return np.asarray(encode(encoder, images, batch_size=batch_size, device=dev))
