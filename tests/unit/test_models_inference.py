"""Batched inference (lenscat.models.inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models import (
    ArraySource,
    Preprocessing,
    best_device,
    build_encoder,
    encode,
    iter_encode,
    oriented,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("resnet-small", widths=(8, 16, 32, 32), output_dim=16)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.01, (20, 3, 152, 152)).astype(np.float32)


def test_encode_normalised_deterministic_batch_invariant(encoder, images):
    encoder.train()
    a = encode(encoder, images, batch_size=256)
    assert a.shape == (20, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert encoder.training  # mode restored
    np.testing.assert_array_equal(a, encode(encoder, images, batch_size=256))
    for bs in (1, 3, 7):
        np.testing.assert_allclose(encode(encoder, images, batch_size=bs), a, atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_encode_inputs_and_preprocessing(encoder, images):
    ref = encode(encoder, images)
    np.testing.assert_array_equal(encode(encoder, torch.from_numpy(images)), ref)
    ready = encoder.preprocessing.apply_numpy(images)
    np.testing.assert_allclose(encode(encoder, ready, preprocess=False), ref, atol=1e-6)
    other = encode(encoder, images, preprocess=Preprocessing(stretch="linear"))
    assert not np.allclose(other, ref)
    assert encode(encoder, images[:0]).shape == (0, 16)
    with pytest.raises(LenscatError, match="4 band"):
        encode(encoder, np.zeros((2, 4, 152, 152), np.float32))
    with pytest.raises(LenscatError, match=r"\(N, C, H, W\)"):
        encode(encoder, np.zeros((3, 152, 152), np.float32))


def test_views_average_the_orientations_and_make_the_embedding_invariant(encoder, images):
    plain = encode(encoder, images)
    assert encode(encoder, images, preprocess=Preprocessing(views=1)).tolist() == plain.tolist()
    ready = encoder.preprocessing.apply_numpy(images)
    turned = [
        encode(encoder, np.ascontiguousarray(oriented(torch.from_numpy(ready), v).numpy()), preprocess=False)
        for v in range(8)
    ]
    mean = np.sum(turned, axis=0)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    d8 = encode(encoder, images, preprocess=Preprocessing(views=8))
    np.testing.assert_allclose(d8, mean, atol=1e-5)  # the renormalised mean of the 8 unit vectors
    np.testing.assert_allclose(np.linalg.norm(d8, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(d8, plain, atol=1e-3)
    # a turned or mirrored cutout gets the same vector (an untrained encoder is far from invariant)
    for image in (np.rot90(images, 1, axes=(2, 3)), images[..., ::-1], np.rot90(images, 3, axes=(2, 3))):
        image = np.ascontiguousarray(image)
        assert not np.allclose(encode(encoder, image), plain, atol=1e-3)
        np.testing.assert_allclose(encode(encoder, image, preprocess=Preprocessing(views=8)), d8, atol=1e-5)
    rot4 = encode(encoder, images, preprocess=Preprocessing(views=4))
    np.testing.assert_allclose(
        encode(encoder, np.ascontiguousarray(np.rot90(images, 1, axes=(2, 3))), preprocess=Preprocessing(views=4)),
        rot4,
        atol=1e-5,
    )
    streamed = np.concatenate(
        [v for _, v in iter_encode(encoder, ArraySource(images), np.arange(20), 7, preprocess=Preprocessing(views=8))]
    )
    np.testing.assert_allclose(streamed, d8, atol=1e-5)


def test_annuli_readout_stores_the_pooled_vector_beside_the_stage2_rings(encoder, images, tmp_path):
    from lenscat.models.checkpoint import load_encoder, save_encoder
    from lenscat.models.resnet import ResNetEncoder, annulus_stats

    torch.manual_seed(0)
    ring = build_encoder("resnet-small", widths=(8, 16, 32, 32), output_dim=16, readout="gap+annuli2")
    assert isinstance(ring, ResNetEncoder)
    ring.load_state_dict(encoder.state_dict())  # the readout adds no weights
    ring.eval()
    assert (ring.output_dim, ring.feature_dim) == (16, 16 + 6 * 16)
    x = torch.from_numpy(encoder.preprocessing.apply_numpy(images))
    with torch.no_grad():
        feats = ring.features(x)
        np.testing.assert_allclose(ring(x).numpy(), encoder.eval()(x).numpy(), atol=1e-6)  # training unchanged
        stage2 = ring.layer2(ring.layer1(ring.relu(ring.bn1(ring.conv1(x)))))
    assert stage2.shape[-2:] == (12, 12) and feats.shape == (20, 112)
    np.testing.assert_allclose(np.linalg.norm(feats[:, :16].numpy(), axis=1), 2**-0.5, rtol=1e-5)
    np.testing.assert_allclose(
        feats[:, 16:].numpy() * 2**0.5, torch.nn.functional.normalize(annulus_stats(stage2), dim=1).numpy(), atol=1e-5
    )
    vec = encode(ring, images, preprocess=Preprocessing(views=8))
    assert vec.shape == (20, 112)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        encode(ring, np.ascontiguousarray(images[..., ::-1]), preprocess=Preprocessing(views=8)), vec, atol=1e-5
    )
    ring.preprocessing = Preprocessing(views=8)
    save_encoder(ring, tmp_path / "ring.pt", arch=ring.arch, hparams=ring.hparams)
    again, meta = load_encoder(tmp_path / "ring.pt")
    assert again.feature_dim == 112 and meta["hparams"]["readout"] == "gap+annuli2"
    np.testing.assert_allclose(encode(again, images), vec, atol=1e-5)
    # annuli by hand: a 6x6 map splits into 4 pixels (r < 1), 12 (1 <= r < 2.2) and 20 (r >= 2.2)
    m = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    stats = annulus_stats(m)[0].tolist()
    assert stats[:2] == [17.5, 21.0] and stats[5] == 35.0
    with pytest.raises(LenscatError, match="readout"):
        build_encoder("resnet-small", readout="max")


def test_iter_encode_streams_in_order(encoder, images):
    ref = encode(encoder, images)
    order = np.array([5, 3, 19, 0, 7, 8, 2])
    got = list(iter_encode(encoder, ArraySource(images), order, batch_size=3))
    assert [len(i) for i, _ in got] == [3, 3, 1]
    idx = np.concatenate([i for i, _ in got])
    vec = np.concatenate([v for _, v in got])
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(vec, ref[order], atol=1e-5)


def test_best_device():
    assert best_device() == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_cuda_matches_cpu(encoder, images):
    cpu = encode(encoder, images)
    gpu = encode(encoder, images, device="cuda")
    assert np.mean(np.sum(cpu * gpu, axis=1)) > 0.999  # bfloat16 autocast
    d8 = Preprocessing(views=8)
    gpu8 = encode(encoder, images, device="cuda", preprocess=d8)
    assert np.mean(np.sum(encode(encoder, images, preprocess=d8) * gpu8, axis=1)) > 0.999
    encoder.to("cpu")
