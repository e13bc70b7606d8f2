"""Loading a model version: one table from (kind, architecture) to loader.

Every family registers its loaders here, from its own module, with one line per architecture:

* encoders -- :mod:`lenscat.embeddings.embed` (any architecture: a lenscat encoder checkpoint, or a
  classifier's penultimate layer);
* classifiers -- :mod:`lenscat.classifiers.loaders` (``linear``, ``radial``, and any image
  architecture); derived classifiers (ensembles, anomaly scores) are computed from stored rows and
  are not loaded;
* spectral detectors -- one module per family (:data:`PLUGIN_MODULES` ``['detector']``), whose
  :class:`~lenscat.spectra.detectors.Detector` subclass is its loader
  (:func:`lenscat.spectra.detectors.register_detector`).

:func:`load_model` verifies the version's checkpoint (:func:`lenscat.registry.checkpoints.verify_checkpoint`)
before its loader runs, applies the configured device (``LENSCAT_DEVICE``), and keeps the few most
recently loaded versions per process (workers run many chunks with the same version).

Where to add a family or an architecture: a loader ``loader(model, device) -> object`` registered
with ``register_loader(kind, architecture, loader)`` (or as a decorator) in the family's module,
and that module's name in :data:`PLUGIN_MODULES` (imported on first use of the table). A name ending
in ``*`` stands for every module of that package whose name starts with the prefix, so a new spectral
detector family is only its module ``lenscat/spectra/detector_<family>.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from lenscat.errors import LenscatError
from lenscat.registry.checkpoints import verify_checkpoint
from lenscat.registry.device import configured_device
from lenscat.registry.versions import KINDS, ModelVersion

__all__ = ["ANY_ARCHITECTURE", "PLUGIN_MODULES", "Loader", "load_model", "loader_for", "register_loader"]

#: ``loader(model, device)``: the runnable object of a verified version (device: requested or None)
Loader = Callable[[ModelVersion, str | None], Any]
L = TypeVar("L", bound=Callable[..., Any])

#: architecture key of a family's fallback loader (encoders and image classifiers of any architecture)
ANY_ARCHITECTURE = "*"
#: the modules that register loaders, per kind (imported on first use of the table)
PLUGIN_MODULES: dict[str, tuple[str, ...]] = {
    "encoder": ("lenscat.embeddings.embed",),
    "classifier": ("lenscat.classifiers.loaders",),
    # every module lenscat/spectra/detector_<family>.py: a new family is one module, no line here
    "detector": ("lenscat.spectra.detector_*",),
    "lensmodel": ("lenscat.modelling.modeller",),
}
#: loaded versions kept per process
CACHE_SIZE = 8

_LOADERS: dict[tuple[str, str], Callable[..., Any]] = {}
_IMPORTED: set[str] = set()
_CACHE: OrderedDict[tuple[str, int, str | None, str | None, str | None], Any] = OrderedDict()


def register_loader(kind: str, architecture: str, loader: L | None = None) -> Any:
    """Make ``loader`` the loader of ``kind`` versions of ``architecture``; usable as a decorator.

    Parameters
    ----------
    kind : {'encoder', 'classifier', 'detector'}
    architecture : str
        The versions' ``architecture``; :data:`ANY_ARCHITECTURE` for the family's fallback.
    loader : callable, optional
        ``loader(model, device)``; omitted: returns a decorator.
    """
    if kind not in KINDS:
        raise LenscatError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not architecture:
        raise LenscatError(f"a {kind} loader needs an architecture name")

    def add(fn: L) -> L:
        _LOADERS[(kind, architecture)] = fn
        return fn

    return add if loader is None else add(loader)


def _import_plugins(kind: str) -> None:
    if kind in _IMPORTED:
        return
    for mod in _expand(PLUGIN_MODULES.get(kind, ())):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family module not installed in this build
            if exc.name != mod:
                raise
    _IMPORTED.add(kind)


def _expand(names: tuple[str, ...]) -> list[str]:
    """Module names, with ``package.prefix*`` expanded to the package's modules starting with ``prefix``."""
    out: list[str] = []
    for name in names:
        if not name.endswith("*"):
            out.append(name)
            continue
        package, _, prefix = name[:-1].rpartition(".")
        path = importlib.import_module(package).__path__
        out += sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if m.name.startswith(prefix))
    return out


def loader_for(kind: str, architecture: str, *, fallback: bool = True) -> Callable[..., Any]:
    """The loader of ``kind`` versions of ``architecture`` (the family's fallback when ``fallback``).

    Raises
    ------
    LenscatError
        No loader is registered for it.
    """
    _import_plugins(kind)
    fn = _LOADERS.get((kind, architecture))
    if fn is None and fallback:
        fn = _LOADERS.get((kind, ANY_ARCHITECTURE))
    if fn is None:
        known = sorted(a for k, a in _LOADERS if k == kind and a != ANY_ARCHITECTURE)
        raise LenscatError(f"unknown {kind} architecture {architecture!r}; known: {', '.join(known)}")
    return fn


def load_model(model: ModelVersion, device: str | None = None) -> Any:
    """The runnable object of a version (encoder network, scoring function, detector), loaded once.

    Its checkpoint, when it has one, is verified first (sha256); versions without a file (a
    configured matched filter) have nothing to verify: their version is their configuration.

    Parameters
    ----------
    model : ModelVersion
    device : str, optional
        Torch device; default ``LENSCAT_DEVICE``, else CUDA when available.

    Raises
    ------
    CheckpointError
        The checkpoint is missing or was changed.
    LenscatError
        No loader for the version's architecture.
    """
    dev = configured_device(device)
    key = (model.kind, model.model_id, model.checkpoint_path, model.checkpoint_sha256, dev)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loader = loader_for(model.kind, model.architecture)
    if model.checkpoint_path:
        verify_checkpoint(model)
    obj = loader(model, dev)
    _CACHE[key] = obj
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return obj


def clear_cache() -> None:
    """Forget the loaded versions of this process."""
    _CACHE.clear()
