"""Spectra functions the shells call: a detector version by name (the default detectors register on use)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from lenscat.errors import NotFoundError
from lenscat.registry.versions import ModelVersion, get_model

#: the default matched-filter (Lyα) detector, registered with default settings on first use
DEFAULT_MF = "matched-filter"
#: the default [OII] doublet detector, registered with default settings on first use
DEFAULT_OII = "oii"


def get_detector(name: str, *, session: Session) -> ModelVersion:
    """A detector version by NAME or NAME@VERSION.

    The default detectors (:data:`DEFAULT_MF`, :data:`DEFAULT_OII`) are registered with their
    default settings the first time they are asked for.

    Parameters
    ----------
    name
        Detector name, optionally with ``@VERSION``.
    session
        The session (the caller commits a registration).

    Returns
    -------
    ModelVersion
        The detector version.

    Raises
    ------
    lenscat.errors.NotFoundError
        No such detector (and it is not a default one).
    """
    # imported on use: the command line imports this module at start-up (for the default names)
    from lenscat.spectra.detector_oii import register_oii_filter
    from lenscat.spectra.scan import register_matched_filter

    try:
        return get_model("detector", name, session=session)
    except NotFoundError:
        if name == DEFAULT_MF:
            return register_matched_filter(DEFAULT_MF, session=session)[0]
        if name == DEFAULT_OII:
            return register_oii_filter(DEFAULT_OII, session=session)[0]
        raise
