"""The model registry without a database: device choice, checkpoint verification, the loader table,
task names and the independence of models/ from the domain packages."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lenscat.errors import CheckpointError, LenscatError
from lenscat.models.device import best_device, resolve_device
from lenscat.registry import loaders
from lenscat.registry.device import configured_device, select_device
from lenscat.registry.versions import ModelVersion, latest_only
from lenscat.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def device_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set ``LENSCAT_DEVICE`` for one test (settings re-read, loaded models forgotten)."""

    def set_device(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("LENSCAT_DEVICE", raising=False)
        else:
            monkeypatch.setenv("LENSCAT_DEVICE", value)
        get_settings.cache_clear()
        loaders.clear_cache()

    set_device(None)
    yield set_device
    monkeypatch.delenv("LENSCAT_DEVICE", raising=False)
    get_settings.cache_clear()
    loaders.clear_cache()


def _version(kind: str, architecture: str, path: Path | None, sha: str | None, model_id: int = 1) -> ModelVersion:
    return ModelVersion(
        model_id=model_id,
        kind=kind,
        name=f"test-{architecture}",
        version=1,
        architecture=architecture,
        output_dim=None,
        checkpoint_path=str(path) if path else None,
        checkpoint_sha256=sha,
        origin="trained",
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ devices
def test_resolve_device_default_and_names():
    assert resolve_device(None) == torch.device(best_device())
    assert resolve_device("") == torch.device(best_device())
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(LenscatError, match="unknown torch device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_refuses_missing_cuda():
    with pytest.raises(LenscatError, match="no CUDA device is available"):
        resolve_device("cuda:1")


def test_select_device_honours_lenscat_device(device_env):
    device_env(None)
    assert configured_device() is None
    assert select_device() == best_device()
    device_env("cpu")
    assert configured_device() == "cpu"
    assert select_device() == "cpu"
    assert select_device("meta") == "meta"  # an explicit request wins over the setting
    if not torch.cuda.is_available():
        device_env("cuda:3")  # the setting is what is resolved (and refused here)
        with pytest.raises(LenscatError, match="'cuda:3'"):
            select_device()


def test_loaders_get_the_configured_device(device_env, tmp_path):
    """Workers and CLI inference load through load_model: LENSCAT_DEVICE reaches every loader."""
    seen: list[str | None] = []

    def toy(model: ModelVersion, device: str | None) -> object:
        seen.append(device)
        return object()

    loaders.register_loader("classifier", "toy-device-test", toy)
    try:
        device_env("cpu")
        m = _version("classifier", "toy-device-test", None, None, model_id=99)
        first = loaders.load_model(m)
        assert loaders.load_model(m) is first  # loaded once per process
        loaders.load_model(m, "meta")
        assert seen == ["cpu", "meta"]
        from lenscat.classifiers.loaders import score_function

        device_env("cpu")
        score_function(m)
        assert seen[-1] == "cpu"
    finally:
        loaders._LOADERS.pop(("classifier", "toy-device-test"), None)


# ------------------------------------------------------------------------------------ checkpoints
def _tamper(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(b"\0")


def test_linear_classifier_loads_then_refuses_a_tampered_checkpoint(device_env, tmp_path):
    path = tmp_path / "linear.pt"
    torch.save({"weight": torch.tensor([1.0, -1.0]), "bias": torch.tensor(0.5)}, path)
    m = _version("classifier", "linear", path, _sha(path))
    from lenscat.classifiers.loaders import load_checkpoint, score_function

    scores = score_function(m)(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    assert np.asarray(scores).shape == (2,)
    _tamper(path)
    loaders.clear_cache()
    load_checkpoint.cache_clear()
    with pytest.raises(CheckpointError, match="does not match classifier test-linear@1"):
        score_function(m)


def test_encoder_loads_then_refuses_a_tampered_checkpoint(device_env, tmp_path):
    from lenscat.embeddings.embed import load_encoder_for
    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.resnet import build_encoder

    device_env("cpu")
    path = tmp_path / "enc.pt"
    hp = {"in_chans": 3}
    sha = save_encoder(build_encoder("resnet-small", **hp), path, arch="resnet-small", hparams=hp)
    m = _version("encoder", "resnet-small", path, sha)
    enc, dev = load_encoder_for(m)
    assert dev == "cpu" and not enc.training
    _tamper(path)
    loaders.clear_cache()
    with pytest.raises(CheckpointError, match="does not match encoder test-resnet-small@1"):
        load_encoder_for(m)


@pytest.mark.parametrize(
    ("kind", "architecture"),
    [
        ("encoder", "resnet-small"),
        ("encoder", "classifier-features"),
        ("classifier", "linear"),
        ("classifier", "radial"),
        ("classifier", "cnn"),
        ("classifier", "finetune"),
        ("detector", "specnet"),
        ("detector", "ensemble"),
    ],
)
def test_every_family_refuses_a_tampered_or_missing_checkpoint(device_env, tmp_path, kind, architecture):
    path = tmp_path / "model.pt"
    path.write_bytes(b"registered bytes")
    m = _version(kind, architecture, path, _sha(path), model_id=1000 + len(architecture))
    _tamper(path)
    with pytest.raises(CheckpointError, match="the file was changed"):
        loaders.load_model(m)
    if kind == "detector":
        from lenscat.spectra.detectors import load_detector

        with pytest.raises(CheckpointError):
            load_detector(m)
    path.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        loaders.load_model(m)
    unhashed = tmp_path / "unhashed.pt"
    unhashed.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no recorded checkpoint sha256"):
        loaders.load_model(_version(kind, architecture, unhashed, None, model_id=2000 + len(architecture)))


def test_configured_detectors_have_nothing_to_verify(device_env):
    from lenscat.spectra.detector_mf import MATCHED_FILTER, MatchedFilterDetector
    from lenscat.spectra.detectors import load_detector

    m = _version("detector", MATCHED_FILTER, None, "0" * 64, model_id=4242)
    assert isinstance(load_detector(m), MatchedFilterDetector)


# ------------------------------------------------------------------------------------ the loader table
def test_detector_classes_are_the_registry_loaders():
    from lenscat.spectra.detectors import FAMILY_MODULES, detector_class

    assert loaders.PLUGIN_MODULES["detector"] == FAMILY_MODULES
    # a family is found by its module name alone: lenscat/spectra/detector_<family>.py
    assert loaders._expand(FAMILY_MODULES) == [
        f"lenscat.spectra.detector_{f}" for f in ("ensemble", "mf", "oii", "specnet")
    ]
    for arch in ("matched-filter", "specnet", "ensemble", "oii-filter"):
        assert loaders.loader_for("detector", arch) is detector_class(arch)
    with pytest.raises(LenscatError, match="unknown detector architecture 'nope'; known: ensemble, matched-filter"):
        detector_class("nope")


def test_every_family_has_loaders():
    assert loaders.loader_for("encoder", "resnet50") is loaders.loader_for("encoder", "anything")
    assert loaders.loader_for("classifier", "linear") is not loaders.loader_for("classifier", "cnn")


def test_latest_only_keeps_the_highest_version_per_name():
    rows = [
        {"name": "b", "version": 1},
        {"name": "a", "version": 2},
        {"name": "a", "version": 3},
        {"name": "b", "version": 2},
    ]
    assert latest_only(rows) == [{"name": "a", "version": 3}, {"name": "b", "version": 2}]


# ------------------------------------------------------------------------------------ task names
def test_task_names_are_the_protocol_strings():
    from lenscat.jobs.reprocess import Planned
    from lenscat.jobs.stalls import TASKS
    from lenscat.tasks import names

    assert names.EMBED_CHUNK == "lenscat.embed_chunk"
    assert names.SCORE_CHUNK == "lenscat.score_chunk"
    assert names.SCAN_SPECTRA_CHUNK == "lenscat.scan_spectra_chunk"
    assert names.REPROCESS == "lenscat.reprocess"
    assert names.CROSSMATCH_CATALOG == "lenscat.crossmatch_catalog"
    assert TASKS == {
        "embed": "lenscat.embed_chunk",
        "score": "lenscat.score_chunk",
        "spectral_scan": "lenscat.scan_spectra_chunk",
        "lensmodel": "lenscat.lensmodel_chunk",
    }
    assert Planned("score", "m@1", 1, 1, 1, [0]).task == "lenscat.score_chunk"


def test_task_names_are_spelt_once():
    """Outside lenscat/tasks/names.py no module spells a task name (the reprocess lock key aside)."""
    spelled = []
    for path in (ROOT / "lenscat").rglob("*.py"):
        if path.name == "names.py" and path.parent.name == "tasks":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in {
                "lenscat.embed_chunk",
                "lenscat.score_chunk",
                "lenscat.scan_spectra_chunk",
                "lenscat.crossmatch_catalog",
            }:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


# ------------------------------------------------------------------------------------ layering
def test_specnet_window_equals_the_spectra_grid():
    from lenscat.models import specnet_inputs
    from lenscat.spectra.grid import WINDOW

    assert (WINDOW.k0, WINDOW.n, WINDOW.dlog) == (
        specnet_inputs.WINDOW_K0,
        specnet_inputs.WINDOW_N,
        specnet_inputs.WINDOW_DLOG,
    )
    assert np.array_equal(specnet_inputs.window_wave(), WINDOW.wave)


def test_models_import_no_domain_module():
    """models/ is pure PyTorch: it imports nothing of lenscat but models/ and errors (masks are passed in)."""
    found = set()
    for path in (ROOT / "lenscat" / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for mod in mods:
                if mod.startswith("lenscat.") and not mod.startswith(("lenscat.models", "lenscat.errors")):
                    found.add(mod)
    assert found == set(), sorted(found)
