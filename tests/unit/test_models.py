"""Encoders, preprocessing and checkpoints (lenscat.models); no database."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models import (
    Preprocessing,
    build_encoder,
    encode,
    import_torchvision_resnet,
    import_torchvision_resnet50,
    load_encoder,
    oriented,
    save_encoder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchvision_keys(layers: tuple[int, ...], bottleneck: bool) -> list[str]:
    """torchvision's ResNet state-dict keys, written out from its naming scheme (fc included)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight", *(f"bn1.{s}" for s in bn)]
    convs = 3 if bottleneck else 2
    for li, nblocks in enumerate(layers, start=1):
        for b in range(nblocks):
            p = f"layer{li}.{b}."
            for c in range(1, convs + 1):
                keys.append(f"{p}conv{c}.weight")
                keys += [f"{p}bn{c}.{s}" for s in bn]
            if b == 0 and (bottleneck or li > 1):
                keys.append(f"{p}downsample.0.weight")
                keys += [f"{p}downsample.1.{s}" for s in bn]
    return [*keys, "fc.weight", "fc.bias"]


RESNET50_KEYS = torchvision_keys((3, 4, 6, 3), bottleneck=True)
RESNET18_KEYS = torchvision_keys((2, 2, 2, 2), bottleneck=False)


def test_torchvision_key_sets():
    assert len(RESNET50_KEYS) == 320 and len(RESNET18_KEYS) == 122  # torchvision's counts
    r50 = build_encoder("resnet50").state_dict()
    assert list(r50) == [k for k in RESNET50_KEYS if not k.startswith("fc.")]
    r18 = build_encoder("resnet18").state_dict()
    assert list(r18) == [k for k in RESNET18_KEYS if not k.startswith("fc.")]
    assert r50["conv1.weight"].shape == (64, 3, 7, 7)
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)


@pytest.mark.parametrize(
    "arch, hparams, dim",
    [
        ("resnet50", {}, 2048),
        ("resnet18", {}, 512),
        ("resnet-small", {}, 128),
        ("resnet-small", {"output_dim": 64, "in_chans": 5}, 64),
        ("resnet-small", {"widths": [8, 16, 32, 48], "output_dim": 48}, 48),
    ],
)
def test_output_dims(arch, hparams, dim):
    enc = build_encoder(arch, **hparams).eval()
    assert enc.output_dim == dim and enc.arch == arch
    with torch.no_grad():
        out = enc(torch.randn(2, hparams.get("in_chans", 3), 96, 96))
    assert out.shape == (2, dim)


@pytest.mark.parametrize("arch", ["resnet-small", "resnet18"])
def test_zero_init_residual_starts_every_block_as_the_identity(arch):
    from lenscat.models.resnet import BasicBlock

    blocks = [m for m in build_encoder(arch, zero_init_residual=True).modules() if isinstance(m, BasicBlock)]
    assert blocks and all(float(b.bn2.weight.abs().max()) == 0.0 for b in blocks)
    default = [m for m in build_encoder(arch).modules() if isinstance(m, BasicBlock)]
    assert all(bool((b.bn2.weight == 1).all()) for b in default)
    plain = [b.eval() for b in blocks if b.downsample is None]  # resnet-small: every block downsamples
    torch.manual_seed(0)
    for block in plain:  # the residual branch adds zero: the block returns relu(x)
        x = torch.randn(2, block.conv1.in_channels, 12, 12)
        with torch.no_grad():
            assert torch.equal(block(x), torch.relu(x))


def test_build_encoder_errors():
    with pytest.raises(LenscatError, match="unknown architecture 'vgg'"):
        build_encoder("vgg")
    with pytest.raises(LenscatError, match="does not take hyper-parameter"):
        build_encoder("resnet50", output_dim=128)


# ---------------------------------------------------------------- preprocessing


def test_preprocessing_numpy_matches_torch_and_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.01, (4, 3, 152, 152)).astype(np.float32)
    x[0, 0, 76, 76] = np.nan
    x[1, 2, 80, 70] = np.inf
    x[2, 1, 60, 60] = 1e9
    pre = Preprocessing()
    a = pre.apply_numpy(x)
    b = pre.apply_torch(torch.from_numpy(x)).numpy()
    assert a.shape == (4, 3, 96, 96) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    crop = x[:, :, 28:124, 28:124]
    assert a[0, 0, 48, 48] == 0 and a[1, 2, 52, 42] == 0  # NaN / inf -> 0
    assert a[2, 1, 32, 32] == 10.0  # clipped
    ref = np.arcsinh(crop[3] / np.array([0.0024, 0.0034, 0.0099], np.float32)[:, None, None])
    np.testing.assert_allclose(a[3], np.clip(ref, -10, 10), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(a)) and np.isfinite(x).sum() < x.size  # input untouched


def test_preprocessing_variants_and_errors():
    x = np.ones((1, 3, 100, 101), np.float32) * 0.01
    raw = Preprocessing.stein().apply_numpy(x)
    assert raw.shape == (1, 3, 96, 96) and np.all(raw == np.float32(0.01))
    lin = Preprocessing(stretch="linear", clip=None, scales=(0.01, 0.02, 0.04)).apply_numpy(x)
    np.testing.assert_allclose(lin[0, :, 0, 0], [1.0, 0.5, 0.25], rtol=1e-6)
    assert Preprocessing().crop_offsets(152, 152) == (28, 28)
    d = Preprocessing(crop=64, scales=(1.0, 2.0, 3.0)).to_dict()
    assert Preprocessing.from_dict(d) == Preprocessing(crop=64, scales=(1.0, 2.0, 3.0))
    with pytest.raises(LenscatError, match="smaller than the 96-pixel crop"):
        Preprocessing().apply_numpy(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(LenscatError, match="4 bands"):
        Preprocessing().apply_numpy(np.zeros((1, 4, 96, 96), np.float32))
    with pytest.raises(LenscatError, match="unknown stretch"):
        Preprocessing(stretch="log")
    with pytest.raises(LenscatError, match="unknown preprocessing option"):
        Preprocessing.from_dict({"size": 3})
    assert Preprocessing.from_dict({"crop": 48}).views == 1  # checkpoints from before the option
    assert Preprocessing.from_dict(Preprocessing(views=8).to_dict()).views == 8
    bad_views: tuple[Any, ...] = (0, 2, 16, True, 8.5)  # deliberately not all valid ints
    for bad in bad_views:
        with pytest.raises(LenscatError, match="views must be one of 1, 4, 8"):
            Preprocessing(views=bad)


def test_oriented_is_the_dihedral_group_of_the_square():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = [oriented(x, v) for v in range(8)]
    assert torch.equal(views[0], x)
    assert torch.equal(views[1], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(views[4], torch.flip(x, dims=(3,)))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # eight different images
    # closed under a turn and a flip: the set of views of a transformed image is the same set
    for g in (lambda t: torch.rot90(t, 1, dims=(2, 3)), lambda t: torch.flip(t, dims=(2,))):
        assert {tuple(oriented(g(x), v).flatten().tolist()) for v in range(8)} == {
            tuple(v.flatten().tolist()) for v in views
        }
    with pytest.raises(LenscatError, match="view must be in 0..7"):
        oriented(x, 8)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def r50() -> torch.nn.Module:
    torch.manual_seed(3)
    enc = build_encoder("resnet50")
    with torch.no_grad():  # non-trivial BN statistics, so a mix-up would show
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                assert m.num_batches_tracked is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(123)
    return enc.eval()


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_import_moco_checkpoint_round_trips(tmp_path: Path, r50):
    sd = OrderedDict()
    for k, v in r50.state_dict().items():
        sd[f"module.encoder_q.{k}"] = v.clone()
    sd["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048)
    sd["module.encoder_q.fc.0.bias"] = torch.randn(2048)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048)
    sd["module.encoder_q.fc.2.bias"] = torch.randn(128)
    sd["module.encoder_k.conv1.weight"] = torch.randn(64, 3, 7, 7)  # the key encoder: ignored
    sd["module.encoder_k.bn1.weight"] = torch.randn(64)
    sd["module.queue"] = torch.randn(128, 65536 // 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "checkpoint_0199.pth.tar"
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]},
        },
        path,
    )
    enc, meta = import_torchvision_resnet50(path)
    _assert_same_weights(enc, r50)
    assert meta["prefix"] == "module.encoder_q." and meta["source_format"] == "moco"
    assert meta["dropped_keys"] == ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["output_dim"] == 2048 and not enc.training
    assert enc.preprocessing == Preprocessing.stein()
    x = np.random.default_rng(0).normal(0, 0.01, (2, 3, 152, 152)).astype(np.float32)
    np.testing.assert_array_equal(encode(enc, x), encode(r50, x, preprocess=Preprocessing.stein()))

    # the same weights re-saved in lenscat format load identically
    out = tmp_path / "stein.pt"
    digest = save_encoder(enc, out, arch=meta["arch"], hparams=meta["hparams"], extra={"imported_from": str(path)})
    again, meta2 = load_encoder(out)
    _assert_same_weights(again, r50)
    assert meta2["sha256"] == digest and meta2["preprocessing"]["stretch"] == "none"
    assert meta2["extra"] == {"imported_from": str(path)}


@pytest.mark.parametrize("layout", ["plain", "backbone", "lightning", "old_torchvision"])
def test_import_torchvision_layouts(tmp_path: Path, r50, layout):
    sd: dict[str, Any] = OrderedDict(r50.state_dict())
    sd["fc.weight"] = torch.randn(1000, 2048)
    sd["fc.bias"] = torch.randn(1000)
    if layout == "backbone":
        sd = OrderedDict((f"backbone.{k}", v) for k, v in sd.items())
    elif layout == "lightning":
        sd = {
            "state_dict": OrderedDict((f"encoder_q.{k}", v) for k, v in sd.items()),
            "epoch": 3,
            "hyper_parameters": {"emb_dim": 128},
        }
    elif layout == "old_torchvision":
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / f"{layout}.pth"
    torch.save(sd, path)
    enc, meta = import_torchvision_resnet50(path)
    ref = r50.state_dict()
    for k, v in enc.state_dict().items():
        if layout == "old_torchvision" and k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(v, ref[k]), k
    assert meta["dropped_keys"] == ["fc.bias", "fc.weight"]


def _message(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_checkpoints_give_one_line_errors(tmp_path: Path, r50):
    missing = tmp_path / "nope.pth"
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(missing)
    assert str(missing) in _message(e) and "no such checkpoint file" in _message(e)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(garbage)
    assert str(garbage) in _message(e) and "not a readable PyTorch checkpoint" in _message(e)

    good = tmp_path / "good.pth"
    torch.save(r50.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: 1 << 20])
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(truncated)
    assert str(truncated) in _message(e)

    r18 = tmp_path / "r18.pth"
    torch.save(build_encoder("resnet18").state_dict(), r18)
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(r18)
    assert str(r18) in _message(e) and "ResNet-18" in _message(e) and "ResNet-50" in _message(e)

    sd = OrderedDict(r50.state_dict())
    del sd["layer2.1.conv2.weight"], sd["layer2.1.bn2.weight"]
    sd["layer1.0.extra.weight"] = torch.zeros(3)
    holes = tmp_path / "holes.pth"
    torch.save(sd, holes)
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(holes)
    msg = _message(e)
    assert str(holes) in msg
    assert "2 missing key(s): layer2.1.bn2.weight, layer2.1.conv2.weight" in msg
    assert "1 unexpected key(s): layer1.0.extra.weight" in msg

    sd = OrderedDict(r50.state_dict())
    sd["conv1.weight"] = torch.randn(64, 5, 7, 7)
    five = tmp_path / "five_bands.pth"
    torch.save(sd, five)
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(five)
    assert str(five) in _message(e) and "5 input channel(s), expected 3" in _message(e)
    enc5, _ = import_torchvision_resnet(five, in_chans=5)  # asked for: fine
    assert enc5.in_chans == 5

    sd = OrderedDict(r50.state_dict())
    sd["layer1.0.conv1.weight"] = torch.randn(128, 64, 1, 1)
    wide = tmp_path / "wide.pth"
    torch.save(sd, wide)
    with pytest.raises(LenscatError, match=r"shape\(s\) differ from ResNet-50"):
        import_torchvision_resnet50(wide)

    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": r50.state_dict(), "args": Path("/x")}, pickled)
    with pytest.raises(LenscatError) as e:
        import_torchvision_resnet50(pickled)
    assert str(pickled) in _message(e) and "trust=True" in _message(e)
    enc, _ = import_torchvision_resnet50(pickled, trust=True)
    _assert_same_weights(enc, r50)

    not_resnet = tmp_path / "mlp.pth"
    torch.save({"0.weight": torch.zeros(2, 2)}, not_resnet)
    with pytest.raises(LenscatError, match="not a torchvision-style ResNet"):
        import_torchvision_resnet50(not_resnet)

    with pytest.raises(LenscatError) as e:
        load_encoder(good)
    assert str(good) in _message(e) and "import_torchvision_resnet50" in _message(e)


def test_lenscat_format_round_trip_and_errors(tmp_path: Path):
    torch.manual_seed(0)
    hp = {"widths": (8, 16, 32, 32), "output_dim": 24}
    enc = build_encoder("resnet-small", **hp)
    enc.preprocessing = Preprocessing(crop=64, clip=5.0, views=4)
    path = tmp_path / "sub" / "small.pt"
    digest = save_encoder(
        enc, path, arch="resnet-small", hparams=hp, extra={"loss": np.float32(1.5), "steps": np.int64(7), "note": "x"}
    )
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    again = save_encoder(
        enc, tmp_path / "again.pt", arch="resnet-small", hparams=hp, extra={"loss": 1.5, "steps": 7, "note": "x"}
    )
    assert again == digest  # byte-reproducible: same weights and metadata, same sha256
    obj = torch.load(path, weights_only=True)
    assert obj["format_version"] == 1 and obj["arch"] == "resnet-small"
    assert obj["output_dim"] == 24 and obj["hparams"]["widths"] == [8, 16, 32, 32]
    loaded, meta = load_encoder(path)
    _assert_same_weights(loaded, enc)
    assert loaded.preprocessing == enc.preprocessing and not loaded.training
    assert loaded.preprocessing.views == 4
    assert meta["extra"] == {"loss": 1.5, "steps": 7, "note": "x"} and meta["sha256"] == digest
    assert not list(tmp_path.glob("sub/.*tmp"))  # atomic write left nothing behind

    with pytest.raises(LenscatError, match="does not match arch"):
        save_encoder(enc, tmp_path / "x.pt", arch="resnet-small", hparams={})
    with pytest.raises(LenscatError, match="not 'resnet18'"):
        save_encoder(enc, tmp_path / "x.pt", arch="resnet18", hparams={})

    obj["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(obj, future)
    with pytest.raises(LenscatError, match="format version 99 is not supported"):
        load_encoder(future)
    obj["format_version"] = 1
    obj["state_dict"]["layer1.0.conv1.weight"] = torch.full_like(
        obj["state_dict"]["layer1.0.conv1.weight"], float("nan")
    )
    nan = tmp_path / "nan.pt"
    torch.save(obj, nan)
    with pytest.raises(LenscatError, match="non-finite values in layer1.0.conv1.weight"):
        load_encoder(nan)
