"""Anomaly ranking: how isolated a source is in an encoder's embedding space (Nan Li's feature-vector
kNN search; Astronomaly).

An anomaly score is a ``classifier`` row of ``lenscat.model_versions`` with architecture ``anomaly``
and the encoder version as its parent. Its score for a source is the mean cosine distance to its
``k`` nearest neighbours among a fixed *reference set* -- the encoder's embeddings of the chosen
surveys when the version was made (their source ids are kept in the checkpoint, so a source scored
later is measured against the same set) -- divided by 2 so it lies in [0, 1]; larger = more
isolated. The source itself and exact duplicates of its stored vector are not neighbours.

The score is stored in ``lenscat.scores`` by the normal score job, so ``lenscat top``, ``classifier
evaluate``, the grading grid and active learning take it like any classifier score. It uses no
labels (:func:`training_ids` is empty): evaluating it against lens labels says how early lenses
appear among the most unusual sources.

The neighbours are found exactly, with blocked float32 matrix products of the chunk's vectors
against every reference vector, :data:`BLOCK_ELEMENTS` similarities at a time (memory bounded).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from lenscat.catalogue.surveys import get_survey, real_source_sql
from lenscat.classifiers.loaders import load_checkpoint
from lenscat.classifiers.types import TrainResult
from lenscat.embeddings.vectors import read_embeddings
from lenscat.errors import LenscatError
from lenscat.registry.versions import (
    ModelVersion,
    check_name,
    get_model,
    register_model,
    store_checkpoint,
)

BLOCK_ELEMENTS = 1 << 24
"""Most query x reference similarities held at once (float32: 64 MiB)."""
DUPLICATE_SIM = 1 - 1e-3
"""Pairs more similar than this are compared exactly, and left out as neighbours when their stored vectors are equal."""


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1)


def _row_keys(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer keys of the rows of both arrays: equal keys for exactly equal rows."""
    both = np.ascontiguousarray(np.concatenate([query, reference]))
    _, inv = np.unique(both.view(np.dtype((np.void, both.dtype.itemsize * both.shape[1]))).ravel(), return_inverse=True)
    inv = inv.reshape(-1)
    return inv[: len(query)], inv[len(query) :]


def knn_isolation(
    query: np.ndarray, reference: np.ndarray, k: int, *, block_elements: int = BLOCK_ELEMENTS, progress: bool = False
) -> np.ndarray:
    """Mean cosine distance of each query vector to its ``k`` nearest reference vectors.

    Reference vectors equal to the query vector (the query itself, exact duplicates) are not
    neighbours. Vectors are scaled to unit length first.

    Parameters
    ----------
    query : ndarray, shape (n, d)
        The vectors to score.
    reference : ndarray, shape (m, d)
        The vectors to search.
    k : int
        Neighbours averaged.
    block_elements : int
        Most similarities computed at once (query rows per block = block_elements // m).
    progress : bool
        Show a progress bar over the blocks.

    Returns
    -------
    ndarray, shape (n,)
        Mean cosine distance in [0, 2] (float64).

    Raises
    ------
    LenscatError
        Fewer than ``k`` reference vectors differ from some query vector.
    """
    q, r = _unit(query), _unit(reference)
    m = len(r)
    if k < 1:
        raise LenscatError(f"k must be at least 1, got {k}")
    qkey, rkey = _row_keys(np.asarray(query, dtype=np.float32), np.asarray(reference, dtype=np.float32))
    out = np.empty(len(q), dtype=np.float64)
    rows = max(1, int(block_elements) // max(m, 1))
    for lo in tqdm(range(0, len(q), rows), disable=not progress, unit="block", desc="anomaly kNN"):
        qb = q[lo : lo + rows]
        sim = qb @ r.T
        ii, jj = np.nonzero(sim > DUPLICATE_SIM)
        if len(ii):
            same = qkey[lo + ii] == rkey[jj]
            sim[ii[same], jj[same]] = -np.inf
        n_ok = (sim > -np.inf).sum(axis=1)
        if (n_ok < k).any():
            raise LenscatError(
                f"k={k} nearest neighbours asked for, but only {int(n_ok.min())} reference vectors "
                "differ from one of the sources; choose a smaller k"
            )
        top = np.partition(sim, m - k, axis=1)[:, m - k :] if k < m else sim
        out[lo : lo + len(qb)] = np.mean(1.0 - top.astype(np.float64), axis=1)
    return np.clip(out, 0.0, 2.0)


# ------------------------------------------------------------------------------------ fitting
def _reference_sql(encoder_id: int, survey_ids: list[int] | None) -> str:
    cond = f"s.survey_id IN ({', '.join(str(int(x)) for x in survey_ids)})" if survey_ids else real_source_sql()
    return (
        f"SELECT e.source_id AS id FROM lenscat.embeddings e JOIN lenscat.sources s USING (source_id) "
        f"WHERE e.model_id = {int(encoder_id)} AND {cond}"
    )


def fit_anomaly(
    name: str, encoder: str, *, session: Session, k: int = 20, surveys: list[str] | None = None
) -> TrainResult:
    """Register an anomaly score of ``encoder``'s embeddings as the next version of classifier ``name``.

    Parameters
    ----------
    name : str
        Classifier name (its versions are anomaly scores).
    encoder : str
        Encoder (``NAME`` or ``NAME@VERSION``) whose stored embeddings are searched; the version's parent.
    session : Session
        Database session (the caller commits).
    k : int
        Neighbours averaged (Astronomaly-like isolation; 20 by default).
    surveys : list of str, optional
        The reference set and the sources scored: these surveys' embedded sources (default: every
        real survey, injection sets left out).

    Returns
    -------
    TrainResult
        The version (``created`` False when the same encoder, k and reference set were registered
        already) and a report.

    Raises
    ------
    LenscatError
        The encoder has no embeddings there, or ``k`` is not smaller than the number of embedded sources.
    """
    import torch

    check_name(name)
    if int(k) < 1:
        raise LenscatError(f"k must be at least 1, got {k}")
    enc = get_model("encoder", encoder, session=session)
    sids = sorted(get_survey(x, session=session).survey_id for x in surveys) if surveys else None
    ref = np.asarray(
        session.execute(text(_reference_sql(enc.model_id, sids) + " ORDER BY 1")).scalars().all(), dtype=np.int64
    )
    where = f" in {', '.join(surveys)}" if surveys else ""
    if len(ref) == 0:
        raise LenscatError(f"encoder {enc.label} has no embeddings{where}")
    if int(k) >= len(ref):
        raise LenscatError(
            f"k={k} neighbours need more than {k} embedded sources; encoder {enc.label} has "
            f"{len(ref)}{where}: choose a smaller k"
        )
    ref_sha = hashlib.sha256(b"anomaly-reference" + ref.astype("<i8").tobytes()).hexdigest()
    hparams = {
        "k": int(k),
        "surveys": sorted(surveys or []),
        "metric": "cosine",
        "score": "mean kNN distance / 2",
        "n_reference": int(len(ref)),
        "reference_sha256": ref_sha,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "anomaly.pt"
        torch.save(
            {
                "format": "lenscat-anomaly/1",
                "encoder_id": int(enc.model_id),
                "k": int(k),
                "survey_ids": list(sids or []),
                "reference_ids": torch.from_numpy(ref),
            },
            path,
        )
        stored, sha = store_checkpoint(path)
    tsha = hashlib.sha256(f"anomaly\0{enc.checkpoint_sha256 or enc.label}\0{ref_sha}".encode()).hexdigest()
    model, created = register_model(
        "classifier",
        name,
        architecture="anomaly",
        output_dim=1,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=hparams,
        input_spec={"input": "embedding", "encoder": enc.label, "dim": int(enc.output_dim or 0)},
        training_set_sha256=tsha,
        parent_model_id=enc.model_id,
        metrics={"n_reference": int(len(ref)), "k": int(k)},
        session=session,
    )
    return TrainResult(
        model,
        created,
        {
            "classifier": model.label,
            "encoder": enc.label,
            "created": created,
            "k": int(k),
            "n_reference": int(len(ref)),
            "notes": [],
        },
    )


def _checkpoint(model: ModelVersion) -> dict[str, Any]:
    if model.architecture != "anomaly":
        raise LenscatError(f"classifier {model.label} is a {model.architecture} classifier, not an anomaly score")
    return load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256))


# ------------------------------------------------------------------------------------ score-job hooks
def candidates_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the anomaly score covers: embedded by its encoder, in its surveys."""
    ck = _checkpoint(model)
    return _reference_sql(int(model.parent_model_id or 0), list(ck["survey_ids"]) or None) + (
        " AND s.survey_id = ANY(:sids)" if with_surveys else ""
    )


def score_sources(
    model: ModelVersion, source_ids: np.ndarray, *, session: Session, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly scores (mean cosine distance to the k nearest reference vectors, / 2) of ``source_ids``.

    Returns
    -------
    (ndarray, ndarray)
        The ids that have an embedding (sorted) and their scores in [0, 1].
    """
    ck = _checkpoint(model)
    enc = get_model("encoder", int(model.parent_model_id or 0), session=session)
    ref_ids = ck["reference_ids"].numpy().astype(np.int64)
    got, ref = read_embeddings(enc, source_ids=ref_ids, session=session)
    if len(got) != len(ref_ids):
        raise LenscatError(
            f"{len(ref_ids) - len(got)} of the {len(ref_ids)} reference embeddings of {model.label} "
            f"are no longer stored by {enc.label}: make a new version of the anomaly score"
        )
    ids = np.unique(np.asarray(source_ids, dtype=np.int64))
    pos = np.searchsorted(got, ids)
    inside = (pos < len(got)) & (got[np.minimum(pos, len(got) - 1)] == ids)
    q = np.empty((len(ids), ref.shape[1]), dtype=np.float32)
    q[inside] = ref[pos[inside]]
    if (~inside).any():
        other, vec = read_embeddings(enc, source_ids=ids[~inside], session=session)
        keep = inside.copy()
        keep[~inside] = np.isin(ids[~inside], other)
        q[~inside & keep] = vec
        ids, q = ids[keep], q[keep]
    return ids, knn_isolation(q, ref, int(ck["k"]), progress=progress) / 2.0


def training_ids(model: ModelVersion) -> np.ndarray:
    """None: an anomaly score uses no labels."""
    return np.zeros(0, dtype=np.int64)
