"""Encoder checkpoints in lenscat's own format (torchvision / MoCo weights: :mod:`lenscat.models.checkpoint_import`).

lenscat format (``torch.save`` of a plain dict, loadable with ``weights_only=True``)::

    {'format_version': 1, 'arch': str, 'hparams': dict, 'output_dim': int,
     'state_dict': {name: tensor}, 'preprocessing': dict, 'extra': dict}

``build_encoder(arch, **hparams)`` rebuilds the network; ``preprocessing`` is the
:class:`~lenscat.models.preprocess.Preprocessing` the weights expect; ``extra`` is free-form
(training record, provenance). Files are written atomically (temporary file, then rename) and
byte-reproducibly: the same weights and metadata give the same file, hence the same sha256.

Every failure is a :class:`~lenscat.errors.LenscatError` whose one-line message starts with the
file name.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.preprocess import Preprocessing
from lenscat.models.resnet import Encoder, build_encoder

__all__ = [
    "FORMAT_VERSION",
    "cpu_state_dict",
    "load_encoder",
    "save_encoder",
    "write_checkpoint",
]

FORMAT_VERSION = 1

# (block type, blocks per stage) -> name, for "this is not the architecture you asked for" errors
_RESNET_NAMES: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "ResNet-18",
    ("basic", (3, 4, 6, 3)): "ResNet-34",
    ("bottleneck", (3, 4, 6, 3)): "ResNet-50",
    ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
    ("bottleneck", (3, 8, 36, 3)): "ResNet-152",
}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _few(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _plain(value: Any, where: str) -> Any:
    """Metadata as types ``torch.load(weights_only=True)`` accepts (numpy/Path converted)."""
    if value is None or isinstance(value, bool | int | float | str | Tensor):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise LenscatError(f"{where}: cannot store a {type(value).__name__} in a checkpoint")


def _load(path: Path, *, trust: bool = False) -> Any:
    if not path.exists():
        raise InputFileError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise InputFileError(
                f"{path}: holds Python objects that cannot be loaded safely "
                f"(weights_only=True); re-save its state_dict, or pass trust=True only for a "
                f"file from a trusted source"
            ) from None
        raise InputFileError(f"{path}: not a readable PyTorch checkpoint ({_short(exc)})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise InputFileError(f"{path}: not a readable PyTorch checkpoint ({_short(exc)})") from None


def _tensor_items(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _describe(keys: list[str]) -> tuple[str, tuple[int, ...]] | None:
    """(block type, blocks per stage) of a torchvision-style ResNet key set."""
    blocks: dict[int, set[int]] = {}
    for k in keys:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != [1, 2, 3, 4]:
        return None
    kind = "bottleneck" if any(".conv3." in k for k in keys) else "basic"
    return kind, tuple(len(blocks[i]) for i in (1, 2, 3, 4))


def _name(desc: tuple[str, tuple[int, ...]]) -> str:
    return _RESNET_NAMES.get(desc, f"ResNet with {desc[0]} blocks {desc[1]}")


def _check_state_dict(
    sd: Mapping[str, Tensor],
    model: Encoder,
    path: Path,
    *,
    expected_name: str,
) -> None:
    """Raise a one-line LenscatError unless ``sd`` fits ``model`` (keys, channels, shapes)."""
    ref = model.state_dict()
    have, want = set(sd), set(ref)
    optional = {k for k in want if k.endswith("num_batches_tracked")}
    missing = sorted(want - have - optional)
    unexpected = sorted(have - want)
    if missing or unexpected:
        desc = _describe(sorted(have))
        if desc is not None and desc != _describe(sorted(want)):
            raise InputFileError(f"{path}: holds a {_name(desc)}, not the {expected_name} that was asked for")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise InputFileError(f"{path}: does not match {expected_name}: {'; '.join(parts)}")
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] != model.in_chans:
        raise InputFileError(
            f"{path}: the first convolution takes {w.shape[1]} input channel(s), expected {model.in_chans}"
        )
    bad = [k for k in sorted(have) if tuple(sd[k].shape) != tuple(ref[k].shape)]
    if bad:
        k = bad[0]
        raise InputFileError(
            f"{path}: {len(bad)} tensor shape(s) differ from {expected_name}, e.g. {k}: file "
            f"{tuple(sd[k].shape)}, expected {tuple(ref[k].shape)}"
        )
    nonfinite = [k for k in sorted(have) if sd[k].is_floating_point() and not bool(torch.isfinite(sd[k]).all())]
    if nonfinite:
        raise InputFileError(f"{path}: non-finite values in {_few(nonfinite)}")


def _build_empty(arch: str, hparams: Mapping[str, Any]) -> Encoder:
    """The architecture with uninitialised storage (weights are about to be loaded anyway)."""
    with torch.device("meta"):
        enc = build_encoder(arch, **hparams)
    enc.to_empty(device="cpu")
    for name, buf in enc.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()  # optional in checkpoints: keep a defined value when absent
    return enc


def _sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file's bytes (the digest the model registry records for it)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cpu_state_dict(state: Mapping[str, Tensor] | torch.nn.Module) -> dict[str, Tensor]:
    """A state dict as contiguous CPU copies (what every lenscat checkpoint stores)."""
    sd = state.state_dict() if isinstance(state, torch.nn.Module) else state
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def write_checkpoint(obj: Mapping[str, Any], path: str | Path) -> str:
    """``torch.save`` a checkpoint dict atomically and byte-reproducibly; returns the file's sha256.

    Written to a temporary file beside ``path``, then renamed over it; through a file object the
    archive's inner name is fixed ("archive"), so the same weights and metadata give the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save(dict(obj), fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _sha256(path)


def save_encoder(
    encoder: Encoder,
    path: str | Path,
    *,
    arch: str,
    hparams: Mapping[str, Any],
    preprocessing: Preprocessing | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write an encoder checkpoint in lenscat format.

    Parameters
    ----------
    encoder : Encoder
        The network (any device; saved as CPU tensors).
    path : str or Path
        Destination; parent directories are created; an existing file is replaced atomically.
    arch : str
        Architecture name.
    hparams : mapping
        ``build_encoder(arch, **hparams)`` must rebuild ``encoder``'s architecture (checked).
    preprocessing : Preprocessing, optional
        Defaults to ``encoder.preprocessing`` (or the default preprocessing).
    extra : mapping, optional
        Free-form metadata (plain Python / NumPy values, nested dicts and lists).

    Returns
    -------
    str
        SHA-256 hex digest of the written file.

    Raises
    ------
    LenscatError
        ``arch``/``hparams`` do not describe ``encoder``, or unstorable metadata.
    """
    path = Path(path)
    hp = _plain(dict(hparams), f"{path}: hparams")
    own = getattr(encoder, "arch", None)
    if own is not None and own != arch:
        raise LenscatError(f"{path}: the encoder is a {own!r}, not {arch!r}")
    with torch.device("meta"):
        ref = build_encoder(arch, **hp)
    sd = encoder.state_dict()
    rsd = ref.state_dict()
    if set(sd) != set(rsd) or any(tuple(sd[k].shape) != tuple(rsd[k].shape) for k in sd):
        raise LenscatError(f"{path}: the encoder does not match arch {arch!r} with hparams {hp}")
    pre = preprocessing or getattr(encoder, "preprocessing", None) or Preprocessing()
    obj = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "hparams": hp,
        "output_dim": int(ref.output_dim),
        "state_dict": cpu_state_dict(sd),
        "preprocessing": pre.to_dict(),
        "extra": _plain(dict(extra or {}), f"{path}: extra"),
    }
    return write_checkpoint(obj, path)


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Load a lenscat-format encoder checkpoint (safely: ``weights_only=True``).

    Parameters
    ----------
    path : str or Path
        A file written by :func:`save_encoder`.

    Returns
    -------
    encoder : Encoder
        On the CPU, in eval mode, with ``preprocessing`` restored.
    meta : dict
        ``arch``, ``hparams``, ``output_dim``, ``format_version``, ``preprocessing`` (dict),
        ``extra``, ``path`` and ``sha256``.

    Raises
    ------
    LenscatError
        Missing/unreadable file, not a lenscat checkpoint, or weights that do not fit.
    """
    path = Path(path)
    obj = _load(path)
    if not isinstance(obj, Mapping) or "arch" not in obj or "state_dict" not in obj:
        hint = ""
        if isinstance(obj, Mapping) and "classifier_features" in obj:
            hint = " (it holds a classifier's penultimate layer: lenscat.models.features.load_features reads it)"
        elif isinstance(obj, Mapping):
            hint = "; for torchvision or MoCo weights use import_torchvision_resnet50"
        raise InputFileError(f"{path}: not a lenscat encoder checkpoint{hint}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputFileError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this lenscat reads up to {FORMAT_VERSION})"
        )
    arch = str(obj["arch"])
    hparams = dict(obj.get("hparams") or {})
    try:
        encoder = _build_empty(arch, hparams)
    except LenscatError as exc:
        raise InputFileError(f"{path}: {exc}") from None
    sd = _tensor_items(obj["state_dict"])
    _check_state_dict(sd, encoder, path, expected_name=f"{arch} {hparams}")
    encoder.load_state_dict(sd, strict=False)
    try:
        encoder.preprocessing = Preprocessing.from_dict(obj.get("preprocessing"))
    except LenscatError as exc:
        raise InputFileError(f"{path}: {exc}") from None
    encoder.eval()
    meta = {
        "arch": arch,
        "hparams": hparams,
        "output_dim": encoder.output_dim,
        "format_version": version,
        "preprocessing": encoder.preprocessing.to_dict(),
        "extra": dict(obj.get("extra") or {}),
        "path": str(path),
        "sha256": _sha256(path),
    }
    return encoder, meta
