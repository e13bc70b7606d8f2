"""lenscat.lens_models: idempotent store, the latest version's read, the view's derived columns."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import text

from lenscat.errors import LenscatError
from lenscat.modelling.service import count_lens_models, lens_model_for, lens_models_of, store_lens_models
from lenscat.modelling.types import LensModel
from lenscat.registry.versions import register_model


def _model(sid: int, theta: float, *, e1: float = 0.1, e2: float = 0.0, flags: tuple[str, ...] = ()) -> LensModel:
    return LensModel(
        model_id=0,
        source_id=sid,
        theta_e=theta,
        theta_e_err=0.05,
        e1=e1,
        e1_err=0.02,
        e2=e2,
        e2_err=0.02,
        gamma1=0.0,
        gamma1_err=0.01,
        gamma2=0.05,
        gamma2_err=0.01,
        center_x=0.1,
        center_x_err=0.03,
        center_y=-0.2,
        center_y_err=0.03,
        source_x=0.05,
        source_x_err=0.04,
        source_y=0.02,
        source_y_err=0.04,
        arc_mag=22.5,
        arc_band="g",
        vet_flags=flags,
        vet_detail={"theta_e_min": 0.6, "why": 'it\'s "quoted"\ttab'},
    )


def _version(name: str, sha: str, session) -> int:
    mv, _ = register_model(
        "lensmodel",
        name,
        architecture="lensmodel-cnn",
        output_dim=18,
        checkpoint_path=None,
        checkpoint_sha256=sha,
        origin="trained",
        session=session,
    )
    return mv.model_id


def test_store_is_idempotent_and_reads_back(session):
    mid = _version("lm-test", "a" * 64, session)
    rows = [_model(101, 1.2), _model(102, 0.8, flags=("theta_e_small",))]
    assert store_lens_models(rows, model_id=mid, job_id=None, session=session) == 2
    # the same values again change nothing; a new value replaces the row
    assert store_lens_models(rows, model_id=mid, job_id=None, session=session) == 0
    assert store_lens_models([_model(101, 1.3)], model_id=mid, job_id=7, session=session) == 1
    assert count_lens_models(mid, session=session) == 2
    got = lens_model_for(101, session=session)
    assert got is not None
    assert got.model_id == mid and got.lens_model == "lm-test@1" and got.job_id == 7
    assert got.theta_e == pytest.approx(1.3) and got.center_y == pytest.approx(-0.2)
    assert got.arc_band == "g" and got.arc_mag == pytest.approx(22.5)
    assert got.vet_detail["why"] == 'it\'s "quoted"\ttab' and got.passed_vetting
    flagged = lens_model_for(102, session=session)
    assert flagged is not None and flagged.vet_flags == ("theta_e_small",) and not flagged.passed_vetting
    assert lens_model_for(999, session=session) is None
    top = lens_models_of(mid, top=1, session=session)
    assert [m.source_id for m in top] == [101]
    assert [m.source_id for m in lens_models_of(mid, source_ids=[102, 101], session=session)] == [101, 102]


def test_latest_version_wins_and_view_derives_q_and_pa(session):
    old = _version("lm-a", "b" * 64, session)
    new = _version("lm-b", "c" * 64, session)
    # e = 0.2 along phi = 45 deg from East towards North: q = 0.8/1.2, PA = 45 deg East of North
    e = 0.2
    store_lens_models([_model(5, 1.0)], model_id=old, job_id=None, session=session)
    store_lens_models([_model(5, 2.0, e1=0.0, e2=e)], model_id=new, job_id=None, session=session)
    got = lens_model_for(5, session=session)
    assert got is not None and got.model_id == new and got.theta_e == pytest.approx(2.0)
    older = lens_model_for(5, session=session, model_id=old)
    assert older is not None and older.theta_e == pytest.approx(1.0)
    v = session.execute(
        text("SELECT q, pa_deg, gamma_ext, gamma_pa_deg, passed_vetting FROM public.lens_models WHERE model_id = :m"),
        {"m": new},
    ).one()
    assert v.q == pytest.approx(0.8 / 1.2, rel=1e-5) and got.q == pytest.approx(v.q, rel=1e-5)
    assert v.pa_deg == pytest.approx(45.0, abs=1e-3) and got.pa_deg == pytest.approx(v.pa_deg, abs=1e-3)
    # shear (0, 0.05): phi_gamma = 45 deg from East, PA 45 deg East of North
    assert v.gamma_ext == pytest.approx(0.05) and v.gamma_pa_deg == pytest.approx(got.gamma_pa_deg, abs=1e-3)
    assert v.passed_vetting


def test_store_rejects_non_finite(session):
    mid = _version("lm-bad", "d" * 64, session)
    bad = _model(1, math.nan)
    with pytest.raises(LenscatError, match="finite"):
        store_lens_models([bad], model_id=mid, job_id=None, session=session)
