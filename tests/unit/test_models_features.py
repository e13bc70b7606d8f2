"""A classifier's penultimate layer as an encoder (lenscat.models.features), without the database."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lenscat.errors import LenscatError
from lenscat.models.checkpoint import load_encoder, save_encoder
from lenscat.models.features import ClassifierFeatures, load_features, save_features
from lenscat.models.inference import encode
from lenscat.models.preprocess import Preprocessing
from lenscat.models.resnet import build_encoder
from lenscat.models.supervised import ImageClassifier, save_classifier


def _classifier(tmp_path, views=1):
    torch.manual_seed(0)
    backbone = build_encoder("resnet-small", widths=[8, 8, 16, 16], output_dim=12, readout="gap+annuli2")
    net = ImageClassifier(backbone, preprocessing=Preprocessing(crop=32, views=views))
    path = tmp_path / "clf.pt"
    save_classifier(net, path, hparams={"arch": "cnn"})
    return net, path


def test_features_are_the_backbone_output_and_the_file_is_reproducible(tmp_path):
    net, path = _classifier(tmp_path)
    sha, dim = save_features(path, tmp_path / "a.pt")
    sha2, _ = save_features(path, tmp_path / "b.pt")
    assert sha == sha2 and dim == 12  # the head's input, not the backbone's 12+96-d annuli readout
    enc, meta = load_features(tmp_path / "a.pt")
    assert isinstance(enc, ClassifierFeatures) and meta["sha256"] == sha and meta["backbone_arch"] == "resnet-small"
    assert (enc.output_dim, enc.feature_dim, enc.in_chans, enc.preprocessing.crop) == (12, 12, 3, 32)
    images = np.random.default_rng(1).normal(0.01, 0.02, size=(5, 3, 48, 48)).astype(np.float32)
    net.eval()
    with torch.no_grad():
        direct = F.normalize(net.backbone(net.prepare(torch.from_numpy(images))), dim=1).numpy()
    np.testing.assert_allclose(encode(enc, images), direct, atol=1e-5)
    # its own views give the same file; other views another one, averaged over that many orientations
    assert save_features(path, tmp_path / "c.pt", views=1)[0] == sha
    sha8, _ = save_features(path, tmp_path / "d.pt", views=8)
    enc8, _ = load_features(tmp_path / "d.pt")
    assert sha8 != sha and enc8.preprocessing.views == 8 and encode(enc8, images).shape == (5, 12)


def test_not_a_classifier_is_a_clear_error(tmp_path):
    _, path = _classifier(tmp_path)
    save_features(path, tmp_path / "f.pt")
    with pytest.raises(LenscatError, match="penultimate layer"):
        load_encoder(tmp_path / "f.pt")  # the encoder loader says what the file is
    with pytest.raises(LenscatError, match="not a lenscat classifier-features checkpoint"):
        load_features(path)
    enc = build_encoder("resnet-small", widths=[8, 8, 16, 16], output_dim=12)
    save_encoder(enc, tmp_path / "enc.pt", arch="resnet-small", hparams=enc.hparams)
    with pytest.raises(LenscatError, match="not a lenscat image-classifier checkpoint"):
        save_features(tmp_path / "enc.pt", tmp_path / "g.pt")
    with pytest.raises(LenscatError, match="views must be one of"):
        save_features(path, tmp_path / "h.pt", views=3)
