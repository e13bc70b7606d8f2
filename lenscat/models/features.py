"""A trained image classifier's penultimate layer as an encoder: similarity that knows lenses.

An :class:`~lenscat.models.supervised.ImageClassifier` is a backbone and a linear head; the
backbone's output (the head's input) is the classifier's penultimate layer. Trained on lenses
(and injected lenses), it places a lens near other lenses far more than a self-supervised
embedding does, so "more like this lens" can search it like any other embedding.

:class:`ClassifierFeatures` wraps a loaded classifier as an :class:`~lenscat.models.resnet.Encoder`
(``forward`` = the backbone, ``output_dim`` = ``feature_dim`` = the head's input width, the
classifier's :class:`~lenscat.models.preprocess.Preprocessing`), so the usual inference path
(:func:`lenscat.models.inference.encode`) embeds with it: the L2-normalised backbone output of the
prepared crop, with ``views`` 4 or 8 (as the classifier scores) the renormalised mean of the unit
vectors of that many orientations.

Checkpoint (``torch.save`` of a plain dict, ``weights_only``-loadable, written atomically and
byte-reproducibly): the classifier's own checkpoint dict (see :mod:`lenscat.models.supervised`;
backbone, head and preprocessing, so :func:`~lenscat.models.supervised.load_classifier` reads it)
with one key added::

    {..., 'classifier_features': {'format_version': 1, 'classifier_sha256': str,
                                  'views': int or None}}

``views`` (``None``: the classifier's) overrides the orientations embeddings average over. The same
classifier checkpoint and ``views`` give the same file, hence the same sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.checkpoint import _load, _sha256, write_checkpoint
from lenscat.models.resnet import Encoder

__all__ = [
    "FEATURES_ARCH",
    "FEATURES_KEY",
    "ClassifierFeatures",
    "is_features_checkpoint",
    "load_features",
    "save_features",
]

FEATURES_ARCH = "classifier-features"
"""``architecture`` of an encoder version that holds a classifier's penultimate layer."""

FEATURES_KEY = "classifier_features"
"""The key a features checkpoint adds to the classifier's checkpoint dict."""

FEATURES_FORMAT_VERSION = 1


class ClassifierFeatures(Encoder):
    """The backbone of an image classifier as an encoder of its penultimate layer.

    Parameters
    ----------
    classifier : ImageClassifier
        A classifier (e.g. from :func:`~lenscat.models.supervised.load_classifier`); its backbone
        is used as given (not copied), its head is dropped.
    views : int, optional
        Orientations of the crop every embedding averages (1, 4 or 8); default the classifier's
        own (those it averages its logit over when it scores).

    Attributes
    ----------
    backbone : Encoder
        The classifier's backbone.
    output_dim, feature_dim : int
        The head's input width: the length of the embedding.
    in_chans : int
        Input bands (0 when the backbone does not say).
    preprocessing : Preprocessing
        The classifier's (crop, stretch), with ``views`` replaced when given.
    """

    def __init__(self, classifier: Any, *, views: int | None = None) -> None:
        super().__init__()
        head = getattr(classifier, "head", None)
        backbone = getattr(classifier, "backbone", None)
        if backbone is None or head is None or not hasattr(head, "in_features"):
            raise LenscatError("not an image classifier: it has no backbone and linear head")
        self.backbone = backbone
        self.output_dim = int(head.in_features)
        self.feature_dim = self.output_dim
        self.in_chans = int(getattr(classifier, "in_chans", None) or getattr(backbone, "in_chans", 0) or 0)
        self.arch = FEATURES_ARCH
        self.hparams = {}
        pre = classifier.preprocessing
        if views is not None:
            pre = replace(pre, views=int(views))  # Preprocessing checks it (1, 4 or 8)
        self.preprocessing = pre

    def forward(self, x: Tensor) -> Tensor:
        """The penultimate layer ``(B, output_dim)`` of network input ``x`` (the prepared crop)."""
        out: Tensor = self.backbone(x)
        return out


def is_features_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint dict is a classifier-features checkpoint."""
    return isinstance(obj, Mapping) and isinstance(obj.get(FEATURES_KEY), Mapping)


def save_features(classifier_path: str | Path, path: str | Path, *, views: int | None = None) -> tuple[str, int]:
    """Write the features checkpoint of a classifier checkpoint.

    Parameters
    ----------
    classifier_path : str or Path
        A checkpoint written by :func:`~lenscat.models.supervised.save_classifier`.
    path : str or Path
        Destination; an existing file is replaced atomically.
    views : int, optional
        Orientations every embedding averages (1, 4 or 8); default the classifier's.

    Returns
    -------
    (str, int)
        SHA-256 of the written file, and the embedding dimension (the head's input width).

    Raises
    ------
    LenscatError
        The file is not an image-classifier checkpoint (e.g. a linear probe's), or a bad ``views``.
    """
    from lenscat.models.supervised import load_classifier

    src = Path(classifier_path)
    net, _ = load_classifier(src)  # checks it is an image classifier whose weights fit
    if views is not None and int(views) == int(net.preprocessing.views):
        views = None  # the classifier's own: the same file as without it
    dim = ClassifierFeatures(net, views=views).output_dim
    obj = _load(src)
    info = {
        "format_version": FEATURES_FORMAT_VERSION,
        "classifier_sha256": _sha256(src),
        "views": None if views is None else int(views),
    }
    return write_checkpoint({**dict(obj), FEATURES_KEY: info}, path), dim


def load_features(path: str | Path) -> tuple[ClassifierFeatures, dict[str, Any]]:
    """Load a features checkpoint written by :func:`save_features` (``weights_only=True``).

    Returns
    -------
    encoder : ClassifierFeatures
        On the CPU, in eval mode.
    meta : dict
        ``arch`` (``'classifier-features'``), ``backbone_arch``, ``output_dim``, ``preprocessing``
        (dict), ``classifier_sha256``, ``path`` and ``sha256``.

    Raises
    ------
    LenscatError
        Missing/unreadable file, not a features checkpoint, or weights that do not fit.
    """
    from lenscat.models.supervised import load_classifier

    path = Path(path)
    obj = _load(path)
    if not is_features_checkpoint(obj):
        raise InputFileError(f"{path}: not a lenscat classifier-features checkpoint")
    info = dict(obj[FEATURES_KEY])
    version = info.get("format_version")
    if not isinstance(version, int) or version > FEATURES_FORMAT_VERSION:
        raise InputFileError(
            f"{path}: classifier-features format version {version!r} is not supported "
            f"(this lenscat reads up to {FEATURES_FORMAT_VERSION})"
        )
    net, cmeta = load_classifier(path)
    views = info.get("views")
    encoder = ClassifierFeatures(net, views=None if views is None else int(views))
    encoder.eval()
    meta = {
        "arch": FEATURES_ARCH,
        "backbone_arch": cmeta.get("arch"),
        "output_dim": encoder.output_dim,
        "preprocessing": encoder.preprocessing.to_dict(),
        "classifier_sha256": info.get("classifier_sha256"),
        "path": str(path),
        "sha256": _sha256(path),
    }
    return encoder, meta
