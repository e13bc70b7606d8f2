"""Encoders made elsewhere: external weights (:func:`import_encoder`) or their vectors (:func:`ingest_vectors`).

An imported checkpoint becomes an encoder version of origin ``imported`` that lenscat runs like
its own; precomputed vectors keyed by survey object id load as the embeddings of an existing
encoder, or of an ``external`` one whose "checkpoint" is the vectors file.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.catalogue.surveys import get_survey
from lenscat.embeddings.encoders import DEFAULT_INPUT_SPEC
from lenscat.embeddings.vectors import upsert_embeddings
from lenscat.errors import InputFileError, InvalidParameter, LenscatError
from lenscat.registry.versions import ModelVersion, check_name, get_model, register_model, store_checkpoint


def import_encoder(
    path: str | Path,
    name: str,
    *,
    arch: str = "resnet50",
    session: Session,
    description: str | None = None,
    views: int = 1,
) -> tuple[ModelVersion, bool]:
    """Register a torchvision ResNet-50 state dict (e.g. Stein et al.'s MoCo release) as an encoder.

    ``views`` (1, 4 or 8): the orientations of the crop each of its embeddings is averaged over
    (:attr:`lenscat.models.preprocess.Preprocessing.views`; 1, as the weights were published).
    """
    from dataclasses import replace

    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.checkpoint_import import import_torchvision_resnet50

    check_name(name)
    src = Path(path).expanduser().resolve()
    if arch != "resnet50":
        raise InvalidParameter(
            "arch", f"import supports torchvision ResNet-50 state dicts ({{arch}} resnet50), not {arch!r}"
        )
    encoder, meta = import_torchvision_resnet50(src)
    encoder.preprocessing = replace(encoder.preprocessing, views=views)
    src_sha = file_sha256(src)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "encoder.pt"
        hp = dict(meta.get("hparams", {})) if isinstance(meta, dict) else {}
        save_encoder(encoder, ckpt, arch=arch, hparams=hp)
        stored, sha = store_checkpoint(ckpt)
    return register_model(
        "encoder",
        name,
        architecture=arch,
        output_dim=int(encoder.feature_dim),
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="imported",
        hparams={
            "source_checkpoint": str(src),
            "source_checkpoint_sha256": src_sha,
            **(
                {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)}
                if isinstance(meta, dict)
                else {}
            ),
        },
        input_spec={**DEFAULT_INPUT_SPEC, "views": encoder.preprocessing.views},
        description=description,
        session=session,
    )


VECTOR_DATASETS = ("embeddings", "embedding", "representations", "features", "vectors")


def read_vectors(path: Path, id_col: str = "objid", dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids as str, vectors) from .npz / .h5 (ids + vectors) or .npy with a sibling ids file."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                vname = dataset or next((n for n in VECTOR_DATASETS if n in names), None)
                if vname is None or vname not in names:
                    raise InputFileError(
                        f"{path}: no vectors array (looked for {', '.join(VECTOR_DATASETS)}); "
                        f"arrays: {', '.join(names)}"
                    )
                if id_col not in names:
                    raise InputFileError(f"{path}: no id array {id_col!r}; arrays: {', '.join(names)}")
                return z[id_col].astype(str), np.asarray(z[vname])
        if suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            with h5py.File(path, "r") as fh:
                names = list(fh.keys())
                vname = dataset or next((n for n in VECTOR_DATASETS if n in names), None)
                if vname is None or vname not in names:
                    raise InputFileError(f"{path}: no vectors dataset (looked for {', '.join(VECTOR_DATASETS)})")
                if id_col not in names:
                    raise InputFileError(f"{path}: no id dataset {id_col!r}; datasets: {', '.join(names)}")
                ids = fh[id_col][...]
                ids = np.char.decode(ids, "utf-8") if ids.dtype.kind == "S" else ids.astype(str)
                return np.asarray(ids, dtype=str), np.asarray(fh[vname][...])
        if suffix == ".npy":
            ids_path = path.with_name(path.stem + f".{id_col}.txt")
            if not ids_path.is_file():
                raise InputFileError(
                    f"{path}: a bare .npy needs its ids, one per line, in {ids_path.name} "
                    "(or use .npz/.h5 with an id array)"
                )
            vec = np.load(path, allow_pickle=False)
            ids = np.array(ids_path.read_text().split(), dtype=str)
            return ids, vec
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot read vectors: {exc}") from exc
    raise InputFileError(f"{path}: unsupported vectors file (use .npz, .h5 or .npy)")


@dataclass
class VectorIngest:
    """Summary of an ingest of precomputed embeddings."""

    encoder: str
    n_rows: int
    n_loaded: int
    rejects: list[tuple[int, str, str]]  # (row, objid, reason)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (first rejects only)."""
        return {
            "encoder": self.encoder,
            "n_rows": self.n_rows,
            "n_loaded": self.n_loaded,
            "n_rejected": len(self.rejects),
            "rejects": [{"row": r, "objid": o, "reason": why} for r, o, why in self.rejects[:20]],
        }


def ingest_vectors(
    path: str | Path,
    encoder: str,
    survey: str,
    *,
    id_col: str = "objid",
    dataset: str | None = None,
    session: Session,
    batch: int = 50_000,
) -> VectorIngest:
    """Load precomputed vectors keyed by survey object id as an encoder's embeddings.

    An existing encoder (``NAME`` or ``NAME@V``) with the same dimension receives them; an unknown
    name is registered as an ``external`` encoder whose "checkpoint" is the vectors file.
    Rows whose id is not in the survey, duplicated, or non-finite are rejected with their reason;
    the rest load in one transaction (the caller commits).
    """
    p = Path(path).expanduser().resolve()
    ids, vec = read_vectors(p, id_col, dataset)
    if vec.ndim != 2 or len(vec) != len(ids):
        raise InputFileError(f"{p}: vectors must be (n, dim) with one id each; got {vec.shape} and {len(ids)} ids")
    survey_row = get_survey(survey, session=session)
    try:
        model = get_model("encoder", encoder, session=session)
        if model.output_dim != vec.shape[1]:
            raise LenscatError(
                f"encoder {model.label} makes {model.output_dim}-d vectors; {p} has "
                f"{vec.shape[1]}-d: use another {{encoder}} name",
                params="encoder",
            )
    except LenscatError as exc:
        if "no encoder" not in str(exc):
            raise
        model, _ = register_model(
            "encoder",
            encoder.partition("@")[0],
            architecture="external",
            output_dim=int(vec.shape[1]),
            checkpoint_path=p,
            checkpoint_sha256=file_sha256(p),
            origin="external",
            hparams={"vectors_file": str(p), "id_col": id_col},
            session=session,
        )
    rejects: list[tuple[int, str, str]] = []
    ok = np.isfinite(vec).all(axis=1) & (np.abs(vec).sum(axis=1) > 0)
    for i in np.nonzero(~ok)[0][:100_000]:
        rejects.append((int(i) + 1, str(ids[i]), "vector has NaN/inf or is all zeros"))
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), dtype=bool)
    dup[first] = False
    for i in np.nonzero(dup & ok)[0]:
        rejects.append((int(i) + 1, str(ids[i]), "duplicate id in the file (first occurrence kept)"))
    keep = ok & ~dup
    lookup: dict[str, int] = dict(
        session.execute(
            text("SELECT objid, source_id FROM lenscat.sources WHERE survey_id = :sv AND objid = ANY(:ids)"),
            {"sv": survey_row.survey_id, "ids": ids[keep].tolist()},
        ).all()
    )
    sid = np.array([lookup.get(str(x), -1) for x in ids], dtype=np.int64)
    for i in np.nonzero(keep & (sid < 0))[0]:
        rejects.append((int(i) + 1, str(ids[i]), f"objid not in survey {survey}"))
    keep &= sid >= 0
    rows = np.nonzero(keep)[0]
    n = 0
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        n += upsert_embeddings(model, sid[part], vec[part], session=session)
    rejects.sort()
    return VectorIngest(model.label, len(ids), n, rejects)
