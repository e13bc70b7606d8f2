#!/usr/bin/env python
"""Science benchmark: "more like this lens" enrichment on a simulated survey, through lenscat.

The CI science check (``tests/integration/test_science_similarity.py``) runs on 10^5 cutouts;
this script runs the same path on a survey of any size, because the figure depends on it: a
query's top 100 are a smaller and purer neighbourhood the more sources it competes with (Stein et
al.'s ~500x is the top 100 of ~10^7 DECaLS sources).

Steps, all with lenscat's library calls on its own embedded PostgreSQL in a temporary
``LENSCAT_HOME``: ``simulate_survey(n, lens_fraction, seed, stamp)`` (the command
``lenscat simulate survey``), ``ingest_sources``, ``train_encoder`` (MoCo-v2, the CI check's recipe:
``resnet-small``, 15 epochs on a random 3,000 cutouts, crop 48, batch 64, lr 0.2, queue 1,024,
temperature 0.1), every cutout embedded (the ``embed`` job's chunks, in-process), the HNSW index,
the truth imported as labels, and :func:`lenscat.embeddings.similarity_eval.lens_query_enrichment` (what
``lenscat encoder evaluate`` prints: every lens a query, +-0.5 mag window, 25 arcsec exclusion,
top 100). In the same run, on the same sources and filters:

* **exact search** (numpy, float64 cosine, the same window and exclusion) on the same embeddings:
  what the HNSW index gives up, if anything;
* **untrained encoder** (the same architecture and preprocessing with random weights, exact
  search): how much of the enrichment the training adds;
* **one view** (the same trained encoder embedding each cutout as it is, not averaged over the
  recipe's 8 turns and flips; exact search): what the orientation averaging adds;
* **pooled vector alone** (with the recipe's ``gap+annuli2`` readout: the stored vector's first
  128 values, the encoder's pooled output, without the stage-2 annuli; exact search): what the
  annuli add to the search, as ``--readout gap`` would have stored it;
* **perfect encoder**: every lens of the window ranked first (the ceiling of this survey).

``--stamp 96`` (default) renders 96x96 cutouts instead of 152x152: the encoder sees the central
48 pixels (plus jitter and rotation margin), the pixels rendered are the same, and a 10^5-cutout
survey takes 11 GB instead of 28 GB and about 6 min instead of 8 on 2 cores.

Usage::

    python bench/science_similarity.py [--n 100000] [--lens-fraction 0.01] [--seed 8080]
                                       [--stamp 96] [--queries N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import machine_info  # noqa: E402

K = 100
WINDOW = 0.5  # mag
EXCLUDE_ARCSEC = 25.0


def exact_enrichment(vecs, mag, ra, dec, is_lens, queries, dedupe):
    """Mean lens fraction of the exact top K (same filters as lenscat.similar) over the queries."""
    out = []
    for i in queries:
        ok = np.abs(mag - mag[i]) <= WINDOW
        ok[i] = False
        cand = np.flatnonzero(ok)
        order = cand[np.argsort(-(vecs[cand] @ vecs[i]), kind="stable")]
        head = order[: 4 * K + 50]  # the 25" exclusion drops a few; this is plenty
        kept = head[dedupe(ra[head], dec[head], EXCLUDE_ARCSEC / 3600, K, None)]
        out.append(is_lens[kept].mean() if len(kept) else 0.0)
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="cutouts in the survey")
    ap.add_argument("--lens-fraction", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=8080)
    ap.add_argument("--stamp", type=int, default=96, help="cutout side, pixels")
    ap.add_argument("--queries", type=int, default=None, help="use a random subset of the lenses as queries")
    ap.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="lenscat-bench-sci-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LENSCAT_HOME"] = str(work / "home")
    os.environ.pop("LENSCAT_DATABASE_URL", None)
    os.environ.pop("LENSCAT_BROKER_URL", None)

    import torch
    from sqlalchemy import text

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels, resolve_labels
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.session import session_scope
    from lenscat.embeddings.embed import embed_chunk, load_encoder_for, plan_embed_job
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.embeddings.similarity import _dedupe
    from lenscat.embeddings.similarity_eval import lens_query_enrichment
    from lenscat.embeddings.vectors import ensure_hnsw_index, read_embeddings
    from lenscat.jobs.service import run_here
    from lenscat.models import Encoder
    from lenscat.models.inference import encode
    from lenscat.simulate.survey import simulate_survey

    torch.set_num_threads(os.cpu_count() or 1)
    times: dict[str, float] = {}
    t = time.perf_counter()
    survey = work / "survey.h5"
    if not survey.exists():
        simulate_survey(args.n, args.lens_fraction, args.seed, survey, stamp=args.stamp, progress=True)
    times["simulate_s"] = time.perf_counter() - t
    ensure_schema()
    t = time.perf_counter()
    ingest_sources(survey, "bench-sci")
    with session_scope() as s:
        import_labels(survey, label_col="is_lens", survey="bench-sci", origin="simulation", session=s)
    times["ingest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model, _, metrics = train_encoder(
        "bench-sci-moco", ["bench-sci"], max_images=3000, seed=args.seed % 1000, progress=True
    )  # resnet-small's recipe (TRAINING_RECIPES)
    times["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with session_scope() as s:
        job = plan_embed_job(model.label, surveys=["bench-sci"], chunk_size=2000, session=s)
    with session_scope() as s:
        run_here(job.job_id, embed_chunk, session=s, progress=True, desc="embed")
    with session_scope() as s:
        ensure_hnsw_index(model, session=s)
    times["embed_and_index_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with session_scope() as s:
        ev = lens_query_enrichment(
            model,
            session=s,
            k=K,
            surveys=["bench-sci"],
            origins=["simulation"],
            max_queries=args.queries,
            progress=True,
        )
        rows = s.execute(
            text(
                "SELECT s.source_id, s.mag[2], s.ra, s.dec, s.objid "
                "FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                "WHERE v.name = 'bench-sci' ORDER BY s.source_id"
            )
        ).all()
        ids, stored = read_embeddings(model, session=s)
    times["lenscat_queries_s"] = time.perf_counter() - t
    sid = np.array([r[0] for r in rows])
    mag = np.array([r[1] for r in rows], float)
    ra, dec = np.array([r[2] for r in rows], float), np.array([r[3] for r in rows], float)
    with session_scope() as s:
        labels = resolve_labels(session=s, origins=["simulation"])
    truth = np.array([labels.get(int(i), 0) == 1 for i in sid])
    queries = np.flatnonzero(np.isin(sid, ev.queries["source_id"]))
    vec = stored[np.searchsorted(ids, sid)].astype(np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    t = time.perf_counter()
    exact = exact_enrichment(vec, mag, ra, dec, truth, queries, _dedupe) / truth.mean()
    times["exact_queries_s"] = time.perf_counter() - t
    # the untrained baseline: the same architecture and preprocessing, random weights
    import copy
    import dataclasses

    import h5py

    trained, _ = load_encoder_for(model, "cpu")
    untrained = copy.deepcopy(trained)  # the same architecture and preprocessing, fresh random weights
    torch.manual_seed(args.seed)
    for m in untrained.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    with h5py.File(survey) as fh:
        objid = fh["objid"][()].astype(str)
    order = {o: j for j, o in enumerate(objid)}
    rows_h5 = np.array([order[str(r[4])] for r in rows])

    def exact_for(encoder: Encoder, what: str) -> float:
        """Exact-search enrichment of every cutout embedded in-process by ``encoder``."""
        t = time.perf_counter()
        with h5py.File(survey) as fh:
            raw = np.concatenate([encode(encoder, fh["images"][lo : lo + 2000]) for lo in range(0, len(objid), 2000)])
        times[f"{what}_embed_s"] = time.perf_counter() - t
        rv = raw[rows_h5].astype(np.float64)
        rv /= np.maximum(np.linalg.norm(rv, axis=1, keepdims=True), 1e-12)
        return float(exact_enrichment(rv, mag, ra, dec, truth, queries, _dedupe) / truth.mean())

    untrained_enr = exact_for(untrained, "untrained")
    # the same trained encoder without orientation averaging: what the recipe's views add
    one_view = copy.deepcopy(trained)
    one_view.preprocessing = dataclasses.replace(trained.preprocessing, views=1)
    one_view_enr = exact_for(one_view, "one_view") if trained.preprocessing.views > 1 else exact
    # the pooled output alone: the readout's first output_dim values (unit-normalised in each view)
    readout = getattr(trained, "readout", "gap")
    pooled_enr = exact
    if readout != "gap":
        pooled = vec[:, : trained.output_dim].copy()
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        pooled_enr = exact_enrichment(pooled, mag, ra, dec, truth, queries, _dedupe) / truth.mean()

    result = {
        "machine": machine_info(with_torch=True),
        "n": args.n,
        "lens_fraction": args.lens_fraction,
        "seed": args.seed,
        "stamp": args.stamp,
        "n_sources": ev.n_sources,
        "n_lenses": ev.n_lenses,
        "n_queries": ev.filters["n_queries"],
        "k": K,
        "encoder": metrics,
        "enrichment_lenscat_hnsw": round(ev.enrichment, 2),
        "enrichment_exact": round(exact, 2),
        "enrichment_untrained": round(untrained_enr, 2),
        "views": trained.preprocessing.views,
        "enrichment_exact_one_view": round(one_view_enr, 2),
        "readout": readout,
        "enrichment_exact_pooled_only": round(pooled_enr, 2),
        "ceiling": round(ev.ceiling, 1),
        "times_s": {k: round(v, 1) for k, v in times.items()},
    }
    print(json.dumps(result, indent=1))
    print(
        f'\nenrichment in the top {K} (+-{WINDOW} mag, {EXCLUDE_ARCSEC:.0f}" exclusion), {ev.n_sources} sources, '
        f"{ev.n_lenses} lenses: lenscat (HNSW) {ev.enrichment:.2f}x, exact search {exact:.2f}x, "
        f"the same encoder with one view instead of {trained.preprocessing.views} {one_view_enr:.2f}x, "
        f"its pooled {trained.output_dim}-d output alone {pooled_enr:.2f}x (readout {readout}), "
        f"untrained encoder {untrained_enr:.2f}x, perfect encoder {ev.ceiling:.1f}x; "
        f"goal >= 10x: {'met' if ev.enrichment >= 10 else 'NOT met'}"
    )
    from lenscat.db.server import stop_embedded

    stop_embedded()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
