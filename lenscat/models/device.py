"""The one torch device resolver of lenscat (pure PyTorch: it reads no settings).

``resolve_device(None)`` picks CUDA when available, else the CPU; a named device (``'cpu'``,
``'cuda'``, ``'cuda:1'``) is checked to exist. The default a user configures (``LENSCAT_DEVICE``)
is read by the caller: :func:`lenscat.registry.device.select_device` is the settings-aware wrapper
that encoder, classifier and spectral training, inference and the Celery workers use.
"""

from __future__ import annotations

import torch

from lenscat.errors import LenscatError

__all__ = ["best_device", "resolve_device"]


def best_device() -> str:
    """``'cuda'`` when a CUDA device is available, else ``'cpu'``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on.

    Parameters
    ----------
    requested : str or torch.device, optional
        ``'cpu'``, ``'cuda'``, ``'cuda:N'`` (or any torch device name); None or ``''``: CUDA when
        available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    LenscatError
        The name is not a torch device, or CUDA is asked for and none is available.
    """
    if requested is None or (isinstance(requested, str) and not requested.strip()):
        return torch.device(best_device())
    try:
        dev = torch.device(requested.strip() if isinstance(requested, str) else requested)
    except (RuntimeError, TypeError) as exc:
        raise LenscatError(f"unknown torch device {str(requested)!r} ({str(exc).splitlines()[0]})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LenscatError(f"device {str(requested)!r} requested but no CUDA device is available")
    return dev
