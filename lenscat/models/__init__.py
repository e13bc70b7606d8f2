"""Pure-PyTorch models for lens finding: encoders, augmentations, MoCo-v2, checkpoints, inference.

Nothing here knows about the database: images come from any object with ``__len__`` and
``get(indices)`` (:class:`ImageSource`), and results are NumPy arrays and files.

==============  =========================================================================
module          owns
==============  =========================================================================
``resnet``      :func:`build_encoder` ('resnet50', 'resnet18', 'resnet-small'), :class:`Encoder`
``preprocess``  :class:`Preprocessing`: NaN -> 0, 96-px centre crop, per-band arcsinh stretch,
                the orientations an embedding averages (``views``); :func:`oriented`
``augment``     :class:`Augmenter`, :class:`AugmentConfig`: Stein et al. 2022 augmentations
``moco``        :func:`train_moco` -> :class:`TrainResult`
``checkpoint``  :func:`save_encoder`, :func:`load_encoder`; ``checkpoint_import``:
                :func:`import_torchvision_resnet50` (torchvision / MoCo ResNet weights)
``inference``   :func:`encode`, :func:`iter_encode`, :func:`best_device`
``features``    :class:`~lenscat.models.features.ClassifierFeatures`: a classifier's penultimate layer
                as an encoder; its checkpoints (``save_features`` / ``load_features``)
``data``        :class:`ImageSource` protocol, :class:`ArraySource`
``supervised``  :class:`ImageClassifier`, :func:`train_image_classifier`, the few-label CNN recipe
``radial``      :class:`~lenscat.models.radial.RadialProfile`, :func:`train_radial`: the radial
                colour-profile baseline (12 annuli x 3 bands, logistic regression)
``specnet``     :class:`~lenscat.models.specnet.SpecResNet`, the 1-D Lyα line finder; its input
                (``specnet_inputs``), training (``specnet_train``) and inference (``specnet_inference``)
``metrics``     :func:`~lenscat.models.metrics.roc_auc`, ``average_precision``, ``completeness_at_fpr``
==============  =========================================================================
"""

from lenscat.models.augment import AugmentConfig, Augmenter
from lenscat.models.checkpoint import load_encoder, save_encoder
from lenscat.models.checkpoint_import import import_torchvision_resnet, import_torchvision_resnet50
from lenscat.models.data import ArraySource, ImageSource
from lenscat.models.inference import best_device, encode, iter_encode
from lenscat.models.moco import MOCO_DEFAULTS, StepInfo, TrainResult
from lenscat.models.moco_train import train_moco
from lenscat.models.preprocess import DECALS_SKY_NOISE, VIEWS, Preprocessing, oriented, preprocess
from lenscat.models.resnet import ARCHITECTURES, Encoder, build_encoder

__all__ = [
    "ARCHITECTURES",
    "DECALS_SKY_NOISE",
    "MOCO_DEFAULTS",
    "ArraySource",
    "AugmentConfig",
    "Augmenter",
    "Encoder",
    "ImageSource",
    "Preprocessing",
    "StepInfo",
    "TrainResult",
    "VIEWS",
    "best_device",
    "build_encoder",
    "encode",
    "import_torchvision_resnet",
    "import_torchvision_resnet50",
    "iter_encode",
    "load_encoder",
    "oriented",
    "preprocess",
    "save_encoder",
    "train_moco",
]
