"""Encoder versions: import a torchvision ResNet-50 state dict, ingest precomputed vectors."""

import numpy as np
import pytest
import torch
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.embeddings.encoder_import import import_encoder, ingest_vectors
from lenscat.errors import InputFileError, LenscatError


def _sources(session, n, survey="enc-survey"):
    sv = ensure_survey(survey, ["g", "r", "z"], session=session)
    session.execute(
        text(
            "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) "
            "SELECT :sv, 'obj' || i, 150 + i * 1e-3, 2.0 FROM generate_series(1, :n) i"
        ),
        {"sv": sv.survey_id, "n": n},
    )


def test_import_resnet50_state_dict_is_versioned_and_idempotent(session, tmp_path):
    from lenscat.models.resnet import build_encoder

    torch.manual_seed(1)
    sd = {f"module.encoder_q.{k}": v for k, v in build_encoder("resnet50").state_dict().items()}
    sd["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)  # MoCo-v2 MLP head: dropped
    sd["module.encoder_q.fc.2.weight"] = torch.zeros(128, 2048)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "moco.pth.tar")
    m, created = import_encoder(tmp_path / "moco.pth.tar", "stein-like", session=session)
    again, created_again = import_encoder(tmp_path / "moco.pth.tar", "stein-like", session=session)
    assert created and not created_again and m == again
    assert (m.architecture, m.output_dim, m.version, m.origin) == ("resnet50", 2048, 1, "imported")
    row = session.execute(text("SELECT * FROM encoders WHERE encoder = 'stein-like'")).mappings().one()
    assert row["dim"] == 2048 and row["is_latest"] and len(row["checkpoint_sha256"]) == 64
    assert m.input_spec["views"] == 1  # as the weights were published
    # the same weights averaged over 8 orientations are another checkpoint, so another version
    tta, created_tta = import_encoder(tmp_path / "moco.pth.tar", "stein-like", session=session, views=8)
    assert created_tta and tta.version == 2 and tta.input_spec["views"] == 8
    assert tta.checkpoint_sha256 != m.checkpoint_sha256
    from lenscat.embeddings.encoder_derive import derive_encoder

    with pytest.raises(LenscatError, match="resnet-small encoders only; stein-like@1 is a resnet50"):
        derive_encoder("stein-like@1", readout="gap+annuli2", session=session)
    with pytest.raises(LenscatError, match="broken.pth"):
        (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
        import_encoder(tmp_path / "broken.pth", "stein-like", session=session)


def test_ingest_vectors_keys_by_objid_and_rejects_bad_rows(session, tmp_path):
    _sources(session, 50)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(53, 16)).astype(np.float32)
    ids = np.array([f"obj{i}" for i in range(1, 51)] + ["nope", "obj3", "obj4"])
    vec[10] = np.nan
    np.savez(tmp_path / "vectors.npz", objid=ids, embeddings=vec)
    res = ingest_vectors(tmp_path / "vectors.npz", "precomputed", "enc-survey", session=session)
    reasons = {r[2].split(" ")[0] for r in res.rejects}
    assert res.n_rows == 53 and res.n_loaded == 49 and len(res.rejects) == 4
    assert {"vector", "objid", "duplicate"} <= reasons
    assert res.rejects[0][0] == 11  # 1-based row of the NaN vector
    n = session.execute(text("SELECT count(*) FROM embeddings WHERE encoder = 'precomputed'")).scalar()
    assert n == 49
    # again: same rows, no duplicates; wrong dimension refused for the existing encoder
    assert ingest_vectors(tmp_path / "vectors.npz", "precomputed", "enc-survey", session=session).n_loaded == 49
    np.savez(tmp_path / "v8.npz", objid=ids[:5], embeddings=vec[:5, :8])
    with pytest.raises(LenscatError, match="makes 16-d vectors"):
        ingest_vectors(tmp_path / "v8.npz", "precomputed", "enc-survey", session=session)
    np.savez(tmp_path / "noids.npz", embeddings=vec)
    with pytest.raises(InputFileError, match="noids.npz: no id array 'objid'"):
        ingest_vectors(tmp_path / "noids.npz", "precomputed", "enc-survey", session=session)


def test_train_options_default_to_the_architecture_recipe(session, tmp_path):
    """`encoder train` without recipe options uses resnet-small's CPU recipe, and records it."""
    import json

    from click.testing import CliRunner

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.cli import cli
    from lenscat.embeddings.encoder_train import TRAINING_RECIPES, training_recipe
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "recipe.h5"
    write_stein_h5(h5, 40, seed=3)
    ingest_sources(h5, "recipe-survey")
    res = CliRunner().invoke(
        cli,
        [
            "encoder",
            "train",
            "--name",
            "recipe-enc",
            "--survey",
            "recipe-survey",
            "--batch-size",
            "16",
            "--max-steps",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == 1
    hp, spec = session.execute(
        text("SELECT hparams, input_spec FROM lenscat.model_versions WHERE name = 'recipe-enc'")
    ).one()
    small = TRAINING_RECIPES["resnet-small"]
    assert spec["crop"] == small["crop"] == 48 and hp["preprocess"]["crop"] == 48
    assert (hp["epochs"], hp["lr"], hp["temperature"], hp["queue_size"], hp["warmup_steps"]) == (
        small["epochs"],
        small["lr"],
        small["temperature"],
        small["queue_size"],
        small["warmup_steps"],
    )
    assert small["warmup_steps"] == 50 and training_recipe("resnet50")["warmup_steps"] == 0
    assert hp["zero_init_residual"] is small["zero_init_residual"] is True
    assert training_recipe("resnet50")["zero_init_residual"] is False
    # embeddings averaged over the 8 turns and flips, stored with the checkpoint the workers load
    assert spec["views"] == hp["preprocess"]["views"] == small["views"] == 8
    assert training_recipe("resnet50")["views"] == 1
    from lenscat.models import load_encoder

    path = session.execute(
        text("SELECT checkpoint_path FROM lenscat.model_versions WHERE name = 'recipe-enc'")
    ).scalar_one()
    loaded = load_encoder(path)[0]
    assert loaded.preprocessing.views == 8
    # the stored embedding: the pooled 128-d vector beside the stage-2 map's annuli (6 x 64 values)
    assert hp["readout"] == small["readout"] == "gap+annuli2" and training_recipe("resnet50")["readout"] == "gap"
    dim = session.execute(text("SELECT output_dim FROM lenscat.model_versions WHERE name = 'recipe-enc'")).scalar_one()
    assert dim == loaded.feature_dim == 128 + 6 * 64 == 512
    listed = CliRunner().invoke(cli, ["encoder", "list", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in map(json.loads, listed.stdout.splitlines()) if r["name"] == "recipe-enc")
    assert (row["crop"], row["views"], row["readout"], row["dim"]) == (48, 8, "gap+annuli2", 512)
    assert hp["batch_size"] == 16  # given on the command line: the recipe does not override it
    assert training_recipe("resnet50")["crop"] == 96 and training_recipe("resnet50", crop=64)["crop"] == 64
    assert training_recipe("resnet-small", warmup_steps=0)["warmup_steps"] == 0
    with pytest.raises(LenscatError, match="unknown architecture 'vit'"):
        training_recipe("vit")
    with pytest.raises(LenscatError, match="unknown training option"):
        training_recipe("resnet-small", momentum=0.9)


def test_deeper_encoder_with_the_annuli_readout_stores_512_d_vectors(session, tmp_path):
    """`encoder train --blocks 2` (readout gap+annuli2, the default) registers 512-d vectors and embeds
    them; `--readout gap` stores the pooled 128-d vector alone; resnet18 refuses the annuli."""
    import json

    from click.testing import CliRunner

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.cli import cli
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.embeddings.vectors import read_embeddings
    from lenscat.jobs.service import run_here
    from lenscat.registry.versions import get_model
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "ring.h5"
    write_stein_h5(h5, 30, seed=5)
    ingest_sources(h5, "ring-survey")
    res = CliRunner().invoke(
        cli,
        [
            "encoder",
            "train",
            "--name",
            "ring-enc",
            "--survey",
            "ring-survey",
            "--blocks",
            "2",
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["dim"] == 128 + 6 * 64
    hp = session.execute(text("SELECT hparams FROM lenscat.model_versions WHERE name = 'ring-enc'")).scalar_one()
    assert hp["blocks"] == [2, 2, 2, 2] and hp["readout"] == "gap+annuli2"
    model = get_model("encoder", "ring-enc", session=session)
    run_here(
        plan_embed_job(model.label, surveys=["ring-survey"], chunk_size=16, session=session).job_id,
        embed_chunk,
        session=session,
    )
    ids, vec = read_embeddings(model, session=session)
    assert vec.shape == (30, 512)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-3)
    bad = CliRunner().invoke(
        cli,
        [
            "encoder",
            "train",
            "--name",
            "x",
            "--survey",
            "ring-survey",
            "--arch",
            "resnet18",
            "--readout",
            "gap+annuli2",
        ],
    )
    assert bad.exit_code != 0 and "resnet-small only" in bad.output
    with pytest.raises(LenscatError, match="resnet-small only"):
        train_encoder("x", ["ring-survey"], arch="resnet18", readout="gap+annuli2", progress=False)
    pooled = CliRunner().invoke(
        cli,
        [
            "encoder",
            "train",
            "--name",
            "pooled-enc",
            "--survey",
            "ring-survey",
            "--readout",
            "gap",
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--json",
        ],
    )
    assert pooled.exit_code == 0, pooled.output
    assert json.loads(pooled.stdout.strip().splitlines()[-1])["dim"] == 128


def test_derive_registers_the_same_weights_with_another_views(session, tmp_path):
    """`encoder derive` makes a new version with another embedding rule and nothing retrained."""
    from click.testing import CliRunner

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.cli import cli
    from lenscat.embeddings.embed import embed_images
    from lenscat.embeddings.encoder_derive import derive_encoder
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.models import load_encoder
    from lenscat.registry.versions import get_model
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "derive.h5"
    write_stein_h5(h5, 24, seed=5)
    ingest_sources(h5, "derive-survey")
    src, _, _ = train_encoder("derive-enc", ["derive-survey"], batch_size=8, max_steps=1, crop=32, progress=False)
    assert src.input_spec["views"] == 8
    res = CliRunner().invoke(cli, ["encoder", "derive", "derive-enc", "--views", "1"])
    assert res.exit_code == 0, res.output
    assert "encoder derive-enc@2 registered: the weights of derive-enc@1" in res.output
    one = get_model("encoder", "derive-enc", session=session)
    assert (one.version, one.parent_model_id, one.input_spec["views"]) == (2, src.model_id, 1)
    assert one.training_set_sha256 == src.training_set_sha256 and one.hparams["derived_from"] == "derive-enc@1"
    assert one.checkpoint_sha256 != src.checkpoint_sha256
    assert src.checkpoint_path is not None and one.checkpoint_path is not None
    a, b = load_encoder(src.checkpoint_path)[0], load_encoder(one.checkpoint_path)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert (a.preprocessing.views, b.preprocessing.views) == (8, 1)
    images = np.random.default_rng(2).normal(0, 0.01, (3, 3, 152, 152)).astype(np.float32)
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(2, 3)))
    np.testing.assert_allclose(
        embed_images(src, turned, device="cpu"), embed_images(src, images, device="cpu"), atol=1e-5
    )  # 8 views: invariant; 1 view: not
    assert not np.allclose(embed_images(one, turned, device="cpu"), embed_images(one, images, device="cpu"), atol=1e-4)
    again = CliRunner().invoke(cli, ["encoder", "derive", "derive-enc@1", "--views", "1"])
    assert again.exit_code == 0 and "derive-enc@2 already registered" in again.output
    same = CliRunner().invoke(cli, ["encoder", "derive", "derive-enc@1", "--views", "8"])
    assert same.exit_code == 0 and "already has 8 view(s): nothing registered" in same.output
    # the readout: the recipe's 512-d vectors; derived with the pooled output alone, 128-d, the same
    # direction as the stored vector's first 128 values
    assert src.output_dim == 512 and src.hparams["readout"] == "gap+annuli2"
    pooled = CliRunner().invoke(cli, ["encoder", "derive", "derive-enc@1", "--readout", "gap", "--name", "derive-gap"])
    assert pooled.exit_code == 0, pooled.output
    assert "derive-gap@1 registered: the weights of derive-enc@1, 128-d embeddings with readout gap" in pooled.output
    gap = get_model("encoder", "derive-gap", session=session)
    assert (gap.output_dim, gap.hparams["readout"], gap.parent_model_id, gap.input_spec["views"]) == (
        128,
        "gap",
        src.model_id,
        8,
    )
    full, part = embed_images(src, images, device="cpu"), embed_images(gap, images, device="cpu")
    head = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(head, part, atol=1e-5)
    back = derive_encoder("derive-gap", readout="gap+annuli2", name="derive-back", session=session)[1]
    assert back.output_dim == 512
    np.testing.assert_allclose(embed_images(back, images, device="cpu"), full, atol=1e-6)
    with pytest.raises(LenscatError, match="nothing to derive"):
        derive_encoder("derive-enc@1", session=session)
    assert "give --views and/or --readout" in CliRunner().invoke(cli, ["encoder", "derive", "derive-enc"]).output
    _, other, created = derive_encoder("derive-enc@1", views=4, name="derive-enc-rot4", session=session)
    assert created and other.label == "derive-enc-rot4@1" and other.parent_model_id == src.model_id
    bad = CliRunner().invoke(cli, ["encoder", "derive", "derive-enc", "--views", "3"])
    assert bad.exit_code == 2 and "'3' is not one of" in bad.output
    missing = CliRunner().invoke(cli, ["encoder", "derive", "no-such-encoder", "--views", "8"])
    assert isinstance(missing.exception, LenscatError) and "no encoder 'no-such-encoder'" in str(missing.exception)
