"""Supervised lens classifiers (lenscat.models.supervised) on tiny synthetic rings and blobs."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lenscat.errors import InputFileError, LenscatError
from lenscat.models import ArraySource, Encoder, Preprocessing, build_encoder, save_encoder
from lenscat.models.metrics import roc_auc
from lenscat.models.supervised import ImageClassifier, load_classifier, save_classifier, score_images
from lenscat.models.supervised_data import lens_batches
from lenscat.models.supervised_train import _loss, make_optimizer, train_image_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"widths": [8, 16, 32, 32], "output_dim": 32}
CROP = 32


def rings_and_blobs(
    n: int = 200, size: int = 48, lens_frac: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Red Gaussian blobs (nanomaggies); lenses (label 1) also have a faint blue ring r = 6-9 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    labels = (rng.random(n) < lens_frac).astype(np.int64)
    red = np.array([0.5, 1.0, 1.5])[:, None, None]
    blue = np.array([1.4, 1.0, 0.7])[:, None, None]
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        dx, dy = rng.uniform(-1.5, 1.5, 2)
        r = np.hypot(xx - dx, yy - dy)
        img = rng.uniform(0.05, 0.3) * red * np.exp(-0.5 * (r / rng.uniform(2.0, 3.5)) ** 2)
        if labels[i]:
            ring = np.exp(-0.5 * ((r - rng.uniform(6, 9)) / 1.2) ** 2)
            img = img + rng.uniform(0.02, 0.06) * blue * ring
        images[i] = img + rng.normal(0, 0.003, (3, size, size))
    return images, labels


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by brute force: P(score of a lens > score of a non-lens), ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    x, y = rings_and_blobs(200, seed=0)
    xt, yt = rings_and_blobs(200, seed=1)
    assert 20 < y.sum() < 60 and 20 < yt.sum() < 60
    return {"x": x, "y": y, "xt": xt, "yt": yt}


@pytest.fixture(scope="module")
def trained(data):
    """The supervised CNN baseline: 150 steps, 5 % lenses per batch, Stein augmentations."""
    return train_image_classifier(
        data["x"],
        data["y"],
        arch="resnet-small",
        encoder_hparams=TINY,
        crop=CROP,
        epochs=25,
        batch_size=32,
        lr=3e-3,
        lens_fraction=0.05,
        device="cpu",
        seed=0,
        val_images=data["xt"][:64],
        val_labels=data["yt"][:64],
    )


def test_baseline_separates_rings_from_blobs(trained, data):
    model, m = trained
    assert isinstance(model, ImageClassifier) and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.crop == CROP and model.in_chans == 3 and model.backbone.output_dim == 32
    assert m["mode"] == "supervised" and m["stop_reason"] == "completed"
    assert m["steps"] == m["steps_planned"] == 25 * (200 // 32) and m["epochs_completed"] == 25
    wall = m["seconds"]  # recorded, whatever its value (speed belongs in bench/)
    assert m["device"] == "cpu" and wall > 0 and not m["interrupted"]
    assert m["lr_head"] == m["lr_backbone"] == 3e-3
    assert 0.035 < m["lens_fraction_seen"] < 0.065
    loss = np.array(m["loss_history"])
    assert loss.shape == (150,) and np.all(np.isfinite(loss))
    assert loss[-30:].mean() < 0.5 * loss[:10].mean() and m["final_loss"] == pytest.approx(loss[-10:].mean())
    assert len(m["val_loss"]) == len(m["val_auc"]) == len(m["val_steps"]) == 25
    assert m["val_steps"][-1] == 150 and m["val_auc"][-1] > 0.9
    assert m["hparams"]["backbone_hparams"]["widths"] == TINY["widths"]

    scores = score_images(model, data["xt"], batch_size=64, device="cpu")
    assert scores.shape == (200,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    held_out = auc(data["yt"], scores)
    assert held_out > 0.9
    assert roc_auc(data["yt"], scores) == pytest.approx(held_out)
    assert not model.training  # eval mode kept
    # an image source gives the same scores as the array; batching does not matter
    np.testing.assert_allclose(
        score_images(model, ArraySource(data["xt"]), batch_size=7, device="cpu"), scores, rtol=1e-5, atol=1e-6
    )


def test_lens_batches_oversample_lenses():
    labels = np.zeros(1000, np.int64)
    pos = np.arange(0, 1000, 100)  # 10 lenses (1 %)
    labels[pos] = 1
    batches = list(itertools.islice(lens_batches(labels, 64, lens_fraction=0.05, rng=3), 2000))
    counts = np.array([labels[b].sum() for b in batches])
    assert all(len(b) == 64 for b in batches)
    assert set(counts.tolist()) <= {3, 4}  # floor(3.2) or floor(3.2) + 1
    assert counts.mean() / 64 == pytest.approx(0.05, abs=0.002)
    seen_pos = np.concatenate([b[labels[b] == 1] for b in batches])
    assert set(seen_pos.tolist()) == set(pos.tolist())  # with replacement, all of them
    # negatives: one permutation after another, so the first 990 are all distinct
    negs = np.concatenate([b[labels[b] == 0] for b in batches])
    assert len(np.unique(negs[:990])) == 990
    again = list(itertools.islice(lens_batches(labels, 64, lens_fraction=0.05, rng=3), 5))
    assert all(np.array_equal(a, b) for a, b in zip(again, batches, strict=False))
    plain = list(itertools.islice(lens_batches(labels, 100, lens_fraction=None, rng=0), 10))
    assert sorted(np.concatenate(plain).tolist()) == list(range(1000))
    with pytest.raises(LenscatError, match="no lenses"):
        lens_batches(np.zeros(10), 4)
    with pytest.raises(LenscatError, match="lens_fraction"):
        lens_batches(labels, 4, lens_fraction=1.5)


def _pretrained_backbone() -> Encoder:
    torch.manual_seed(1)
    enc = build_encoder("resnet-small", **TINY)
    enc.preprocessing = Preprocessing(crop=CROP)  # "trained" at 32 pixels
    enc.eval()
    return enc


def test_fine_tune_learning_rates_and_backbone(data):
    enc = _pretrained_backbone()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = make_optimizer(ImageClassifier(enc), lr=1e-3, backbone_lr_factor=0.1)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(10 * lrs["backbone"]) and lrs["head"] == 1e-3

    model, m = train_image_classifier(
        data["x"][:64],
        data["y"][:64],
        backbone=enc,
        epochs=1,
        batch_size=16,
        lr=1e-3,
        device="cpu",
        max_steps=3,
        seed=0,
    )
    assert m["mode"] == "fine-tune" and m["steps"] == 3 and m["stop_reason"] == "max_steps"
    groups = {g["name"]: g for g in m["param_groups"]}
    assert groups["head"]["lr"] == pytest.approx(10 * groups["backbone"]["lr"])
    assert groups["head"]["n_params"] == 33
    assert groups["backbone"]["n_params"] == sum(p.numel() for p in enc.parameters())
    assert m["lr_backbone"] == pytest.approx(1e-4)
    assert model.crop == CROP  # the backbone's training crop
    # the given encoder is untouched; the classifier's copy was trained
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    trained = model.backbone.state_dict()
    assert not torch.equal(trained["conv1.weight"], before["conv1.weight"])

    # factor 0: a linear probe, the backbone (BatchNorm statistics too) stays as it was
    probe, m0 = train_image_classifier(
        data["x"][:64],
        data["y"][:64],
        backbone=enc,
        batch_size=16,
        device="cpu",
        max_steps=2,
        backbone_lr_factor=0.0,
        augment=False,
    )
    assert [g["name"] for g in m0["param_groups"]] == ["head"] and m0["lr_backbone"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in probe.backbone.state_dict().items())
    assert all(p.requires_grad for p in probe.parameters())


def test_save_load_round_trip(trained, data, tmp_path: Path):
    model, m = trained
    path = tmp_path / "clf" / "ring.pt"
    digest = save_classifier(model, path, hparams=m["hparams"])
    assert len(digest) == 64 and save_classifier(model, tmp_path / "again.pt", hparams=m["hparams"]) == digest
    loaded, meta = load_classifier(path)
    assert meta["sha256"] == digest and meta["arch"] == "resnet-small"
    assert meta["crop"] == CROP and meta["backbone_hparams"]["widths"] == TINY["widths"]
    assert meta["hparams"]["steps"] == 150 and meta["preprocessing"]["stretch"] == "arcsinh"
    assert not loaded.training and loaded.preprocessing == model.preprocessing
    x = data["xt"][:50]
    np.testing.assert_array_equal(score_images(loaded, x, device="cpu"), score_images(model, x, device="cpu"))
    # the file is plain tensors and containers
    obj = torch.load(path, weights_only=True)
    assert obj["kind"] == "lenscat-image-classifier" and "head.weight" in obj["state_dict"]

    enc_path = tmp_path / "encoder.pt"
    save_encoder(model.backbone, enc_path, arch="resnet-small", hparams=model.backbone.hparams)
    with pytest.raises(InputFileError, match="use load_encoder"):
        load_classifier(enc_path)
    with pytest.raises(InputFileError, match="no such checkpoint"):
        load_classifier(tmp_path / "missing.pt")


def test_views_score_the_mean_logit_of_the_orientations(trained, data):
    import copy
    import dataclasses

    model, _ = trained
    tta = copy.deepcopy(model)
    tta.preprocessing = dataclasses.replace(model.preprocessing, views=8)
    x = data["xt"][:40]
    turns = [np.ascontiguousarray(np.rot90(x, k, axes=(2, 3))) for k in range(4)]
    views = turns + [np.ascontiguousarray(t[..., ::-1]) for t in turns]
    logits = [np.log(p / (1 - p)) for p in (score_images(model, v, device="cpu").astype(np.float64) for v in views)]
    expected = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    got = score_images(tta, x, device="cpu")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # a turned cutout scores the same, which the plain model does not promise
    np.testing.assert_allclose(score_images(tta, views[1], device="cpu"), got, rtol=1e-4, atol=1e-6)
    assert not np.allclose(score_images(model, views[1], device="cpu"), score_images(model, x, device="cpu"))


def test_training_is_deterministic(data):
    def run(seed: int):
        return train_image_classifier(
            data["x"][:48],
            data["y"][:48],
            encoder_hparams=TINY,
            crop=CROP,
            batch_size=16,
            device="cpu",
            max_steps=3,
            seed=seed,
            focal_gamma=2.0,
        )

    (a, ma), (b, mb), (_, mc) = run(4), run(4), run(5)
    assert ma["loss_history"] == mb["loss_history"] != mc["loss_history"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_focal_loss():
    logits = torch.tensor([-3.0, 0.0, 2.0, 4.0])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert _loss(logits, y, None) == pytest.approx(float(bce))
    assert _loss(logits, y, 0.0) == pytest.approx(float(bce))
    assert float(_loss(logits, y, 2.0)) < float(bce)


class _StopAt(ArraySource):
    """Raises KeyboardInterrupt, or sends SIGINT, on its ``n``-th read."""

    def __init__(self, images: np.ndarray, n: int, how: str) -> None:
        super().__init__(images)
        self.calls, self.n, self.how = 0, n, how

    def get(self, indices: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.n:
            if self.how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread: training stops
        return super().get(indices)


@pytest.mark.parametrize("how", ["raise", "sigint"])
def test_ctrl_c_returns_the_model_so_far(data, how: str):
    src = _StopAt(data["x"][:64], n=4, how=how)
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN in a background job
    model, m = train_image_classifier(
        src, data["y"][:64], encoder_hparams=TINY, crop=CROP, batch_size=16, epochs=50, device="cpu", augment=False
    )
    assert m["stop_reason"] == "interrupted" and m["interrupted"]
    assert 1 <= m["steps"] < 10 and len(m["loss_history"]) == m["steps"]
    assert not model.training and np.all(np.isfinite(score_images(model, data["x"][:4])))
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_an_interrupted_run_resumes_bit_identically(data, tmp_path):
    """Ctrl-C saves the state; the same call continues, with the validation history, to the same model."""
    x, y = data["x"][:64], data["y"][:64]
    kw = dict(
        encoder_hparams=TINY,
        crop=CROP,
        batch_size=16,
        epochs=3,
        device="cpu",
        seed=2,
        val_images=data["x"][64:96],
        val_labels=data["y"][64:96],
    )
    ref_model, ref = train_image_classifier(x, y, **kw)
    _, first = train_image_classifier(_StopAt(x, n=7, how="sigint"), y, **kw, state_dir=tmp_path, run_tag="t")
    assert first["stop_reason"] == "interrupted" and 4 < first["steps"] < 12 and first["val_steps"] == [4]
    model, again = train_image_classifier(x, y, **kw, state_dir=tmp_path, run_tag="t")
    assert again["resumed_from_step"] == first["steps"] and again["steps"] == 12
    assert again["loss_history"] == ref["loss_history"] and again["val_auc"] == ref["val_auc"]
    assert again["val_steps"] == [4, 8, 12] and again["lens_fraction_seen"] == ref["lens_fraction_seen"]
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    # another tag is another run: it starts from step 0
    _, other = train_image_classifier(x, y, **kw, state_dir=tmp_path, run_tag="u", max_steps=1)
    assert other["resumed_from_step"] == 0


def test_errors(data):
    x, y = data["x"][:32], data["y"][:32]
    with pytest.raises(LenscatError, match="31 labels for 32 images"):
        train_image_classifier(x, y[:31], device="cpu")
    with pytest.raises(LenscatError, match="no lenses"):
        train_image_classifier(x, np.zeros(32), device="cpu")
    with pytest.raises(LenscatError, match=r"labels\[0\] is 2"):
        train_image_classifier(x, np.full(32, 2), device="cpu")
    with pytest.raises(LenscatError, match="smaller than the classifier's 96-pixel crop"):
        train_image_classifier(x, y, encoder_hparams=TINY, device="cpu", max_steps=1)
    with pytest.raises(LenscatError, match="2 band"):
        train_image_classifier(x[:, :2], y, backbone=_pretrained_backbone(), device="cpu")
    with pytest.raises(LenscatError, match="val_images and val_labels"):
        train_image_classifier(x, y, val_images=x, device="cpu")


@pytest.mark.gpu
def test_training_and_scoring_on_cuda(data):
    x, y = data["x"][:64], data["y"][:64]
    model, m = train_image_classifier(
        x,
        y,
        backbone=_pretrained_backbone(),
        batch_size=16,
        epochs=1,
        device="cuda",
        val_images=data["xt"][:32],
        val_labels=data["yt"][:32],
    )
    assert m["steps"] == 4 and m["device"].startswith("cuda")
    assert np.all(np.isfinite(m["loss_history"])) and len(m["val_loss"]) == 1
    assert next(model.parameters()).device.type == "cpu"
    base, mb = train_image_classifier(x, y, encoder_hparams=TINY, crop=CROP, batch_size=16, device="cuda", max_steps=3)
    assert mb["steps"] == 3 and np.all(np.isfinite(mb["loss_history"]))
    cpu = score_images(model, data["xt"], device="cpu")
    gpu = score_images(model, data["xt"], device="cuda")
    assert gpu.shape == (200,) and np.all((gpu >= 0) & (gpu <= 1))
    np.testing.assert_allclose(gpu, cpu, atol=0.03)


# ---------------------------------------------------------------------- the few-label recipe


def test_few_label_augmentations_keep_shape_and_label(trained, data):
    """Every few-label view is a (crop x crop) input, and the trained model still tells rings from blobs
    on augmented views (the augmentations do not change what the cutout is)."""
    from lenscat.models.augment import AugmentConfig, Augmenter

    model, _ = trained
    aug = Augmenter(AugmentConfig.few_label(), model.preprocessing)
    x = torch.from_numpy(data["xt"])
    v = aug(x, generator=torch.Generator().manual_seed(0))
    assert v.shape == (200, 3, CROP, CROP) and torch.isfinite(v).all()
    again = aug(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v, again) and not torch.equal(v, aug(x, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        logits = model(v).numpy()
    assert auc(data["yt"], logits) > 0.85
    # flux jitter alone multiplies each cutout by one factor; sub-pixel jitter alone moves it by < 3 px
    raw = Preprocessing(crop=CROP, stretch="none", clip=None)
    flux = Augmenter(dataclasses_replace(AugmentConfig.none(), flux_jitter=0.3), raw)
    out = flux(x[:8], generator=torch.Generator().manual_seed(2)).numpy()
    plain = raw.apply_numpy(data["xt"][:8])
    factor = out.sum(axis=(1, 2, 3)) / plain.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(out, plain * factor[:, None, None, None], rtol=1e-4, atol=1e-6)
    assert factor.std() > 0.01
    shift = Augmenter(dataclasses_replace(AugmentConfig.none(), jitter=3, subpixel=True), raw)
    moved = shift(x[:8], generator=torch.Generator().manual_seed(3)).numpy()
    assert moved.shape == plain.shape and not np.allclose(moved, plain)
    with pytest.raises(LenscatError, match="flux_jitter"):
        AugmentConfig(flux_jitter=-1)


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


class _Recording(ArraySource):
    """Remembers every index it was asked for."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__(images)
        self.seen: list[int] = []

    def get(self, indices: np.ndarray) -> np.ndarray:
        self.seen += np.asarray(indices).tolist()
        return super().get(indices)


def test_every_negative_is_drawn_in_an_epoch(data):
    from lenscat.models.supervised_data import negative_epoch_steps

    y = data["y"]
    neg = set(np.flatnonzero(y == 0).tolist())
    steps = negative_epoch_steps(y, 16, 0.25)
    assert steps == int(np.ceil(len(neg) / 12))  # at most 4 lenses per batch of 16
    batches = list(itertools.islice(lens_batches(y, 16, lens_fraction=0.25, rng=5), steps))
    assert {int(i) for b in batches for i in b if y[i] == 0} == neg
    src = _Recording(data["x"])
    _, m = train_image_classifier(
        src,
        y,
        encoder_hparams=TINY,
        crop=CROP,
        batch_size=16,
        epochs=1,
        lens_fraction=0.25,
        every_negative=True,
        device="cpu",
        augment=False,
    )
    assert m["steps"] == m["steps_per_epoch"] == steps and m["hparams"]["every_negative"]
    assert neg <= set(src.seen)
    assert 0.2 < m["lens_fraction_seen"] < 0.3


def test_early_stopping_keeps_the_best_epochs_weights(data):
    """Validation labels that are the opposite of the training ones: the validation AUC is best early
    and falls as the network learns, so training stops and returns the best epoch's weights."""
    xv, yv = data["xt"][:64], data["yt"][:64]
    model, m = train_image_classifier(
        data["x"],
        data["y"],
        encoder_hparams=TINY,
        crop=CROP,
        batch_size=32,
        epochs=20,
        lr=3e-3,
        lens_fraction=0.25,
        device="cpu",
        seed=0,
        val_images=xv,
        val_labels=1 - yv,
        early_stopping="auc",
        patience=2,
        every_negative=True,
    )
    assert m["stop_reason"] == "early_stopping" and m["epochs_completed"] < 20
    assert len(m["val_auc"]) == m["epochs_completed"] == m["best_epoch"] + 2
    best = int(np.argmax(m["val_auc"]))
    assert m["best_step"] == m["val_steps"][best] and m["best_val"] == pytest.approx(m["val_auc"][best])
    assert m["val_auc"][-1] < m["val_auc"][best]
    got = roc_auc(1 - yv, score_images(model, xv, device="cpu"))
    assert got == pytest.approx(m["val_auc"][best], abs=1e-6)
    with pytest.raises(LenscatError, match="needs validation"):
        train_image_classifier(data["x"], data["y"], early_stopping="ap", device="cpu")
