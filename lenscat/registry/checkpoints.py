"""Checkpoint verification: a registered version loads only from the file it was registered with.

Every family (encoders, classifiers, spectral detectors) loads through
:func:`lenscat.registry.loaders.load_model`, which calls :func:`verify_checkpoint` first; code that
reads a checkpoint file by other means (a classifier's training ids, an ensemble's members) calls
:func:`verify_file` itself.
"""

from __future__ import annotations

from pathlib import Path

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.errors import CheckpointError
from lenscat.registry.versions import ModelVersion

__all__ = ["verify_checkpoint", "verify_file"]

_MOUNT_HINT = (
    "workers need the same LENSCAT_HOME/models, e.g. a shared volume; if it is mounted elsewhere: "
    "`lenscat db relocate OLD_DIR NEW_DIR`"
)


def verify_file(path: str | Path, sha256: str | None, *, what: str) -> Path:
    """``path``, after checking that it exists and that its sha256 is ``sha256``.

    Parameters
    ----------
    path : str or Path
        The stored checkpoint file.
    sha256 : str or None
        The digest recorded at registration.
    what : str
        The version, for messages (``'classifier cnn@2'``).

    Raises
    ------
    CheckpointError
        The file is missing, no digest was recorded, or the file was changed.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint of {what} is missing ({_MOUNT_HINT})")
    if not sha256:
        raise CheckpointError(f"{p}: {what} has no recorded checkpoint sha256; the file cannot be verified")
    sha = file_sha256(p)
    if sha != sha256:
        raise CheckpointError(
            f"{p}: checkpoint sha256 {sha[:12]}... does not match {what} ({sha256[:12]}...); the file was changed"
        )
    return p


def verify_checkpoint(model: ModelVersion) -> Path:
    """The checkpoint file of a version, checked to exist and to match its ``checkpoint_sha256``.

    Raises
    ------
    CheckpointError
        The version has no checkpoint file, or it is missing or changed.
    """
    what = f"{model.kind} {model.label}"
    if not model.checkpoint_path:
        raise CheckpointError(f"{what} has no checkpoint file")
    return verify_file(model.checkpoint_path, model.checkpoint_sha256, what=what)
