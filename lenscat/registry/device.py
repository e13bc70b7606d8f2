"""The settings-aware device choice: ``LENSCAT_DEVICE`` as the default of every torch computation.

:func:`lenscat.models.device.resolve_device` is the one resolver (pure PyTorch); this thin wrapper
adds the configured default, so encoder, classifier and spectral training, inference and the
Celery workers all honour ``LENSCAT_DEVICE`` the same way: an explicit request wins, then the
setting, then CUDA when available.
"""

from __future__ import annotations

from lenscat.settings import get_settings

__all__ = ["configured_device", "select_device"]


def configured_device(requested: str | None = None) -> str | None:
    """The device asked for: ``requested``, else ``LENSCAT_DEVICE``, else None (CUDA when available).

    Imports no torch: for callers that hand the choice on to :mod:`lenscat.models`.
    """
    return (requested or "").strip() or (get_settings().device or "").strip() or None


def select_device(requested: str | None = None) -> str:
    """The torch device name to compute on (``'cpu'``, ``'cuda'``, ``'cuda:1'``...), checked to exist.

    Raises
    ------
    LenscatError
        The name is not a torch device, or CUDA is asked for and none is available.
    """
    from lenscat.models.device import resolve_device

    return str(resolve_device(configured_device(requested)))
