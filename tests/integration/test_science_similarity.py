"""Science check (Stein et al. 2022, use case 1): "more like this lens" finds lenses.

A survey is simulated with a fixed seed (SEED, the one docs/benchmarks.md records 17.1x for;
``LENSCAT_SCIENCE_SEED=<n>`` picks another, ``LENSCAT_SCIENCE_SEED=random`` a new one, printed so a
failure can be reproduced), ingested, an encoder
is pre-trained self-supervised on a random subset of its cutouts (no labels), every cutout is
embedded, and each lens is used as a query with lenscat's default filters (+-0.5 mag window,
25 arcsec exclusion).

The issue's goal, asserted here: >= 10x the survey's base rate among the top-100 neighbours. The
figure is a property of the survey's size as much as of the encoder (a query's top 100 is a purer
neighbourhood the more sources it competes with; about 1.2x per doubling, see docs/benchmarks.md):
the encoder that trains in CI's budget (15 epochs of MoCo-v2 on 3,000 cutouts, under a minute to
two on 2 CPU cores) reaches 5-7x on 10,000 cutouts and 12-16x on 10^5. So the survey has 10^5
cutouts with 1 % lenses (1,000 queries; a perfect encoder reaches about 99x under the same filters,
which the test computes and prints). They are rendered at 96x96 pixels instead of the survey
default of 152x152: the encoder sees the central 48 pixels plus jitter and rotation margin, the
pixels it sees are the same, and the file takes 11 GB instead of 28 GB (deleted at the end) and
4-8 minutes instead of 8-13 to simulate. The whole test takes 7-13 minutes; it prints the time
of each step.
The enrichment is `lens_query_enrichment`'s (`lenscat encoder evaluate`), over every lens; on a
random subset of the queries the test repeats the search itself and checks that figure against an
exact numpy search with the same filters, and the perfect-encoder ceiling from the truth table.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import text

from tests.integration.science_seed import science_seed

pytestmark = pytest.mark.slow

N = 100_000
STAMP = 96  # pixels
LENS_FRACTION = 0.01
TRAIN_IMAGES = 3000
K = 100
REFERENCE_QUERIES = 150  # lenses whose figures are recomputed independently
SEED = 680959940  # measured 17.1x on 2026-12-07 (docs/benchmarks.md)
MIN_ENRICHMENT = 10.0  # the goal; measured 10.5-14.7x on 10^5 cutouts, 16.1x with the stage-2 readout


def test_lens_queries_find_lenses(session, survey_path):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.embeddings.similarity import _dedupe, query_from_source, similar
    from lenscat.embeddings.similarity_eval import lens_query_enrichment
    from lenscat.embeddings.vectors import ensure_hnsw_index, read_embeddings
    from lenscat.jobs.service import run_here
    from lenscat.simulate.survey import simulate_survey
    from lenscat.simulate.survey_file import read_truth

    seed = science_seed(SEED)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t0
        times[step] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()

    path = survey_path
    simulate_survey(N, LENS_FRACTION, seed, path, stamp=STAMP, progress=False)
    lap("simulate")
    truth = read_truth(path)
    ingest_sources(path, "science")
    lap("ingest")
    # resnet-small's recipe (TRAINING_RECIPES): 15 epochs, batch 64, lr 0.2, queue 1,024, crop 48, ...
    model, _, metrics = train_encoder(
        "science-moco", ["science"], max_images=TRAIN_IMAGES, seed=seed % 1000, progress=False
    )
    lap("train")
    job = plan_embed_job(model.label, surveys=["science"], chunk_size=1000, session=session)
    run_here(job.job_id, embed_chunk, session=session)
    ensure_hnsw_index(model, session=session)
    lap("embed + index")

    # every lens a query, through the HNSW index (Stein's +-0.5 mag window, 25" exclusion)
    import_labels(path, label_col="is_lens", survey="science", origin="simulation", session=session)
    ev = lens_query_enrichment(model, session=session, k=K, surveys=["science"], origins=["simulation"], progress=False)
    lap("lens queries")

    ids = dict(session.execute(text("SELECT objid, source_id FROM sources WHERE survey = 'science'")).all())
    is_lens = {ids[str(o)]: bool(t) for o, t in zip(truth["objid"], truth["is_lens"], strict=True)}
    lens_ids = [s for s, lens in is_lens.items() if lens]
    base_rate = len(lens_ids) / len(is_lens)
    assert ev.n_lenses == len(lens_ids) and ev.n_sources == len(is_lens)
    assert ev.filters["n_queries"] == ev.n_lenses
    assert ev.base_rate == pytest.approx(base_rate, rel=1e-12)
    assert sorted(int(s) for s in ev.queries["source_id"]) == sorted(lens_ids)

    # the reference: every embedded source with its r magnitude, position and vector
    rows = session.execute(
        text("SELECT s.source_id, s.mag_r, s.ra, s.dec FROM public.sources s WHERE s.survey = 'science'")
    ).all()
    all_ids = np.array([r[0] for r in rows])
    mag_r = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=float)
    ra, dec = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    stored_ids, stored = read_embeddings(model, session=session)
    assert np.array_equal(np.sort(all_ids), stored_ids)  # every cutout embedded
    vecs = stored[np.searchsorted(stored_ids, all_ids)].astype(np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    lens_arr = np.array([is_lens[int(i)] for i in all_ids])
    per_query = {int(r["source_id"]): r for r in ev.queries}
    recalls = []
    for sid in np.random.default_rng(seed).choice(lens_ids, REFERENCE_QUERIES, replace=False):
        q = query_from_source(int(sid), model, session=session)
        res = similar(q, encoder=model, k=K, session=session)
        # a bright or faint lens can have fewer than K sources in its +-0.5 mag window: expect what an
        # exact search with the same filters keeps
        ok = (np.abs(mag_r - q.mag) <= 0.5) & (all_ids != sid)
        order = np.flatnonzero(ok)[np.argsort(-(vecs[ok] @ vecs[all_ids == sid][0]))]
        exact = order[_dedupe(ra[order], dec[order], 25 / 3600, K, q.coord)]
        assert len(res) == len(exact), (sid, q.mag, int(ok.sum()))
        recalls.append(len(set(all_ids[exact]) & {int(s) for s in res["source_id"]}) / max(len(exact), 1))
        row = per_query[int(sid)]
        assert row["n_results"] == len(res)
        assert row["lens_fraction"] == pytest.approx(np.mean([is_lens[int(s)] for s in res["source_id"]]))
        # the ceiling: a perfect encoder ranks every lens of the window first
        lens_first = np.flatnonzero(ok)[np.argsort(~lens_arr[ok], kind="stable")]
        best = _dedupe(ra[lens_first], dec[lens_first], 25 / 3600, K, q.coord)
        assert row["ceiling_fraction"] == pytest.approx(np.mean(lens_arr[lens_first[best]]))
    lap("reference")
    print(
        f"lens fraction in the top {K}: {ev.lens_fraction:.3f} vs base rate {base_rate:.3f}: "
        f"enrichment {ev.enrichment:.1f}x (a perfect encoder: {ev.ceiling:.1f}x with these filters); "
        f"HNSW recall against exact search {np.mean(recalls):.3f} over {REFERENCE_QUERIES} queries; "
        f"seconds {times}; encoder {metrics}"
    )
    assert np.mean(recalls) >= 0.9
    assert ev.enrichment <= ev.ceiling + 1e-9
    assert ev.enrichment >= MIN_ENRICHMENT
