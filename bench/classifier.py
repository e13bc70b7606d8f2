#!/usr/bin/env python
"""Benchmark: linear-probe training, scoring and top-N selection, against numpy/scipy baselines.

For each data set (default 10^6 x 128-d and 2x10^5 x 2048-d embeddings, 1 lens per 1,000) one run
measures, in the same process and on the same data:

(a) training: :func:`lenscat.models.linear.train_linear` (full-batch L-BFGS in torch, strong-Wolfe
    line search, BCE) for ``--epochs`` epochs of 5 iterations, against scipy's L-BFGS-B on the same
    loss and gradient written in numpy (the classic way), with the same number of iterations;
    seconds per epoch and the final loss of each (Stein et al. 2022: 45 s per epoch for
    4.5x10^6 x 2048 on a CPU);
(b) scoring: the vectors are written to ``lenscat.embeddings`` (``upsert_embeddings``, timed as
    the load), then every source is scored by :func:`lenscat.classifiers.scoring.score_chunk`, the function
    a Celery worker runs per chunk (binary COPY of the vectors out, matrix product, COPY + upsert of
    the scores, chunk bookkeeping), in-process without the broker; rows/s against the numpy matrix
    product on the in-memory array;
(c) top-N: :func:`lenscat.classifiers.ranking.top_candidates` for N = 100 and 1,139 (Stein's inspection
    budget), p50/p95 over repeated calls (index scan of ``ix_scores_model_score`` plus the joins
    for the result table), against ``numpy.argpartition`` + sort of the in-memory scores.

Usage::

    python bench/classifier.py [--quick] [--n N --dim D] [--epochs 5] [--out results.md]

It runs its own embedded PostgreSQL under a temporary ``LENSCAT_HOME`` and removes it at the end.
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
from typing import Any

import numpy as np
from benchutil import loadavg, machine_info, pct


def make_data(n: int, dim: int, seed: int, lens_rate: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from a Gaussian mixture; lenses displaced along one direction."""
    rng = np.random.default_rng(seed)
    k = max(10, n // 2000)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    y = (rng.random(n) < lens_rate).astype(np.float32)
    x[y > 0, 0] += 3.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def scipy_lbfgs(x: np.ndarray, y: np.ndarray, iters: int, l2: float) -> tuple[float, float]:
    """Baseline: scipy L-BFGS-B on the numpy logistic loss; returns (seconds, final loss)."""
    from scipy.optimize import minimize

    x64 = x.astype(np.float64)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x64 @ w + b
        loss = float(np.mean(np.logaddexp(0, z) - y * z) + l2 * w @ w)
        p = 1 / (1 + np.exp(-z))
        g = np.empty_like(theta)
        g[:-1] = x64.T @ (p - y) / len(y) + 2 * l2 * w
        g[-1] = float(np.mean(p - y))
        return loss, g

    theta0 = np.zeros(x.shape[1] + 1)
    t0 = time.perf_counter()
    res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iters, "maxcor": 20})
    return time.perf_counter() - t0, float(res.fun)


def bench(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    """All three measurements on one data set."""
    import torch
    from sqlalchemy import text

    from lenscat.catalogue.surveys import ensure_survey
    from lenscat.classifiers.ranking import top_candidates
    from lenscat.classifiers.scoring import plan_score_job, score_chunk
    from lenscat.db.session import session_scope
    from lenscat.embeddings.vectors import upsert_embeddings
    from lenscat.jobs.service import run_here
    from lenscat.models.linear import predict_linear, state_dict, train_linear
    from lenscat.registry.versions import register_model, store_checkpoint

    out: dict[str, Any] = {"n": n, "dim": dim}
    x, y = make_data(n, dim, args.seed)
    print(f"\n== {n} x {dim}: {int(y.sum())} lenses", flush=True)
    # (a) training
    train_linear(x[:5000], y[:5000] if y[:5000].any() else np.r_[1, y[1:5000]], epochs=1)  # warm-up: lazy torch init
    fit = train_linear(x, y, epochs=args.epochs, iters_per_epoch=5, l2=1e-4)
    out["torch_s_per_epoch"] = fit.seconds / args.epochs
    out["torch_loss"] = fit.history[-1]["train_loss"]
    t_sp, loss_sp = scipy_lbfgs(x, y, 5 * args.epochs, 1e-4)
    out["scipy_s_per_epoch"] = t_sp / args.epochs
    out["scipy_loss"] = loss_sp
    print(
        f"training: torch L-BFGS {out['torch_s_per_epoch']:.2f} s/epoch (loss {out['torch_loss']:.5f}); "
        f"scipy L-BFGS-B {out['scipy_s_per_epoch']:.2f} s/epoch (loss {loss_sp:.5f})",
        flush=True,
    )
    # (b) load + scoring
    tag = f"bench{n}x{dim}"
    with session_scope() as s:
        sv = ensure_survey(tag, ["g", "r", "z"], session=s)
        rng = np.random.default_rng(args.seed)
        s.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'o' || i, random() * 360, degrees(asin(2 * random() - 1)), "
                "ARRAY[20 + random(), 20 + random(), 20 + random()]::real[] FROM generate_series(1, :n) i"
            ),
            {"sv": sv.survey_id, "n": n},
        )
        ids = np.array(
            s.execute(
                text("SELECT source_id FROM lenscat.sources WHERE survey_id = :sv ORDER BY 1"), {"sv": sv.survey_id}
            )
            .scalars()
            .all(),
            dtype=np.int64,
        )
        enc, _ = register_model(
            "encoder",
            tag,
            architecture="external",
            output_dim=dim,
            checkpoint_path=None,
            checkpoint_sha256=f"{rng.integers(1 << 62):064x}",
            origin="external",
            session=s,
        )
    t0 = time.perf_counter()
    for i in range(0, n, 100_000):
        with session_scope() as s:
            upsert_embeddings(enc, ids[i : i + 100_000], x[i : i + 100_000], session=s)
    out["load_rows_per_s"] = n / (time.perf_counter() - t0)
    ck = Path(tempfile.mkdtemp()) / "linear.pt"
    torch.save(
        state_dict(
            fit, encoder_id=enc.model_id, train_ids=torch.from_numpy(ids[:0]), val_ids=torch.from_numpy(ids[:0])
        ),
        ck,
    )
    stored, sha = store_checkpoint(ck)
    with session_scope() as s:
        clf, _ = register_model(
            "classifier",
            tag,
            architecture="linear",
            output_dim=1,
            checkpoint_path=stored,
            checkpoint_sha256=sha,
            origin="trained",
            parent_model_id=enc.model_id,
            input_spec={"input": "embedding", "dim": dim},
            session=s,
        )
        job = plan_score_job(clf, chunk_size=args.chunk, session=s)
    t0 = time.perf_counter()
    with session_scope() as s:
        run_here(job.job_id, score_chunk, session=s)
    out["score_rows_per_s"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    sc = predict_linear(fit.weight, fit.bias, x)
    out["numpy_score_rows_per_s"] = n / (time.perf_counter() - t0)
    with session_scope() as s:
        s.execute(text("ANALYZE lenscat.scores"))
    print(
        f"load {out['load_rows_per_s']:,.0f} rows/s; scoring {out['score_rows_per_s']:,.0f} rows/s "
        f"(numpy in memory {out['numpy_score_rows_per_s']:,.0f} rows/s)",
        flush=True,
    )
    # (c) top-N
    for top in (100, 1139):
        lat, base = [], []
        with session_scope() as s:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tab = top_candidates(clf, top, session=s)
                lat.append(time.perf_counter() - t0)
            assert len(tab) == top
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            part = np.argpartition(-sc, top)[:top]
            part[np.argsort(-sc[part])]
            base.append(time.perf_counter() - t0)
        out[f"top{top}_p50_ms"], out[f"top{top}_p95_ms"] = pct(lat, 50) * 1e3, pct(lat, 95) * 1e3
        out[f"numpy_top{top}_p50_ms"] = pct(base, 50) * 1e3
        print(
            f"top {top}: p50 {pct(lat, 50) * 1e3:.2f} ms, p95 {pct(lat, 95) * 1e3:.2f} ms "
            f"(numpy argpartition {pct(base, 50) * 1e3:.2f} ms)",
            flush=True,
        )
    with session_scope() as s:
        plan = "\n".join(
            s.execute(
                text(
                    f"EXPLAIN SELECT source_id FROM lenscat.scores WHERE model_id = {clf.model_id} "
                    "ORDER BY score DESC, source_id LIMIT 1139"
                )
            ).scalars()
        )
    out["top_uses_index"] = "ix_scores_model_score" in plan
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown rows with ratios."""
    lines = ["| data set | measure | lenscat | baseline | ratio (baseline / lenscat time) |", "|---|---|---|---|---|"]
    for r in results:
        d = f"{r['n']:,} x {r['dim']}"
        lines.append(
            f"| {d} | L-BFGS s/epoch (5 iterations); final loss | {r['torch_s_per_epoch']:.2f}; "
            f"{r['torch_loss']:.5f} | {r['scipy_s_per_epoch']:.2f}; {r['scipy_loss']:.5f} (scipy L-BFGS-B) | "
            f"{r['scipy_s_per_epoch'] / r['torch_s_per_epoch']:.1f}x |"
        )
        lines.append(f"| {d} | load `upsert_embeddings` rows/s | {r['load_rows_per_s']:,.0f} | | |")
        lines.append(
            f"| {d} | scoring `score_chunk` rows/s | {r['score_rows_per_s']:,.0f} | "
            f"{r['numpy_score_rows_per_s']:,.0f} (numpy, in memory) | "
            f"{r['score_rows_per_s'] / r['numpy_score_rows_per_s']:.3f}x |"
        )
        for top in (100, 1139):
            lines.append(
                f"| {d} | `top_candidates` N={top} p50 / p95 ms | {r[f'top{top}_p50_ms']:.2f} / "
                f"{r[f'top{top}_p95_ms']:.2f} | {r[f'numpy_top{top}_p50_ms']:.2f} (argpartition) | "
                f"{r[f'numpy_top{top}_p50_ms'] / r[f'top{top}_p50_ms']:.1f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="one small data set (5x10^4 x 128)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=50_000, help="sources per scoring chunk")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="write results as .json or .md")
    args = ap.parse_args(argv)
    if args.quick:
        sets = [(args.n or 50_000, args.dim or 128)]
    elif args.n or args.dim:
        sets = [(args.n or 1_000_000, args.dim or 128)]
    else:
        sets = [(1_000_000, 128), (200_000, 2048)]
    home = tempfile.mkdtemp(prefix="lenscat-bench-")
    os.chmod(home, 0o755)
    os.environ.pop("LENSCAT_DATABASE_URL", None)
    os.environ["LENSCAT_HOME"] = home
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine

    info = machine_info(with_torch=True)
    print(
        f"lenscat classifier benchmark {info['date_utc']}: {info['cpu_count']} cores ({info['cpu']}), "
        f"{info['ram_gb']} GB, Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
        f"load {info['loadavg_start']}"
    )
    results = []
    try:
        ensure_schema()
        for n, dim in sets:
            results.append(bench(n, dim, args))
    finally:
        dispose_engine()
        stop_embedded()
        shutil.rmtree(home, ignore_errors=True)
    info["loadavg_end"] = loadavg()
    md = table(results)
    print("\n" + md)
    print(f"\nload average {info['loadavg_start']} at start, {info['loadavg_end']} at end")
    if args.out:
        args.out.write_text(
            json.dumps({"machine": info, "results": results}, indent=1) if args.out.suffix == ".json" else md + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
