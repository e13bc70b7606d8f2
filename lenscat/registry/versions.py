"""Model versions: the provenance rows every embedding and score points at.

A model is named by the user (``moco-small``); each distinct checkpoint registered under that name
becomes the next version (``moco-small@2``). Registering the same checkpoint again returns the
existing version. Checkpoint files are copied into ``LENSCAT_HOME/models/<sha256>.pt`` so that
workers find them under one path and a user's later edit of the original cannot change a version.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.errors import LenscatError, NotFoundError, Step
from lenscat.settings import get_settings

KINDS = ("encoder", "classifier", "detector", "lensmodel")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class ModelVersion:
    """One row of ``lenscat.model_versions``."""

    model_id: int
    kind: str
    name: str
    version: int
    architecture: str
    output_dim: int | None
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    origin: str
    hparams: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] = field(default_factory=dict)
    training_set_sha256: str | None = None
    parent_model_id: int | None = None

    @property
    def label(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


_COLUMNS = (
    "model_id, kind, name, version, architecture, output_dim, checkpoint_path, checkpoint_sha256, "
    "origin, hparams, input_spec, training_set_sha256, parent_model_id"
)


def _row(r: Any) -> ModelVersion:
    return ModelVersion(
        model_id=r.model_id,
        kind=r.kind,
        name=r.name,
        version=r.version,
        architecture=r.architecture,
        output_dim=r.output_dim,
        checkpoint_path=r.checkpoint_path,
        checkpoint_sha256=r.checkpoint_sha256,
        origin=r.origin,
        hparams=dict(r.hparams or {}),
        input_spec=dict(r.input_spec or {}),
        training_set_sha256=r.training_set_sha256,
        parent_model_id=r.parent_model_id,
    )


def models_dir() -> Path:
    """Directory of stored checkpoints (``LENSCAT_HOME/models``), created on demand."""
    d = get_settings().home.expanduser().resolve() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def training_state_dir() -> Path:
    """Where resumable training runs keep their state (``LENSCAT_HOME/training``)."""
    return get_settings().home.expanduser().resolve() / "training"


def store_checkpoint(path: str | Path) -> tuple[Path, str]:
    """Copy a checkpoint into the model store; returns (stored path, sha256)."""
    src = Path(path).expanduser().resolve()
    if not src.is_file():
        raise LenscatError(f"{src}: checkpoint file not found")
    sha = file_sha256(src)
    dest = models_dir() / f"{sha}{src.suffix or '.pt'}"
    if not dest.exists():
        tmp = dest.with_suffix(dest.suffix + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    return dest, sha


def check_name(name: str) -> str:
    """Validate a model name (letters, digits, ``_ . + -``; no ``@``)."""
    if not NAME_RE.match(name):
        raise LenscatError(f"invalid model name {name!r}: use letters, digits and _ . + - (no spaces or @)")
    return name


def register_model(
    kind: str,
    name: str,
    *,
    architecture: str,
    output_dim: int | None,
    checkpoint_path: str | Path | None,
    checkpoint_sha256: str | None,
    origin: str,
    hparams: dict[str, Any] | None = None,
    input_spec: dict[str, Any] | None = None,
    training_set_sha256: str | None = None,
    parent_model_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    description: str | None = None,
    session: Session,
) -> tuple[ModelVersion, bool]:
    """Register a model version, idempotently on (kind, name, checkpoint sha256).

    Returns
    -------
    (ModelVersion, bool)
        The version, and True when it was created now (False: that checkpoint was registered).
    """
    if kind not in KINDS:
        raise LenscatError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    check_name(name)
    # serialise concurrent registrations of the same name so version numbers stay dense
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k || '/' || :n))"), {"k": kind, "n": name})
    if checkpoint_sha256 is not None:
        existing = session.execute(
            text(
                f"SELECT {_COLUMNS} FROM lenscat.model_versions "
                "WHERE kind = :k AND name = :n AND checkpoint_sha256 = :sha"
            ),
            {"k": kind, "n": name, "sha": checkpoint_sha256},
        ).one_or_none()
        if existing is not None:
            return _row(existing), False
    row = session.execute(
        text(
            f"""
            INSERT INTO lenscat.model_versions
                (kind, name, version, architecture, output_dim, checkpoint_path, checkpoint_sha256,
                 hparams, training_set_sha256, parent_model_id, origin, input_spec, metrics, description)
            SELECT :k, :n, coalesce(max(version), 0) + 1, :arch, :dim, :path, :sha,
                   CAST(:hp AS jsonb), :tsha, :parent, :origin, CAST(:spec AS jsonb), CAST(:metrics AS jsonb), :descr
            FROM lenscat.model_versions WHERE kind = :k AND name = :n
            RETURNING {_COLUMNS}
            """
        ),
        {
            "k": kind,
            "n": name,
            "arch": architecture,
            "dim": output_dim,
            "path": str(checkpoint_path) if checkpoint_path else None,
            "sha": checkpoint_sha256,
            "hp": json.dumps(hparams or {}, sort_keys=True),
            "tsha": training_set_sha256,
            "parent": parent_model_id,
            "origin": origin,
            "spec": json.dumps(input_spec or {}, sort_keys=True),
            "metrics": json.dumps(metrics or {}, sort_keys=True),
            "descr": description,
        },
    ).one()
    return _row(row), True


def get_model(kind: str, ref: str | int, *, session: Session) -> ModelVersion:
    """A model version by ``name`` (latest version), ``name@version`` or numeric model id."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = session.execute(
            text(f"SELECT {_COLUMNS} FROM lenscat.model_versions WHERE model_id = :id AND kind = :k"),
            {"id": int(ref), "k": kind},
        ).one_or_none()
    else:
        name, _, ver = ref.partition("@")
        if ver and not ver.isdigit():
            raise LenscatError(f"bad {kind} reference {ref!r}: expected NAME or NAME@VERSION")
        row = session.execute(
            text(
                f"SELECT {_COLUMNS} FROM lenscat.model_versions WHERE kind = :k AND name = :n "
                + ("AND version = :v " if ver else "")
                + "ORDER BY version DESC LIMIT 1"
            ),
            {"k": kind, "n": name, **({"v": int(ver)} if ver else {})},
        ).one_or_none()
    if row is None:
        known = (
            session.execute(
                text("SELECT DISTINCT name FROM lenscat.model_versions WHERE kind = :k ORDER BY name"), {"k": kind}
            )
            .scalars()
            .all()
        )
        if known:
            raise NotFoundError(f"no {kind} {ref!r} (known: {', '.join(known)})")
        raise NotFoundError(
            f"no {kind} {ref!r} (none registered yet: {{step}})",
            step=Step((kind, "--help"), (), f"train or import a{'n' if kind[0] in 'aeiou' else ''} {kind} first"),
        )
    return _row(row)


def latest_model_ids(kind: str, *, session: Session) -> list[int]:
    """Model ids of the latest version of every name of a kind, ordered by name.

    The one answer to "which version is current": the highest ``version`` of each ``name``
    (:func:`get_model` with a bare ``NAME`` returns the same version).
    """
    return [
        int(x)
        for x in session.execute(
            text(
                "SELECT DISTINCT ON (name) model_id FROM lenscat.model_versions WHERE kind = :k "
                "ORDER BY name, version DESC"
            ),
            {"k": kind},
        ).scalars()
    ]


def latest_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of :func:`list_models` that are the latest version of their name, ordered by name."""
    latest: dict[str, dict[str, Any]] = {}
    for m in rows:
        if m["name"] not in latest or m["version"] > latest[m["name"]]["version"]:
            latest[m["name"]] = m
    return [latest[k] for k in sorted(latest)]


def list_models(kind: str, *, session: Session) -> list[dict[str, Any]]:
    """All versions of a kind, with the number of embeddings for encoders.

    ``crop`` [pixels] and ``views`` (orientations each embedding averages; 1 where the version
    predates the option) come from the version's input spec; ``crop`` is ``None`` where it has none.
    ``readout`` (what an encoder's stored vector holds: ``gap`` or ``gap+annuli2``; ``penultimate`` for
    a classifier's penultimate layer; ``gap`` where the version predates the option) comes from its
    hyper-parameters, ``None`` without a checkpoint. ``parent`` is the version it was derived from, as
    ``'KIND NAME@VERSION'`` (``'classifier C@1'`` for a classifier's penultimate layer), or ``None``.
    """
    rows = (
        session.execute(
            text(
                """
            SELECT m.model_id, m.name, m.version, m.architecture, m.output_dim AS dim, m.origin,
                   m.checkpoint_sha256, m.training_set_sha256, m.created_at,
                   (m.input_spec ->> 'crop')::int AS crop, coalesce((m.input_spec ->> 'views')::int, 1) AS views,
                   CASE WHEN m.checkpoint_path IS NOT NULL
                        THEN coalesce(m.hparams ->> 'readout', 'gap') END AS readout,
                   (SELECT count(*) FROM lenscat.embeddings e WHERE e.model_id = m.model_id) AS n_embeddings,
                   (SELECT p.kind || ' ' || p.name || '@' || p.version FROM lenscat.model_versions p
                    WHERE p.model_id = m.parent_model_id) AS parent
            FROM lenscat.model_versions m WHERE m.kind = :k ORDER BY m.name, m.version
            """
            ),
            {"k": kind},
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
