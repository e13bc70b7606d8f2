"""MoCo-v2 training (lenscat.models.moco) on tiny synthetic images: blobs versus rings."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models import ArraySource, build_encoder, encode, load_encoder, train_moco

TINY = {
    "widths": (16, 32, 64, 64),
    "output_dim": 32,
    "proj_dim": 32,
    "queue_size": 32,
    "moco_momentum": 0.99,
    "augment": {"jitter": 3},
    "preprocess": {"crop": 48},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs_and_rings(n: int = 64, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Even rows: round Gaussian blobs; odd rows: thin rings (r = 8-11 px). Same colour, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    labels = np.arange(n) % 2
    colour = np.array([0.6, 1.0, 1.4])[:, None, None]
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        dx, dy = rng.uniform(-2, 2, 2)
        r = np.hypot(xx - dx, yy - dy)
        if labels[i] == 0:
            profile = np.exp(-0.5 * (r / rng.uniform(2.5, 4.0)) ** 2)
        else:
            profile = np.exp(-0.5 * ((r - rng.uniform(8, 11)) / 1.5) ** 2)
        images[i] = rng.uniform(0.05, 0.2) * colour * profile
        images[i] += rng.normal(0, 0.003, (3, size, size))
    return images, labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs_and_rings()


def class_similarity(vectors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    sim = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    cross = labels[:, None] != labels[None, :]
    return float(sim[same].mean()), float(sim[cross].mean())


def test_moco_learns_to_separate_blobs_from_rings(data, tmp_path: Path):
    images, labels = data
    result = train_moco(
        ArraySource(images), arch="resnet-small", hparams=TINY, epochs=20, batch_size=32, lr=0.1, seed=0, progress=False
    )
    assert result.steps == 40 and result.stop_reason == "completed"
    loss = np.array(result.history)
    assert loss.shape == (40,) and np.all(np.isfinite(loss))
    # step 0 scores against the random initial queue; from step 1 the queue holds real keys
    assert loss[1:9].mean() - loss[-8:].mean() > 0.15
    same, cross = class_similarity(encode(result.encoder, images), labels)
    assert same - cross > 0.3
    torch.manual_seed(0)
    untrained = build_encoder("resnet-small", **result.encoder_hparams)
    untrained.preprocessing = result.encoder.preprocessing
    same0, cross0 = class_similarity(encode(untrained, images), labels)
    assert same - cross > 2 * (same0 - cross0)

    enc = result.encoder
    assert not enc.training and enc.output_dim == 32 and enc.preprocessing.crop == 48
    assert not any(k.startswith(("fc", "head")) for k in enc.state_dict())
    hp = result.hparams
    assert hp["queue_size_effective"] == 32 and hp["temperature"] == 0.2
    assert hp["augment"]["jitter"] == 3 and hp["preprocess"]["crop"] == 48
    assert result.images_per_s > 0 and result.elapsed_s > 0

    digest = result.save(tmp_path / "tiny.pt")
    loaded, meta = load_encoder(tmp_path / "tiny.pt")
    assert meta["sha256"] == digest and meta["extra"]["steps"] == 40
    np.testing.assert_array_equal(encode(loaded, images), encode(enc, images))


def test_moco_is_deterministic_on_cpu(data):
    src = ArraySource(data[0][:32], ebv=np.linspace(0, 0.2, 32))

    def run(seed: int):
        return train_moco(
            src,
            arch="resnet-small",
            hparams=TINY,
            epochs=5,
            batch_size=16,
            lr=0.05,
            seed=seed,
            progress=False,
            max_steps=3,
        )

    a, b, c = run(1), run(1), run(2)
    assert a.stop_reason == "max_steps" and a.steps == 3
    assert a.history == b.history and a.history != c.history
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(v, b.encoder.state_dict()[k]), k


def test_callback_and_ctrl_c_stop_cleanly(data):
    src = ArraySource(data[0][:32])
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN in a background job
    seen = []

    def stop_at_two(info):
        seen.append((info.step, info.epoch, info.epoch_end))
        return info.step >= 2

    r = train_moco(
        src,
        arch="resnet-small",
        hparams={**TINY, "log_every": 1},
        epochs=10,
        batch_size=16,
        lr=0.05,
        progress=False,
        callback=stop_at_two,
    )
    assert r.stop_reason == "callback" and r.steps == 2 and len(r.history) == 2
    assert seen == [(1, 0, False), (2, 0, True)]

    def ctrl_c(info):
        os.kill(os.getpid(), signal.SIGINT)  # handled: the step finishes, training returns

    r = train_moco(
        src,
        arch="resnet-small",
        hparams={**TINY, "log_every": 1},
        epochs=10,
        batch_size=16,
        lr=0.05,
        progress=False,
        callback=ctrl_c,
    )
    assert r.stop_reason == "interrupted" and r.steps == 1
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


@pytest.mark.parametrize("stop_at", [4, 3])  # mid-epoch, and exactly at an epoch end (3 steps per epoch)
def test_a_stopped_run_resumes_bit_identically(data, tmp_path: Path, stop_at: int):
    """State saved on an early stop; the same call continues and ends where an uninterrupted run does."""
    src = ArraySource(data[0][:48], ebv=np.linspace(0, 0.2, 48))
    kw: dict[str, Any] = dict(
        arch="resnet-small", hparams={**TINY, "log_every": 1}, epochs=3, batch_size=16, lr=0.05, seed=3, progress=False
    )
    ref = train_moco(src, **kw)
    first = train_moco(src, **kw, state_dir=tmp_path, callback=lambda info: info.step >= stop_at)
    assert first.state_path is not None
    assert first.stop_reason == "callback" and first.steps == stop_at and first.state_path.exists()
    resumed = train_moco(src, **kw, state_dir=tmp_path)
    assert resumed.resumed_from_step == stop_at and resumed.steps == 9 and resumed.stop_reason == "completed"
    assert resumed.history == ref.history and resumed.top1 == ref.top1
    for k, v in ref.encoder.state_dict().items():
        assert torch.equal(v, resumed.encoder.state_dict()[k]), k
    # another run (other seed) gets its own state file; a damaged file is a clear error
    other = train_moco(src, **{**kw, "seed": 4}, state_dir=tmp_path, max_steps=1)
    assert other.state_path != first.state_path and other.resumed_from_step == 0
    first.state_path.write_bytes(b"truncated")
    with pytest.raises(LenscatError, match="cannot read the saved training state"):
        train_moco(src, **kw, state_dir=tmp_path)


def test_periodic_state_saves(data, tmp_path: Path):
    src = ArraySource(data[0][:32])
    seen = []

    def look(info):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    r = train_moco(
        src,
        arch="resnet-small",
        hparams={**TINY, "log_every": 1},
        epochs=3,
        batch_size=16,
        lr=0.05,
        progress=False,
        state_dir=tmp_path,
        state_every_s=0.0,
        callback=look,
    )
    assert r.stop_reason == "completed" and r.state_path is not None
    assert seen[0] == [] and seen[1] == [r.state_path.name]  # saved after step 1, never half-written
    assert not list(tmp_path.glob("*.part"))


def test_training_errors(data):
    src = ArraySource(data[0][:8])
    with pytest.raises(LenscatError, match="at least batch_size=16 images"):
        train_moco(src, hparams=TINY, batch_size=16, progress=False)
    with pytest.raises(LenscatError, match="does not take hyper-parameter"):
        train_moco(src, hparams={**TINY, "colour": 1}, batch_size=4, progress=False)
    with pytest.raises(LenscatError, match="unknown augmentation option"):
        train_moco(src, hparams={**TINY, "augment": {"hue": 1}}, batch_size=4, progress=False)
    with pytest.raises(LenscatError, match="diverged"):
        train_moco(src, hparams={**TINY, "log_every": 1}, batch_size=4, lr=1e30, progress=False, max_steps=3)


@pytest.mark.gpu
def test_moco_on_cuda(data):
    src = ArraySource(data[0][:32], ebv=np.full(32, 0.05))
    r = train_moco(
        src, arch="resnet-small", hparams=TINY, epochs=2, batch_size=16, lr=0.05, device="cuda", progress=False
    )
    assert r.steps == 4 and np.all(np.isfinite(r.history))
    assert next(r.encoder.parameters()).device.type == "cpu"
    vec = encode(r.encoder, data[0][:8], device="cuda")
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-4)
