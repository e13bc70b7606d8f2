"""pgvector storage: idempotent binary-COPY upserts, per-encoder HNSW indexes, ANN vs exact search."""

import numpy as np
import pytest
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.embeddings.vectors import (
    ensure_hnsw_index,
    get_embedding,
    hnsw_index_name,
    nearest,
    upsert_embeddings,
)
from lenscat.errors import LenscatError, NotFoundError
from lenscat.registry.versions import get_model, register_model


def _sources(session, n, survey="vec-test"):
    sv = ensure_survey(survey, ["g", "r", "z"], session=session)
    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-30, 30, n)
    ids = (
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'o' || i, r, d, ARRAY[21.0, 20.0, 19.5]::real[] "
                "FROM unnest(CAST(:ra AS float8[]), CAST(:dec AS float8[])) WITH ORDINALITY AS t(r, d, i) "
                "RETURNING source_id"
            ),
            {"sv": sv.survey_id, "ra": ra.tolist(), "dec": dec.tolist()},
        )
        .scalars()
        .all()
    )
    return np.array(sorted(ids), dtype=np.int64)


def _encoder(session, name="enc-test", dim=32, sha="a" * 64):
    m, _ = register_model(
        "encoder",
        name,
        architecture="resnet-small",
        output_dim=dim,
        checkpoint_path=None,
        checkpoint_sha256=sha,
        origin="trained",
        session=session,
    )
    return m


def test_register_model_versions_are_idempotent(session):
    a = _encoder(session, sha="1" * 64)
    again = _encoder(session, sha="1" * 64)
    b = _encoder(session, sha="2" * 64)
    assert a == again and (a.version, b.version) == (1, 2)
    assert get_model("encoder", "enc-test", session=session) == b
    assert get_model("encoder", "enc-test@1", session=session) == a
    with pytest.raises(NotFoundError, match="no encoder 'nope'"):
        get_model("encoder", "nope", session=session)
    with pytest.raises(LenscatError, match="invalid model name"):
        _encoder(session, name="bad name")


def test_upsert_twice_leaves_one_row_per_source(session):
    ids = _sources(session, 300)
    enc = _encoder(session)
    rng = np.random.default_rng(2)
    v = rng.normal(size=(300, 32)).astype(np.float32)
    assert upsert_embeddings(enc, ids, v, session=session) == 300
    v2 = rng.normal(size=(300, 32)).astype(np.float32)
    assert upsert_embeddings(enc, ids, v2, session=session) == 300
    n = session.execute(
        text("SELECT count(*), count(DISTINCT source_id) FROM lenscat.embeddings WHERE model_id = :m"),
        {"m": enc.model_id},
    ).one()
    assert tuple(n) == (300, 300)
    got = get_embedding(enc, int(ids[7]), session=session)
    want = v2[7] / np.linalg.norm(v2[7])
    assert got is not None and np.allclose(got, want, atol=2e-3)  # half precision
    with pytest.raises(LenscatError, match="makes 32-d vectors"):
        upsert_embeddings(enc, ids[:2], v[:2, :16], session=session)
    with pytest.raises(LenscatError, match="NaN"):
        upsert_embeddings(enc, ids[:2], np.full((2, 32), np.nan), session=session)


def test_hnsw_search_matches_exact_search_and_returns_k_rows(session):
    ids = _sources(session, 2000)
    enc = _encoder(session, dim=64)
    other = _encoder(session, name="enc-other", dim=16, sha="b" * 64)
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 64))
    v = (centres[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 64))).astype(np.float32)
    upsert_embeddings(enc, ids, v, session=session)
    upsert_embeddings(other, ids[:100], rng.normal(size=(100, 16)), session=session)
    assert ensure_hnsw_index(enc, session=session) is not None
    assert ensure_hnsw_index(enc, session=session) is None  # already there
    ensure_hnsw_index(other, session=session)
    plan = "\n".join(
        session.execute(
            text(
                f"EXPLAIN SELECT source_id FROM lenscat.embeddings e WHERE e.model_id = {enc.model_id} "
                "ORDER BY e.embedding::halfvec(64) <=> CAST(:q AS halfvec(64)) LIMIT 10"
            ),
            {"q": "[" + ",".join(["0.1"] * 64) + "]"},
        ).scalars()
    )
    assert hnsw_index_name(enc) in plan
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    q = unit[5]
    exact = ids[np.argsort(-(unit @ q), kind="stable")[:100]]
    got = nearest(enc, q, 100, session=session)
    assert len(got) == 100 and got[0][0] == ids[5] and got[0][1] == pytest.approx(1.0, abs=1e-3)
    recall = len(set(exact) & {g[0] for g in got}) / 100
    assert recall >= 0.9
    sims = [g[1] for g in got]
    assert sims == sorted(sims, reverse=True)
    # k beyond the default ef_search (40) and beyond 1,000-candidate HNSW lists still returns k rows
    assert len(nearest(enc, q, 1000, session=session)) == 1000
    # SQL-callable neighbours
    rows = session.execute(
        text("SELECT source_id, similarity FROM similar_sources(:s, 'enc-test', 10)"), {"s": int(ids[5])}
    ).all()
    assert len(rows) == 10 and int(ids[5]) not in {r[0] for r in rows}
    assert [r[0] for r in rows] == [g[0] for g in got[1:11]]
