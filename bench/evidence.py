#!/usr/bin/env python
"""Benchmark: reading the joint evidence (public.joint_evidence, migration 0017) on many scored sources.

A scratch embedded PostgreSQL under a temporary ``LENSCAT_HOME`` gets ``--n`` sources with one
classifier's uniform random scores (seeded), ``--graded`` of them graded A or B, then
``VACUUM ANALYZE``. Timed: :func:`lenscat.evidence.service.joint_evidence` for the graded
candidates, for the classifier's top 200 and for one source (the candidate page), and the
exactness of ``score_rank`` against a plain ``count(*)`` of the higher scores. ``--naive`` also
times that plain per-candidate count (the first version of the view) for the graded candidates.

Usage::

    python bench/evidence.py [--n 300000] [--graded 300] [--seed 0] [--naive]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--graded", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive", action="store_true")
    a = p.parse_args()
    home = tempfile.mkdtemp(prefix="lenscat-bench-evidence-")
    os.environ["LENSCAT_HOME"] = home
    import numpy as np
    from sqlalchemy import text

    from lenscat.catalogue.surveys import ensure_survey
    from lenscat.classifiers.scoring import upsert_scores
    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import get_engine, session_scope
    from lenscat.evidence.service import joint_evidence
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades
    from lenscat.registry.versions import register_model

    try:
        ensure_schema()
        with session_scope() as s:
            sv = ensure_survey("bench-evidence", ["g", "r", "z"], session=s)
            s.execute(
                text(
                    "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) "
                    "SELECT :sv, 'x' || i, (i * 0.618034) % 360, ((i * 0.414214) % 60) - 30 "
                    "FROM generate_series(1, :n) i"
                ),
                {"sv": sv.survey_id, "n": a.n},
            )
            ids = np.array(s.execute(text("SELECT source_id FROM lenscat.sources ORDER BY source_id")).scalars().all())
            clf, _ = register_model(
                "classifier",
                "bench-clf",
                architecture="linear",
                output_dim=1,
                checkpoint_path=None,
                checkpoint_sha256="a" * 64,
                origin="trained",
                session=s,
            )
            rng = np.random.default_rng(a.seed)
            upsert_scores(clf, ids, rng.uniform(0, 1, len(ids)), job_id=None, session=s)
            g, _ = add_grader("bench", password="bench-pass-1", session=s)
            picked = rng.choice(ids, a.graded, replace=False)
            record_grades(g, [GradeInput(int(i), "AB"[k % 2]) for k, i in enumerate(picked)], session=s)
        with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
        with session_scope() as s:
            for label, kw in (
                (f"{a.graded} graded candidates", {"grades": "A,B"}),
                ("the classifier's top 200", {"classifier": "bench-clf", "top": 200}),
                ("one source", {"source_ids": [int(picked[0])]}),
            ):
                t0 = time.perf_counter()
                t = joint_evidence(session=s, **kw)
                print(f"{label}: {len(t)} rows in {time.perf_counter() - t0:.2f} s")
            t0 = time.perf_counter()
            ref = s.execute(
                text(
                    "SELECT e.score_rank, (SELECT count(*) FROM lenscat.scores y WHERE y.model_id = e.classifier_id "
                    "AND y.score > e.image_score) FROM public.joint_evidence e"
                )
            ).all()
            naive_s = time.perf_counter() - t0
            bad = sum(1 for r in ref if r[0] != r[1])
            print(f"score_rank exact for {len(ref) - bad} of {len(ref)} candidates")
            if a.naive:
                print(f"plain per-candidate count of higher scores (with the view): {naive_s:.2f} s")
        print(f"load average: {os.getloadavg()}; n={a.n}; graded={a.graded}; seed={a.seed}")
    finally:
        stop_embedded()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
