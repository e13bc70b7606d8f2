#!/usr/bin/env python
"""Science benchmark (issue 30): lens finders on a survey the system was not tuned on, few labels.

The protocol of the issue, through lenscat's library calls on its own embedded PostgreSQL in a
temporary (or ``--keep``) ``LENSCAT_HOME``:

* a *training* survey (``--train-n`` cutouts, ``--train-lenses`` lenses) and a *test* survey
  (``--test-n``, ``--test-lenses``), both rendered by the independent simulator
  (:mod:`lenscat.simulate.alt`, ``lenscat simulate survey --simulator independent``), which shares
  no physics with the lenstronomy path the injections use; the training survey's truth is imported
  as labels (a user's few known lenses), the test survey's is used only to evaluate;
* ``--inject`` lensed sources painted with lenstronomy onto the training survey's own red galaxies
  (``lenscat simulate inject``);
* in the same run, on the same labels, evaluated on every test-survey source (none trained on):

  - **radial**: the 36-number radial colour profile + logistic regression (the baseline);
  - **default**: ``lenscat classifier train`` with no architecture flags (the few-label CNN recipe),
    on the labels plus the injections; and **default, labels only** (no injections);
  - **old cnn**: the CNN recipe as it was before issue 30 (``--arch cnn`` with the old defaults:
    1:100 negatives, half the pool, 5 % lenses per batch) for ``--old-epochs`` epochs;
  - **probe**: a self-supervised encoder (resnet-small's recipe) pre-trained on both surveys'
    cutouts, linear probe on the training survey's labels (``--no-probe`` skips it);
  - **ensembles**: rank average and stacking of the members above;
  - **anomaly**: kNN isolation in the encoder's embedding space (no labels at all): how early the
    lenses and the rarest impostor kinds come up;
  - **similarity**: "more like this lens" on the test survey, lenses among each lens's top-20
    neighbours over the base rate, with the self-supervised embeddings and with the penultimate
    layer of the injection-trained network (``lenscat encoder from-classifier``).

Usage::

    python bench/science_transfer.py [--train-n 3000 --train-lenses 150 --test-n 3000 --test-lenses 60]
        [--inject 1500] [--seed 30] [--stamp 152] [--keep DIR] [--no-probe] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import format_table, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-n", type=int, default=3000)
    ap.add_argument("--train-lenses", type=int, default=150)
    ap.add_argument("--test-n", type=int, default=3000)
    ap.add_argument("--test-lenses", type=int, default=60)
    ap.add_argument("--inject", type=int, default=1500, help="injected lenses painted on the training survey")
    ap.add_argument("--seed", type=int, default=30)
    ap.add_argument("--stamp", type=int, default=152, help="cutout side, pixels")
    ap.add_argument("--old-epochs", type=int, default=10)
    ap.add_argument("--no-probe", action="store_true", help="skip the self-supervised encoder and its probe")
    ap.add_argument("--k", type=int, default=20, help="neighbours per lens query")
    ap.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (reruns reuse it)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="lenscat-bench-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LENSCAT_HOME"] = str(work / "home")
    os.environ.pop("LENSCAT_DATABASE_URL", None)
    os.environ.pop("LENSCAT_BROKER_URL", None)

    import torch

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.ranking import evaluate_classifier
    from lenscat.classifiers.scoring import plan_score_job, score_chunk
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.classifiers.train_linear import train_linear_classifier
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import run_here
    from lenscat.simulate.alt import simulate_survey_alt
    from lenscat.simulate.injection import inject_survey

    torch.set_num_threads(os.cpu_count() or 1)
    times: dict[str, float] = {}

    def timed(what: str, fn: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = fn(*a, **kw)
        times[what] = round(time.perf_counter() - t, 1)
        print(f"[{what}: {times[what]:.0f} s]", flush=True)
        return out

    def trained(what: str, fn: Any, name: str, *a: Any, **kw: Any) -> Any:
        """Train (timed), or reuse the latest version of ``name`` in a kept work directory."""
        from types import SimpleNamespace

        from lenscat.errors import NotFoundError
        from lenscat.registry.versions import get_model

        try:
            return SimpleNamespace(model=get_model("classifier", name, session=kw["session"]))
        except NotFoundError:
            return timed(what, fn, name, *a, **kw)

    train_h5, test_h5 = work / "train.h5", work / "test.h5"
    args.test_h5 = test_h5
    for path, n, n_lens, seed in (
        (train_h5, args.train_n, args.train_lenses, args.seed),
        (test_h5, args.test_n, args.test_lenses, args.seed + 1),
    ):
        if not path.exists():
            timed(
                f"simulate {path.stem}", simulate_survey_alt, n, n_lens / n, seed, path, stamp=args.stamp, progress=True
            )
    ensure_schema()
    for path, survey in ((train_h5, "xfer-train"), (test_h5, "xfer-test")):
        ingest_sources(path, survey)
        with session_scope() as s:
            import_labels(path, label_col="is_lens", survey=survey, origin="simulation", session=s)
    with session_scope() as s:
        inj = timed(
            "inject",
            inject_survey,
            "xfer-train",
            args.inject,
            work / "inject.h5",
            seed=args.seed,
            session=s,
            progress=True,
        )
    inj_survey = inj.survey

    def score(label: str) -> None:
        with session_scope() as s:
            job = plan_score_job(label, chunk_size=2000, surveys=["xfer-test", "xfer-train"], session=s)
        with session_scope() as s:
            run_here(job.job_id, score_chunk, session=s, progress=True, desc=f"score {label}")

    members: dict[str, str] = {}
    both = ["xfer-train", inj_survey]
    with session_scope() as s:
        r = trained(
            "train radial",
            train_image_classifier_version,
            "xfer-radial",
            arch="radial",
            session=s,
            surveys=both,
            test_fraction=0.0,
            seed=args.seed,
            progress=True,
        )
    members["radial colour profile + logistic regression (labels + injections)"] = r.model.label
    with session_scope() as s:
        r = trained(
            "train radial, labels only",
            train_image_classifier_version,
            "xfer-radial-labels",
            arch="radial",
            session=s,
            surveys=["xfer-train"],
            test_fraction=0.0,
            seed=args.seed,
            progress=True,
        )
    members["radial colour profile (labels only)"] = r.model.label
    with session_scope() as s:
        r = trained(
            "train default",
            train_image_classifier_version,
            "xfer-default",
            session=s,
            surveys=both,
            test_fraction=0.0,
            seed=args.seed,
            progress=True,
        )
    members["default recipe (labels + injections)"] = r.model.label
    default_label = r.model.label
    with session_scope() as s:
        r = trained(
            "train default, labels only",
            train_image_classifier_version,
            "xfer-default-labels",
            session=s,
            surveys=["xfer-train"],
            test_fraction=0.0,
            seed=args.seed,
            progress=True,
        )
    members["default recipe (labels only)"] = r.model.label
    with session_scope() as s:
        r = trained(
            "train old cnn",
            train_image_classifier_version,
            "xfer-old-cnn",
            arch="cnn",
            session=s,
            surveys=["xfer-train"],
            test_fraction=0.0,
            seed=args.seed,
            progress=True,
            **old_cnn_recipe(args.old_epochs),
        )
    members[f"old `--arch cnn --epochs {args.old_epochs}` (labels only)"] = r.model.label

    encoder = None
    if not args.no_probe:
        from lenscat.embeddings.embed import embed_chunk, plan_embed_job
        from lenscat.embeddings.encoder_train import train_encoder
        from lenscat.errors import NotFoundError
        from lenscat.registry.versions import get_model

        try:
            with session_scope() as s:
                encoder = get_model("encoder", "xfer-moco", session=s)
        except NotFoundError:
            encoder, _, _ = timed(
                "train encoder",
                train_encoder,
                "xfer-moco",
                ["xfer-train", "xfer-test"],
                max_images=min(6000, args.train_n + args.test_n),
                seed=args.seed,
                progress=True,
            )
        with session_scope() as s:
            job = plan_embed_job(encoder.label, surveys=["xfer-train", "xfer-test"], chunk_size=2000, session=s)
        with session_scope() as s:
            timed("embed", run_here, job.job_id, embed_chunk, session=s, progress=True, desc="embed")
        with session_scope() as s:
            r = trained(
                "train probe",
                train_linear_classifier,
                "xfer-probe",
                encoder.label,
                session=s,
                surveys=["xfer-train"],
                test_fraction=0.0,
                seed=args.seed,
                progress=True,
            )
        members["linear probe on self-supervised embeddings (labels only)"] = r.model.label

    for label in members.values():
        timed(f"score {label}", score, label)

    from lenscat.classifiers.ensemble import train_ensemble

    ens_members = [default_label, members["radial colour profile + logistic regression (labels + injections)"]]
    if encoder is not None:
        ens_members.append(members["linear probe on self-supervised embeddings (labels only)"])
    with session_scope() as s:
        e = train_ensemble("xfer-rank", ens_members, method="rank", session=s)
    members["rank-average ensemble of " + ", ".join(ens_members)] = e.model.label
    score(e.model.label)

    n_top = args.test_lenses
    with session_scope() as s:
        res = evaluate_classifier(
            default_label,
            baselines=[v for v in members.values() if v != default_label],
            surveys=["xfer-test"],
            origins=["simulation"],
            top_n=[n_top],
            session=s,
        )
    by_label = res["models"]
    rows = []
    for name, label in members.items():
        m = by_label[label]
        rows.append(
            (
                name,
                label,
                f"{m['auc']:.3f}",
                f"{m['tpr0']:.2f}",
                f"{m['tpr10']:.2f}",
                f"{m['top_n'][0]['precision']:.2f}",
            )
        )
    print(
        f"\ntest survey: {res['n_eval']} sources, {res['n_lenses']} lenses (none trained on); "
        f"training survey {args.train_n} cutouts with {args.train_lenses} labelled lenses + {args.inject} injected"
    )
    print(format_table(rows, ("method", "version", "AUC", "TPR0", "TPR10", f"precision in top {n_top}"), args.markdown))
    radial_auc = by_label[members["radial colour profile + logistic regression (labels + injections)"]]["auc"]
    print(f"default - radial AUC: {by_label[default_label]['auc'] - radial_auc:+.3f} (goal >= +0.05)")

    extra = similarity_and_anomaly(default_label, encoder, args, session_scope)
    print(
        json.dumps(
            {
                "machine": machine_info(with_torch=True),
                "seconds": times,
                "args": vars(args) | {"keep": str(args.keep)},
                "similarity_and_anomaly": extra,
            },
            default=str,
            indent=1,
        )
    )


def old_cnn_recipe(epochs: int) -> dict[str, Any]:
    """The image-classifier parameters `classifier train --arch cnn` used before issue 30."""
    return {"ratio": 100, "lens_fraction": 0.05, "epochs": epochs, "recipe": "legacy"}


def similarity_and_anomaly(
    classifier: str, encoder: Any, args: argparse.Namespace, session_scope: Any
) -> dict[str, Any]:
    """Enrichment of "more like this lens" on the test survey with both encoders, and the anomaly score."""
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.embeddings.encoder_derive import encoder_from_classifier
    from lenscat.embeddings.similarity_eval import lens_query_enrichment
    from lenscat.jobs.service import run_here

    out: dict[str, Any] = {}
    with session_scope() as s:
        _, feat, _ = encoder_from_classifier(classifier, session=s)
    with session_scope() as s:
        job = plan_embed_job(feat.label, surveys=["xfer-test"], chunk_size=2000, session=s)
    with session_scope() as s:
        run_here(job.job_id, embed_chunk, session=s, progress=True, desc="embed features")
    encoders = [feat] + ([encoder] if encoder is not None else [])
    for enc in encoders:
        with session_scope() as s:
            ev = lens_query_enrichment(
                enc, session=s, k=args.k, surveys=["xfer-test"], origins=["simulation"], progress=False
            )
        out[f"enrichment_top{args.k}[{enc.label}]"] = {
            "enrichment": round(ev.enrichment, 2),
            "ceiling": round(ev.ceiling, 1),
            "n_queries": ev.n_lenses,
        }
        print(
            f"more like this lens, top {args.k} on the test survey, {enc.label}: {ev.enrichment:.1f}x the base rate "
            f"(ceiling {ev.ceiling:.1f}x; goal >= 10x)"
        )
    if encoder is not None:
        from lenscat.classifiers.ranking import evaluate_classifier
        from lenscat.classifiers.scoring import plan_score_job, score_chunk
        from lenscat.embeddings.anomaly import fit_anomaly

        with session_scope() as s:
            a = fit_anomaly("xfer-anomaly", encoder.label, session=s, surveys=["xfer-test"])
        with session_scope() as s:
            score_job = plan_score_job(a.model, chunk_size=2000, surveys=["xfer-test"], session=s)
        with session_scope() as s:
            run_here(score_job.job_id, score_chunk, session=s, progress=True, desc="anomaly")
        with session_scope() as s:
            res = evaluate_classifier(
                a.model.label, surveys=["xfer-test"], origins=["simulation"], top_n=[args.test_lenses, 100], session=s
            )
            m = res["models"][a.model.label]
            kinds = kind_ranks(a.model.label, s, args.test_h5)
        out["anomaly"] = {"auc_lenses": round(m["auc"], 3), "top_n": m["top_n"], "kinds": kinds}
        print(f"anomaly score (no labels): lens AUC {m['auc']:.3f}; median rank percentile per kind {kinds}")
    return out


def kind_ranks(label: str, session: Any, truth_path: Path) -> dict[str, float]:
    """Median rank percentile (0 = most anomalous) of each simulated kind under the score ``label``."""
    from sqlalchemy import text

    from lenscat.simulate.survey_file import read_truth

    truth = read_truth(truth_path)
    kind_of = {str(o): str(k) for o, k in zip(truth["objid"], truth["kind"], strict=True)}
    rows = session.execute(
        text(
            "SELECT s.objid, percent_rank() OVER (ORDER BY c.score DESC) FROM scores c "
            "JOIN sources s USING (source_id) WHERE c.classifier || '@' || c.classifier_version = :m "
            "AND s.survey = 'xfer-test'"
        ),
        {"m": label},
    ).all()
    by: dict[str, list[float]] = {}
    for objid, pr in rows:
        by.setdefault(kind_of[str(objid)], []).append(float(pr))
    return {k: round(float(np.median(v)), 3) for k, v in sorted(by.items())}


if __name__ == "__main__":
    main()
