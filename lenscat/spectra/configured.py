"""Versions of configured detectors: families whose version is its configuration, not a checkpoint.

The matched filter and the [OII] doublet filter have no weights. A version's hyper-parameters are
the configuration dataclass, the spectra it scans and the continuum choices at registration; its
``checkpoint_sha256`` is the SHA-256 of those (with the architecture), so registering the same
configuration twice finds the same version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion, register_model


def register_configured_detector(
    name: str,
    architecture: str,
    config: Any,
    *,
    sample: str,
    continuum: str | dict[str, str] | None,
    input_spec: dict[str, Any],
    description: str,
    session: Session,
) -> tuple[ModelVersion, bool]:
    """Register a configured detector version (idempotent on its configuration hash).

    Parameters
    ----------
    name
        Detector name.
    architecture
        The family's architecture key (e.g. ``"matched-filter"``).
    config
        The family's configuration dataclass instance.
    sample
        Spectra it scans (:data:`lenscat.spectra.scan.SAMPLES`).
    continuum
        ``'pipeline'``, ``'fit'`` or ``{survey: choice}``; default: the measured per-survey choices
        (:func:`lenscat.spectra.scan.continuum_snapshot`).
    input_spec
        The pixel grid it reads.
    description
        One line for ``lenscat spectra detectors``.
    session
        Database session (the caller commits).

    Returns
    -------
    tuple
        ``(version, created)``.
    """
    from lenscat.spectra.scan import continuum_snapshot, sample_sql

    sample_sql(sample)
    cont = continuum_snapshot(continuum, session=session)
    hp = {**json.loads(json.dumps(asdict(config), default=list)), "sample": sample, "continuum": cont}
    sha = hashlib.sha256(json.dumps({"architecture": architecture, **hp}, sort_keys=True).encode()).hexdigest()
    return register_model(
        "detector",
        name,
        architecture=architecture,
        output_dim=None,
        checkpoint_path=None,
        checkpoint_sha256=sha,
        origin="configured",
        hparams=hp,
        input_spec=input_spec,
        description=description,
        session=session,
    )
