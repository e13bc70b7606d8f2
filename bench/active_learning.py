#!/usr/bin/env python
"""Benchmark: the active-learning loop against random inspection and a classifier trained once.

A simulated survey with its truth (``lenscat simulate survey``: lenstronomy SIE+shear lenses and
designed impostors; default 10^4 cutouts, 1 % lenses) is ingested into a fresh embedded
PostgreSQL; a self-supervised encoder (MoCo-v2, ``resnet-small``, the recipe of the science
checks) is trained on part of its cutouts without labels and every cutout is embedded. A few
lenses (``--seed-lenses``) are "known" beforehand: they are imported as labels (origin
``import``), as a list from an earlier search would be. Then, per trial (a different set of known
lenses and seed each time), with the same labels:

(a) active learning: :func:`lenscat.learning.active.advance` proposes a batch (``--batch``), a
    simulated expert grades it from the truth (A for a lens, N otherwise) with
    :func:`lenscat.grading.grades.record_grades`, and the loop repeats: the linear probe retrains on the
    seed lenses + every human grade + random survey negatives and proposes the best-scored
    ungraded sources (strategy ``top``; ``uncertainty`` too with ``--strategies``);
(b) random inspection: the expected number of images to find k of the L unknown lenses among the M
    unlabelled sources in random order, k (M + 1) / (L + 1), with the 10-90 % range of 2,000
    random orders;
(c) a single classifier trained once on the initial labels (the same recipe: the campaign's loop-1
    model) and inspected in score order, in batches of the same size.

Reported: loops and images inspected to find 50 % and 90 % of the lenses that were not known,
lenses found after 500 / 1,000 / 2,000 images, and seconds per loop. Each trial runs in its own
transaction, rolled back at the end, so trials do not see each other's grades.

Usage::

    python bench/active_learning.py [--n 10000] [--survey-file sim.h5] [--home DIR] [--trials 3]
                                     [--strategies top,uncertainty] [--embeddings images|synthetic]

``--home DIR`` keeps the database, encoder and embeddings there, so a second run skips the
simulation, training and embedding; by default a temporary ``LENSCAT_HOME`` is used and removed.
``--embeddings synthetic`` replaces the image pipeline by Gaussian-mixture vectors with the lenses
displaced along one direction (seconds; a check of the machinery, not of the science).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import format_table, loadavg, machine_info, own_embedded_home, ratio
from tqdm import tqdm

SURVEY = "albench"
ENCODER = "albench-moco"


# ------------------------------------------------------------------------------------ the world
def build_world(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Simulate (or reuse) the survey, ingest it, train the encoder, embed every cutout."""
    from sqlalchemy import text

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.db.session import session_scope
    from lenscat.io.readers import read_table
    from lenscat.registry.versions import get_model

    t: dict[str, float] = {}
    path = Path(args.survey_file) if args.survey_file else work / f"survey_{args.n}_{args.sim_seed}.h5"
    if not path.exists():
        from lenscat.simulate.survey import simulate_survey

        t0 = time.perf_counter()
        simulate_survey(args.n, args.lens_fraction, args.sim_seed, path, progress=True)
        t["simulate_s"] = time.perf_counter() - t0
        print(f"simulated {args.n} cutouts in {t['simulate_s']:.0f} s -> {path}", flush=True)
    truth = read_table(path)
    objid = np.asarray(truth.columns["objid"]).astype(str)
    is_lens = np.asarray(truth.columns["is_lens"]).astype(bool)
    kind = np.asarray(truth.columns["kind"]).astype(str) if "kind" in truth.columns else np.full(len(objid), "?")
    t0 = time.perf_counter()
    ingest_sources(path, SURVEY, progress=False)
    t["ingest_s"] = time.perf_counter() - t0
    with session_scope() as s:
        sv = s.execute(text("SELECT survey_id FROM lenscat.surveys WHERE name = :n"), {"n": SURVEY}).scalar_one()
        rows = s.execute(text("SELECT objid, source_id FROM lenscat.sources WHERE survey_id = :s"), {"s": sv}).all()
    by_obj = {str(r.objid): int(r.source_id) for r in rows}
    ids = np.array([by_obj[o] for o in objid], dtype=np.int64)
    enc_info: dict[str, Any] = {}
    if args.embeddings == "synthetic":
        enc_label = synthetic_embeddings(ids, is_lens, args)
        enc_info = {"encoder": enc_label, "what": "synthetic Gaussian-mixture vectors, lenses displaced"}
    else:
        enc_label, enc_info = image_embeddings(args, t)
    with session_scope() as s:
        enc = get_model("encoder", enc_label, session=s)
        n_emb = s.execute(
            text("SELECT count(*) FROM lenscat.embeddings WHERE model_id = :m"), {"m": enc.model_id}
        ).scalar_one()
    if n_emb != len(ids):
        raise SystemExit(f"{enc_label}: {n_emb} embeddings for {len(ids)} sources")
    return {
        "path": str(path),
        "ids": ids,
        "is_lens": is_lens,
        "kind": kind,
        "objid": objid,
        "encoder": enc.label,
        "dim": enc.output_dim,
        "timings": t,
        "encoder_info": enc_info,
    }


def image_embeddings(args: argparse.Namespace, t: dict[str, float]) -> tuple[str, dict[str, Any]]:
    """MoCo-v2 encoder on the survey's cutouts (skipped when it exists), every cutout embedded."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.errors import NotFoundError
    from lenscat.jobs.service import run_here
    from lenscat.registry.versions import get_model

    try:
        with session_scope() as s:
            enc = get_model("encoder", ENCODER, session=s)
        info: dict[str, Any] = {"reused": True}
    except NotFoundError:
        t0 = time.perf_counter()
        enc, _, metrics = train_encoder(
            ENCODER,
            [SURVEY],
            epochs=args.encoder_epochs,
            max_images=args.encoder_images,
            seed=args.sim_seed % 1000,
            progress=True,
        )
        t["encoder_train_s"] = time.perf_counter() - t0
        info = {"reused": False, **metrics}
        print(f"trained {enc.label} in {t['encoder_train_s']:.0f} s (loss {metrics.get('final_loss')})", flush=True)
    t0 = time.perf_counter()
    with session_scope() as s:
        job = plan_embed_job(enc.label, surveys=[SURVEY], chunk_size=1000, session=s)
    with session_scope() as s:
        n_embedded = run_here(job.job_id, embed_chunk, session=s, progress=True, desc="embed")
    if n_embedded:
        t["embed_s"] = time.perf_counter() - t0
    info.update(arch=enc.architecture, dim=enc.output_dim, epochs=args.encoder_epochs, images=args.encoder_images)
    return enc.label, info


def synthetic_embeddings(ids: np.ndarray, is_lens: np.ndarray, args: argparse.Namespace) -> str:
    """128-d Gaussian-mixture vectors, lenses displaced along one direction (bench/classifier.py's data)."""
    from classifier import make_data  # bench/classifier.py

    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import upsert_embeddings
    from lenscat.registry.versions import register_model

    x, _ = make_data(len(ids), 128, args.sim_seed, lens_rate=0.0)
    x[is_lens, 0] += args.synthetic_shift
    with session_scope() as s:
        enc, created = register_model(
            "encoder",
            "albench-synthetic",
            architecture="external",
            output_dim=128,
            checkpoint_path=None,
            checkpoint_sha256=f"{args.sim_seed:064x}",
            origin="external",
            session=s,
        )
        if created:
            upsert_embeddings(enc, ids, x, session=s)
    return enc.label


# ------------------------------------------------------------------------------------ one trial
def positions_to_reach(order_is_lens: np.ndarray, ks: list[int]) -> list[int | None]:
    """1-based number of images inspected (in that order) when the k-th lens appears."""
    pos = np.flatnonzero(order_is_lens) + 1
    return [int(pos[k - 1]) if k <= len(pos) else None for k in ks]


def run_trial(world: dict[str, Any], trial: int, args: argparse.Namespace, ks: list[int]) -> dict[str, Any]:
    """Seed labels, then each strategy's campaign and the single classifier, in a rolled-back transaction."""
    from astropy.table import Table

    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.loaders import score_function
    from lenscat.db.session import bind_connection, get_engine, session_scope
    from lenscat.embeddings.vectors import read_embeddings
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades
    from lenscat.learning.active import advance
    from lenscat.learning.campaigns import create_campaign, current_loop
    from lenscat.models.metrics import roc_auc
    from lenscat.registry.versions import get_model

    ids, is_lens, kind = world["ids"], world["is_lens"], world["kind"]
    lens_of = dict(zip(ids.tolist(), is_lens.tolist(), strict=True))
    kind_of = dict(zip(ids.tolist(), kind.tolist(), strict=True))
    rng = np.random.default_rng(args.seed + trial)
    seeds = rng.choice(ids[is_lens], args.seed_lenses, replace=False)
    out: dict[str, Any] = {"trial": trial, "seed_ids": seeds.tolist()}
    budget = args.max_images or len(ids)
    for strategy in args.strategies:
        conn = get_engine().connect()
        trans = conn.begin()
        bind_connection(conn)
        try:
            with session_scope() as s:
                known = Path(tempfile.mkdtemp()) / "known.ecsv"
                sel = np.isin(ids, seeds)
                Table({"objid": world["objid"][sel], "lens": np.ones(int(sel.sum()), int)}).write(known)
                import_labels(known, label_col="lens", survey=SURVEY, session=s, provenance="known-lenses")
                grader, _ = add_grader("sim-expert", token=True, session=s)
                settings = {"seed_origins": ["import"], **args.settings}
                camp = create_campaign(
                    f"bench-{strategy}",
                    world["encoder"],
                    batch_size=args.batch,
                    strategy=strategy,
                    settings=settings,
                    session=s,
                )
            order: list[int] = []
            loops: list[dict[str, Any]] = []
            first_model_id = None
            pbar = tqdm(total=budget, desc=f"trial {trial} {strategy}", unit="img", leave=False)
            while len(order) < budget:
                t0 = time.perf_counter()
                with session_scope() as s:
                    loop = advance(camp, session=s, seed=args.seed + trial)
                t_prop = time.perf_counter() - t0
                if loop is None:
                    break
                first_model_id = first_model_id if first_model_id is not None else loop.model_id
                batch = loop.batch[: budget - len(order)]
                with session_scope() as s:
                    record_grades(
                        grader,
                        [GradeInput(b, "A" if lens_of[b] else "N") for b in loop.batch],
                        sample=loop.sample,
                        loop_id=loop.loop_id,
                        session=s,
                    )
                order += batch
                found = int(sum(lens_of[b] for b in order))
                loops.append(
                    {
                        "loop": loop.loop_no,
                        "model": loop.model,
                        "n_positive": loop.n_positive,
                        "n_negative": loop.n_negative,
                        "propose_s": t_prop,
                        "train_s": loop.detail["seconds"].get("train"),
                        "found": found,
                    }
                )
                pbar.update(len(batch))
                pbar.set_postfix(found=found)
                if found >= ks[-1] and len(order) >= max(args.recall_at):
                    break
            pbar.close()
            with session_scope() as s:
                last = current_loop(camp, session=s)
                assert last is not None and last.completed
            lens_order = np.array([lens_of[b] for b in order], dtype=bool)
            reach = positions_to_reach(lens_order, ks)
            inspected_nonlens = [kind_of[b] for b in order if not lens_of[b]]
            res: dict[str, Any] = {
                "images": reach,
                "loops": [math.ceil(p / args.batch) if p else None for p in reach],
                "recall_at": {n: int(lens_order[:n].sum()) for n in args.recall_at},
                "n_loops": len(loops),
                "n_inspected": len(order),
                "propose_s_median": float(np.median([lp["propose_s"] for lp in loops])),
                "propose_s_max": float(np.max([lp["propose_s"] for lp in loops])),
                "train_s_median": float(np.median([lp["train_s"] or 0 for lp in loops])),
                "loops_detail": loops,
                "nonlens_kinds": {k: inspected_nonlens[:2000].count(k) for k in sorted(set(inspected_nonlens))},
            }
            out[strategy] = res
            if "single" not in out and first_model_id is not None:
                # (c) the classifier of loop 1 (seed labels only), used once for the whole survey
                with session_scope() as s:
                    model = get_model("classifier", first_model_id, session=s)
                    enc = get_model("encoder", world["encoder"], session=s)
                    got, vec = read_embeddings(enc, session=s)
                sc = score_function(model)(vec)
                keep = ~np.isin(got, seeds)
                cand, csc = got[keep], sc[keep]
                rank = cand[np.lexsort((cand, -csc))]
                lo = np.array([lens_of[int(b)] for b in rank], dtype=bool)
                reach1 = positions_to_reach(lo, ks)
                out["single"] = {
                    "model": model.label,
                    "images": reach1,
                    "loops": [math.ceil(p / args.batch) if p else None for p in reach1],
                    "recall_at": {n: int(lo[:n].sum()) for n in args.recall_at},
                    "auc": roc_auc(np.array([lens_of[int(b)] for b in cand], dtype=int), csc),
                }
        finally:
            bind_connection(None)
            trans.rollback()
            conn.close()
    return out


def random_baseline(
    n_free: int, n_lens: int, ks: list[int], recall_at: list[int], batch: int, seed: int
) -> dict[str, Any]:
    """Expected images to the k-th lens in random order, k (M + 1) / (L + 1), and the 10-90 % range."""
    rng = np.random.default_rng(seed)
    draws = np.array([positions_to_reach(rng.permutation(n_free) < n_lens, ks) for _ in range(2000)], dtype=float)
    expected = [k * (n_free + 1) / (n_lens + 1) for k in ks]
    return {
        "images": expected,
        "loops": [e / batch for e in expected],
        "p10": np.percentile(draws, 10, axis=0).tolist(),
        "p90": np.percentile(draws, 90, axis=0).tolist(),
        "recall_at": {n: n * n_lens / n_free for n in recall_at},
    }


# ------------------------------------------------------------------------------------ report
def _fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def summarize(
    world: dict[str, Any], trials: list[dict[str, Any]], rnd: dict[str, Any], ks: list[int], args: argparse.Namespace
) -> tuple[str, dict[str, Any]]:
    """Markdown tables: per method the median over trials, with ratios against random and single."""
    methods = [*args.strategies, "single"]
    names = {
        "top": "active learning, `top`",
        "uncertainty": "active learning, `uncertainty`",
        "single": "single classifier trained once (loop-1 model), score order",
    }
    med: dict[str, dict[str, Any]] = {}
    for m in methods:
        per = [t[m] for t in trials if m in t]
        imgs = [[p["images"][i] for p in per] for i in range(len(ks))]
        med[m] = {
            "images": [
                float(np.median([x for x in col if x is not None])) if all(x is not None for x in col) else None
                for col in imgs
            ],
            "all_images": imgs,
            "recall_at": {n: float(np.median([p["recall_at"][n] for p in per])) for n in args.recall_at},
        }
    rows = []
    for m in methods:
        r = []
        for i in range(len(ks)):
            im = med[m]["images"][i]
            r.append(f"{_fmt(im)} ({_fmt(math.ceil(im / args.batch) if im else None)})")
            r.append(_fmt(ratio(rnd["images"][i], im) if im else None, 1) + "x")
            if m != "single":
                si = med["single"]["images"][i]
                r.append(_fmt(ratio(si, im) if im and si else None, 1) + "x")
            else:
                r.append("1x")
        runs = " / ".join(",".join(_fmt(x) for x in col) for col in med[m]["all_images"])
        rows.append((names[m], *r, runs))
    rows.append(
        (
            "random inspection (expected; 10–90 % of 2,000 random orders)",
            *sum(
                (
                    [
                        f"{_fmt(rnd['images'][i])} ({_fmt(rnd['loops'][i], 1)}); "
                        f"{_fmt(rnd['p10'][i])}–{_fmt(rnd['p90'][i])}",
                        "1x",
                        _fmt(ratio(med["single"]["images"][i] or float("nan"), rnd["images"][i]), 2) + "x",
                    ]
                    for i in range(len(ks))
                ),
                [],
            ),
            "",
        )
    )
    header: list[str] = ["method"]
    for frac, k in zip(args.fractions, ks, strict=True):
        header += [f"images (loops) to {frac:.0%} = {k} lenses", "vs random", "vs single"]
    header.append(f"per trial, images to {' / '.join(f'{f:.0%}' for f in args.fractions)}")
    md = format_table(rows, tuple(header), markdown=True)
    rec_rows = []
    for m in methods:
        rec_rows.append((names[m], *[_fmt(med[m]["recall_at"][n]) for n in args.recall_at]))
    rec_rows.append(("random inspection (expected)", *[_fmt(rnd["recall_at"][n], 1) for n in args.recall_at]))
    md2 = format_table(rec_rows, ("method", *[f"lenses found in {n:,} images" for n in args.recall_at]), markdown=True)
    return md + "\n\n" + md2, med


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="survey size (cutouts)")
    ap.add_argument("--lens-fraction", type=float, default=0.01)
    ap.add_argument("--sim-seed", type=int, default=2027, help="seed of the simulated survey")
    ap.add_argument("--survey-file", default=None, help="an existing simulated survey (.h5 with is_lens)")
    ap.add_argument("--embeddings", choices=["images", "synthetic"], default="images")
    ap.add_argument("--synthetic-shift", type=float, default=1.5, help="lens displacement of synthetic vectors")
    ap.add_argument("--encoder-epochs", type=int, default=15)
    ap.add_argument("--encoder-images", type=int, default=3000, help="cutouts the encoder trains on")
    ap.add_argument("--seed-lenses", type=int, default=10, help="lenses known beforehand (labels of origin import)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument(
        "--settings",
        type=json.loads,
        default={},
        help='campaign settings overrides as JSON, e.g. \'{"ratio": 100, "l2": 0.01}\' (default: lenscat\'s)',
    )
    ap.add_argument("--strategies", default="top,uncertainty")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=None, help="stop a campaign after this many images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", default=None, help="LENSCAT_HOME to use and keep (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="write results as .json or .md")
    args = ap.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.fractions = [0.5, 0.9]
    args.recall_at = [500, 1000, 2000]
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="lenscat-albench-"))
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    own_embedded_home(home)
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine

    info = machine_info(with_torch=True)
    print(
        f"lenscat active-learning benchmark {info['date_utc']}: {info['cpu_count']} cores ({info['cpu']}), "
        f"{info['ram_gb']} GB, torch {info['torch']} ({info['torch_threads']} threads), load {info['loadavg_start']}",
        flush=True,
    )
    t_all = time.perf_counter()
    try:
        ensure_schema()
        world = build_world(args, home)
        n_lens = int(world["is_lens"].sum())
        n_unknown = n_lens - args.seed_lenses
        ks = [math.ceil(f * n_unknown) for f in args.fractions]
        print(
            f"survey: {len(world['ids'])} sources, {n_lens} lenses ({args.seed_lenses} known), encoder "
            f"{world['encoder']} ({world['dim']}-d); to find: {ks} of {n_unknown}",
            flush=True,
        )
        trials = []
        for trial in range(args.trials):
            t0 = time.perf_counter()
            res = run_trial(world, trial, args, ks)
            res["seconds"] = time.perf_counter() - t0
            trials.append(res)
            print(
                f"trial {trial} ({res['seconds']:.0f} s): "
                + "; ".join(f"{m} images to {ks}: {res[m]['images']}" for m in [*args.strategies, "single"] if m in res)
                + f"; single-classifier AUC {res['single']['auc']:.3f}",
                flush=True,
            )
        rnd = random_baseline(
            len(world["ids"]) - args.seed_lenses, n_unknown, ks, args.recall_at, args.batch, args.seed
        )
        md, med = summarize(world, trials, rnd, ks, args)
    finally:
        dispose_engine()
        stop_embedded()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    info["loadavg_end"] = loadavg()
    timing = {
        m: {
            "propose_s_median": float(np.median([t[m]["propose_s_median"] for t in trials])),
            "propose_s_max": float(np.max([t[m]["propose_s_max"] for t in trials])),
            "train_s_median": float(np.median([t[m]["train_s_median"] for t in trials])),
            "loops_median": float(np.median([t[m]["n_loops"] for t in trials])),
        }
        for m in args.strategies
    }
    print("\n" + md)
    print(
        "\nper loop: "
        + "; ".join(
            f"{m}: proposal {v['propose_s_median']:.2f} s median ({v['propose_s_max']:.2f} "
            f"max), training {v['train_s_median']:.2f} s, {v['loops_median']:.0f} loops"
            for m, v in timing.items()
        )
    )
    aucs = ", ".join(f"{t['single']['auc']:.3f}" for t in trials)
    print(f"single-classifier AUC over unlabelled sources: {aucs}")
    for m in args.strategies:
        kinds: dict[str, int] = {}
        for t in trials:
            for k, v in t[m]["nonlens_kinds"].items():
                kinds[k] = kinds.get(k, 0) + v
        tot = sum(kinds.values()) or 1
        print(
            f"{m}: non-lenses among the first 2,000 inspected, by kind: "
            + ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        )
    print(
        f"world: {json.dumps({k: round(v, 1) for k, v in world['timings'].items()})}; total "
        f"{time.perf_counter() - t_all:.0f} s; load average {info['loadavg_start']} at start, "
        f"{info['loadavg_end']} at end"
    )
    if args.out:
        payload = {
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "world": {
                "survey": world["path"],
                "n": len(world["ids"]),
                "lenses": int(world["is_lens"].sum()),
                "encoder": world["encoder"],
                "encoder_info": world["encoder_info"],
                "timings": world["timings"],
            },
            "ks": ks,
            "random": rnd,
            "median": med,
            "timing": timing,
            "trials": trials,
        }
        args.out.write_text(json.dumps(payload, indent=1, default=str) if args.out.suffix == ".json" else md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
