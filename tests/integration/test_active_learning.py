"""The active-learning loop on real PostgreSQL: a simulated expert grades every proposed batch.

The world: 2,400 sources with synthetic embeddings in which 40 lenses sit off to one side (the
helpers of test_classifier), three of them known beforehand (an imported list: the seed labels).
The expert grades from the truth through :func:`lenscat.grading.grades.record_grades`, as the web app does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from sqlalchemy import text

from lenscat.classifiers.labels import import_labels
from lenscat.classifiers.loaders import score_function
from lenscat.cli.common import error_message
from lenscat.embeddings.vectors import read_embeddings, upsert_embeddings
from lenscat.errors import LenscatError, NotFoundError
from lenscat.grading.accounts import add_grader
from lenscat.grading.grades import GradeInput, record_grades
from lenscat.learning.active import advance, propose_next, uncertainty
from lenscat.learning.campaigns import create_campaign, current_loop, get_campaign, list_campaigns, refresh_loop
from lenscat.learning.tables import loops_table
from lenscat.learning.types import CampaignExhausted
from lenscat.registry.versions import get_model, register_model
from tests.integration.test_classifier import _sources, _vectors

N, N_LENS, N_SEED = 2400, 40, 3


def _world(session, tmp_path, *, seeds=N_SEED, seed=0):
    ids, _, _ = _sources(session, "al-sim", N, seed)
    rng = np.random.default_rng(seed + 1)
    lens = np.zeros(N, bool)
    lens[rng.choice(N, N_LENS, replace=False)] = True
    enc, _ = register_model(
        "encoder",
        "al-enc",
        architecture="external",
        output_dim=32,
        checkpoint_path=None,
        checkpoint_sha256="a" * 64,
        origin="external",
        session=session,
    )
    upsert_embeddings(enc, ids, _vectors(N, lens, seed), session=session)
    lens_ids = ids[lens]
    seed_ids = rng.choice(lens_ids, seeds, replace=False) if seeds else lens_ids[:0]
    if seeds:
        known = tmp_path / "known.ecsv"
        objid = {int(s): f"o{i + 1}" for i, s in enumerate(ids)}
        Table({"objid": [objid[int(s)] for s in seed_ids], "lens": np.ones(seeds, int)}).write(known)
        assert import_labels(known, label_col="lens", survey="al-sim", session=session).n_positive == seeds
    grader, _ = add_grader("expert", token=True, session=session)
    return enc, set(lens_ids.tolist()), set(seed_ids.tolist()), grader


def _grade(grader, loop, lenses, session, skip=(), sources=None):
    """The simulated expert: A for a lens, N otherwise, S for the sources in ``skip``."""
    grades = [
        GradeInput(s, "S" if s in skip else ("A" if s in lenses else "N"))
        for s in (loop.batch if sources is None else sources)
    ]
    return record_grades(grader, grades, sample=loop.sample, loop_id=loop.loop_id, session=session)


def test_the_loop_finds_lenses_far_faster_than_random_and_records_every_loop(session, tmp_path):
    enc, lenses, seeds, grader = _world(session, tmp_path)
    camp = create_campaign(
        "hunt", "al-enc", batch_size=40, settings={"seed_origins": ["import"], "ratio": 50}, session=session
    )
    assert camp.encoder == "al-enc@1" and camp.settings["seed_origins"] == ["import"]
    found, proposed, loops = 0, [], []
    for _ in range(5):
        loop = advance(camp, session=session)
        assert loop is not None and not loop.completed and loop.model is not None
        proposed += loop.batch
        _grade(grader, loop, lenses, session)
        loop = refresh_loop(loop.loop_id, session=session)
        assert loop.completed and loop.n_inspected == loop.n_graded == 40
        assert loop.n_found == len(lenses & set(loop.batch))
        found += loop.n_found
        loops.append(loop)
    # 200 of 2,397 unlabelled images inspected: at random that finds 200 * 37 / 2397 = 3.1 lenses
    expected_random = 200 * (N_LENS - N_SEED) / (N - N_SEED)
    assert found >= 6 * expected_random, f"found {found} lenses in 200 images"
    # never a source twice, never a seed-labelled lens
    assert len(proposed) == len(set(proposed)) == 200 and not set(proposed) & seeds
    # each loop: its own classifier version, trained on the seeds plus every lens found so far
    assert [lp.model for lp in loops] == [f"al-hunt@{i}" for i in range(1, 6)]
    cum = np.cumsum([0] + [lp.n_found for lp in loops[:-1]])
    assert [lp.n_positive for lp in loops] == [N_SEED + int(c) for c in cum]
    for i, lp in enumerate(loops):  # every graded non-lens joins the random negatives
        lab = lp.detail["labels"]
        assert lab["human_negative"] == 40 * i - int(cum[i]) and lab["seed_positive"] == N_SEED
        assert lp.n_negative == lab["human_negative"] + lab["random_negative"] and lab["random_negative"] > 0
    assert len({lp.labels_sha256 for lp in loops}) == 5
    for lp in loops:
        assert lp.model_id is not None
        model = get_model("classifier", lp.model_id, session=session)
        assert model.parent_model_id == enc.model_id and model.hparams["labels_sha256"] == lp.labels_sha256
        assert model.hparams["origins"] == ["human", "import"] and model.training_set_sha256
        assert lp.scores is not None and lp.scores == sorted(lp.scores, reverse=True)
        assert {"train", "score", "total"} <= set(lp.detail["seconds"]) and not lp.detail["random"]
    grades_loop = session.execute(text("SELECT DISTINCT loop_id, sample FROM public.grades ORDER BY 1")).all()
    assert [(r.loop_id, r.sample) for r in grades_loop] == [(lp.loop_id, f"loop:hunt/{lp.loop_no}") for lp in loops]
    tab = loops_table("hunt", session=session)
    assert list(tab["loop_no"]) == [1, 2, 3, 4, 5] and list(tab["cumulative_found"])[-1] == found
    assert list(tab["model"]) == [lp.model for lp in loops] and list(tab["batch_size"]) == [40] * 5
    listed = {r["name"]: r for r in list_campaigns(session=session)}
    assert listed["hunt"]["n_found"] == found and listed["hunt"]["n_loops"] == 5


def test_an_incomplete_loop_is_returned_again_and_skips_count_as_inspected(session, tmp_path):
    _, lenses, _, grader = _world(session, tmp_path, seeds=0)
    camp = create_campaign("cold", "al-enc", batch_size=30, session=session)
    assert advance(camp, session=session) is not None  # no loop yet: the first is proposed
    first = current_loop(camp, session=session)
    assert first is not None and first.loop_no == 1
    # no lens label anywhere: a random batch, said so
    assert first.random and first.model is None and first.scores is None and first.detail["random"]
    assert "no lens labels yet" in first.detail["reason"] and first.n_positive == first.n_negative == 0
    again = propose_next(camp, session=session)
    assert again.loop_id == first.loop_id and advance(camp, session=session) is None
    assert session.execute(text("SELECT count(*) FROM lenscat.al_loops")).scalar() == 1
    # part of the batch graded: still incomplete
    _grade(grader, first, lenses, session, skip=set(first.batch[:5]), sources=first.batch[:20])
    lp = refresh_loop(first.loop_id, session=session)
    assert (lp.n_inspected, lp.n_graded, lp.completed) == (20, 15, False)
    assert propose_next(camp, session=session).loop_id == first.loop_id
    # the rest, one skipped: complete (a skip is an inspection) but not graded
    _grade(grader, first, lenses, session, skip=set(first.batch[:5]) | {first.batch[-1]})
    lp = refresh_loop(first.loop_id, session=session)
    assert (lp.n_inspected, lp.n_graded, lp.completed) == (30, 24, True) and lp.completed_at is not None
    nxt = advance(camp, session=session)
    assert nxt is not None and nxt.loop_no == 2 and not set(nxt.batch) & set(first.batch)
    lens_found = len(lenses & set(first.batch[5:-1]))
    assert nxt.random == (lens_found == 0) and nxt.n_positive == lens_found


def test_uncertainty_sampling_proposes_the_scores_nearest_the_boundary(session, tmp_path):
    enc, lenses, seeds, grader = _world(session, tmp_path, seeds=6)
    camp = create_campaign(
        "edge",
        "al-enc",
        batch_size=25,
        strategy="uncertainty",
        settings={"seed_origins": ["import"], "ratio": 20},
        session=session,
    )
    loop = propose_next(camp, session=session, seed=3)
    assert loop.model == "al-edge@1" and loop.n_positive == 6 and loop.scores is not None
    # the boundary: where the odds equal the training set's lens:non-lens ratio (a balanced classifier's 0.5)
    boundary = loop.detail["boundary"]
    assert boundary == pytest.approx(6 / (6 + loop.n_negative))
    dist = uncertainty(np.array(loop.scores), boundary)
    assert np.all(np.diff(dist) >= 0)  # nearest the boundary first
    ids, vec = read_embeddings(enc, session=session)
    assert loop.model_id is not None
    sc = score_function(get_model("classifier", loop.model_id, session=session))(vec)
    others = ~np.isin(ids, loop.batch) & ~np.isin(ids, list(seeds))
    assert dist.max() <= uncertainty(sc[others], boundary).min() + 1e-6
    # not the top of the ranking: sources on both sides of the boundary
    assert min(loop.scores) < boundary < max(loop.scores)
    top = np.sort(sc[others | np.isin(ids, loop.batch)])[::-1][:25]
    assert sorted(loop.scores, reverse=True) != pytest.approx(top.tolist())
    _grade(grader, loop, lenses, session)
    loop2 = advance(camp, session=session, seed=3)
    assert loop2 is not None and loop2.model == "al-edge@2" and not set(loop2.batch) & set(loop.batch)
    assert loop2.n_negative > loop.n_negative


def test_campaigns_are_idempotent_on_name_and_errors_are_clear(session, tmp_path):
    _world(session, tmp_path, seeds=0)
    a = create_campaign("same", "al-enc", batch_size=10, settings={"ratio": 30}, session=session)
    b = create_campaign("same", "al-enc", batch_size=10, settings={"ratio": 30.0}, session=session)
    assert a.campaign_id == b.campaign_id and get_campaign("same", session=session).settings["ratio"] == 30
    with pytest.raises(LenscatError, match=r"already exists with batch size 10 \(asked: 20\)"):
        create_campaign("same", "al-enc", batch_size=20, settings={"ratio": 30}, session=session)
    with pytest.raises(LenscatError, match=r"settings ratio=30.0 \(asked: 40.0\)"):
        create_campaign("same", "al-enc", batch_size=10, settings={"ratio": 40}, session=session)
    with pytest.raises(LenscatError, match="unknown seed label origin"):
        create_campaign("x", "al-enc", settings={"seed_origins": ["human"]}, session=session)
    with pytest.raises(LenscatError, match="unknown campaign setting"):
        create_campaign("x", "al-enc", settings={"ratoi": 3}, session=session)
    with pytest.raises(LenscatError, match="unknown strategy"):
        create_campaign("x", "al-enc", strategy="greedy", session=session)
    with pytest.raises(NotFoundError, match="no active-learning campaign 'nope'"):
        get_campaign("nope", session=session)
    with pytest.raises(NotFoundError, match="no encoder 'missing'"):
        create_campaign("y", "missing", session=session)
    # an encoder without embeddings, and a campaign that has inspected everything
    register_model(
        "encoder",
        "empty-enc",
        architecture="external",
        output_dim=8,
        checkpoint_path=None,
        checkpoint_sha256="e" * 64,
        origin="external",
        session=session,
    )
    with pytest.raises(LenscatError, match="has no embeddings: embed the sources with encoder empty-enc") as empty:
        propose_next(create_campaign("e", "empty-enc", session=session), session=session)
    assert error_message(empty.value).endswith("has no embeddings: run `lenscat embed --encoder empty-enc`")
    tiny, _ = register_model(
        "encoder",
        "tiny-enc",
        architecture="external",
        output_dim=32,
        checkpoint_path=None,
        checkpoint_sha256="f" * 64,
        origin="external",
        session=session,
    )
    few = session.execute(text("SELECT source_id FROM lenscat.sources ORDER BY source_id LIMIT 4")).scalars().all()
    upsert_embeddings(tiny, np.array(few), np.random.default_rng(0).normal(size=(4, 32)), session=session)
    camp = create_campaign("all", "tiny-enc", batch_size=10, session=session)
    loop = propose_next(camp, session=session)
    assert sorted(loop.batch) == sorted(few)
    grader, _ = add_grader("g2", token=True, session=session)
    record_grades(grader, [GradeInput(s, "N") for s in few], session=session)  # graded outside the loop
    assert refresh_loop(loop.loop_id, session=session).completed
    with pytest.raises(CampaignExhausted, match="nothing left to propose"):
        propose_next(camp, session=session)
    assert advance(camp, session=session) is None


def test_learn_commands_from_the_cli(session, tmp_path, monkeypatch, capsys):
    from tests.integration.test_cli import run

    _, lenses, _, grader = _world(session, tmp_path)
    code, out, err = run(
        monkeypatch,
        capsys,
        "learn",
        "start",
        "cli",
        "--encoder",
        "al-enc",
        "--batch",
        "30",
        "--seed-labels",
        "import",
        "--ratio",
        "40",
    )
    assert code == 0, err
    assert "campaign cli: loop 1, 30 sources to grade, ranked by al-cli@1 trained on 3 lenses" in out
    code, out, err = run(
        monkeypatch,
        capsys,
        "learn",
        "start",
        "cli",
        "--encoder",
        "al-enc",
        "--batch",
        "30",
        "--seed-labels",
        "import",
        "--ratio",
        "40",
    )
    assert code == 0 and "loop 1" in out  # same options: the current loop again
    code, _, err = run(monkeypatch, capsys, "learn", "start", "cli", "--encoder", "al-enc", "--batch", "50")
    assert code == 2 and "already exists with batch size 30 (asked: 50)" in err
    code, out, err = run(monkeypatch, capsys, "learn", "batch", "cli", "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "rank,source_id,survey,objid,ra,dec,score,graded,consensus_grade"
    rows = out.splitlines()[1:]
    assert len(rows) == 30 and all(r.split(",")[7] == "False" for r in rows) and "--sample loop:cli/1" in err
    code, _, err = run(monkeypatch, capsys, "learn", "next", "cli")
    assert code == 2 and "loop 1 of campaign 'cli' is not complete: 0 of 30 sources inspected" in err
    loop = current_loop("cli", session=session)
    assert loop is not None
    _grade(grader, loop, lenses, session)
    loop = refresh_loop(loop.loop_id, session=session)
    assert loop.completed and loop.n_found == len(lenses & set(loop.batch))
    code, out, err = run(monkeypatch, capsys, "learn", "batch", "cli", "--format", "json")
    assert code == 0 and all(json.loads(r)["graded"] for r in out.splitlines())
    code, out, err = run(monkeypatch, capsys, "learn", "next", "cli")
    assert code == 0, err
    assert "loop 2, 30 sources to grade, ranked by al-cli@2" in out
    assert f"loop 1: {loop.n_found} lenses found among 30 graded sources" in err
    code, out, _ = run(monkeypatch, capsys, "learn", "status", "cli", "--format", "json")
    status = [json.loads(r) for r in out.splitlines()]
    assert [r["loop_no"] for r in status] == [1, 2] and status[0]["n_found"] == loop.n_found
    assert status[0]["model"] == "al-cli@1" and status[1]["n_positive"] == 3 + loop.n_found
    code, out, _ = run(monkeypatch, capsys, "learn", "status", "cli")
    assert code == 0 and "cumulative_found" in out and "(2 rows)" in out
    code, out, _ = run(monkeypatch, capsys, "learn", "batch", "cli", "--loop", "1", "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 31
    code, out, _ = run(monkeypatch, capsys, "learn", "list", "--format", "json")
    assert json.loads(out.splitlines()[0])["n_loops"] == 2
    code, _, err = run(monkeypatch, capsys, "learn", "status", "nope")
    assert code == 2 and "no active-learning campaign 'nope'" in err
