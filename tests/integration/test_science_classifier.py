"""Science check (Stein et al. 2022, use case 2): a linear probe on self-supervised embeddings ranks lenses.

A survey of 20,000 cutouts is simulated with a seed the code never saw (random per run unless
LENSCAT_SCIENCE_SEED is set; printed so a failure can be reproduced) at a 1% lens fraction (200
lenses), an encoder is pre-trained on 3,000 of its cutouts without labels (resnet-small's recipe: 15
MoCo epochs, 2 CPU cores), every cutout is embedded, the simulation truth becomes labels, and the
linear probe is trained on 80 of the lenses (1:4000 asked for; the survey is too small, so the
ratio shrinks), its epoch chosen on 40 more, and evaluated on the ~10,000 sources it never saw (80
lenses), next to the supervised CNN baseline trained on the same labelled images. Figures (AUC,
TPR0, TPR10, precision in the top 1%) are printed and recorded in docs/benchmarks.md. The issue's
goal is AUC >= 0.95 for the probe: on these surveys, where a fifth of the non-lenses are designed
impostors, it gives 0.94-0.96 (docs/benchmarks.md); the test asserts a floor below the weakest
training seed measured and prints the figure. (On 5,000 cutouts, 20 training and 20 held-out lenses,
the same recipe averaged 0.924, 0.81-0.96: one AUC on 20 lenses is uncertain by about +-0.05.)
"""

from __future__ import annotations

import os
import secrets

import pytest
from sqlalchemy import text

pytestmark = pytest.mark.slow

N = 20_000
LENS_FRACTION = 0.01
# measured end to end on 20,000-cutout surveys: see docs/benchmarks.md ("20,000 cutouts"); 80 held-out lenses
# make one AUC uncertain by about +-0.02 and the MoCo training seed moves it further.
MIN_AUC = 0.85


def test_linear_probe_ranks_lenses(session, survey_path, tmp_path):
    from lenscat.classifier import (
        plan_score_job,
        score_chunk,
        train_image_classifier_version,
        train_linear_classifier,
    )
    from lenscat.embedding import embed_chunk, plan_embed_job
    from lenscat.encoders import train_encoder
    from lenscat.evaluation import format_metrics
    from lenscat.jobs import run_here
    from lenscat.labels import import_labels
    from lenscat.ranking import evaluate_classifier
    from lenscat.simsurvey import simulate_survey
    from lenscat.source_ingest import ingest_sources

    seed = int(os.environ.get("LENSCAT_SCIENCE_SEED") or secrets.randbelow(2**31))
    print(f"science check seed: {seed}")
    path = survey_path  # 20,000 cutouts of 152x152: 5.5 GB, removed afterwards
    simulate_survey(N, LENS_FRACTION, seed, path, progress=False)
    ingest_sources(path, "science-clf")
    model, _, _ = train_encoder("science-clf-moco", ["science-clf"], max_images=3000, seed=seed % 1000,
                                progress=False)  # resnet-small's recipe (TRAINING_RECIPES)

    run_here(plan_embed_job(model.label, surveys=["science-clf"], chunk_size=2000, session=session).job_id,
             embed_chunk, session=session)
    labels = import_labels(path, label_col="is_lens", survey="science-clf", origin="simulation", session=session)
    assert labels.n_positive == round(N * LENS_FRACTION) and not labels.rejects

    probe = train_linear_classifier("science-probe", model.label, session=session, ratio=4000, val_ratio=10000,
                                    test_fraction=0.4, seed=seed % 1000)
    cnn = train_image_classifier_version("science-cnn", arch="cnn", session=session, ratio=100, test_fraction=0.4,
                                         epochs=100, crop=48, max_steps=400, lens_fraction=0.2, seed=seed % 1000)
    for clf in (probe.model, cnn.model):
        run_here(plan_score_job(clf, chunk_size=5000, session=session).job_id, score_chunk, session=session)
    n_scored = session.execute(text("SELECT count(*) FROM lenscat.scores WHERE model_id = ANY(:m)"),
                               {"m": [probe.model.model_id, cnn.model.model_id]}).scalar()
    assert n_scored == 2 * N

    res = evaluate_classifier(probe.model.label, baselines=[cnn.model.label], session=session,
                              top_n=[round(0.01 * N)], plots=tmp_path / "plots")
    lin, base = res["models"][probe.model.label], res["models"][cnn.model.label]
    print(f"evaluated on {res['n_eval']} unseen sources with {res['n_lenses']} lenses; probe trained on "
          f"{probe.report['train_lenses']}:{probe.report['train_nonlenses']}")
    print(format_metrics("linear probe", lin))
    print(format_metrics("supervised CNN", base))
    assert res["n_lenses"] >= 60 and res["n_eval"] > N / 3
    assert {"auc", "tpr0", "tpr10", "top_n"} <= set(lin) and len(res["plots"]) == 3
    assert lin["auc"] >= MIN_AUC
    assert base["auc"] >= 0.65  # 400 CPU steps from scratch on 80 lenses (the issue compares, it sets no goal)
    # the ranking beats random selection, as average precision (random: the lens rate) and as precision in the
    # top 1% (measured 20-30x the lens rate; with 20 held-out lenses, on 5,000 cutouts, it was sometimes 0)
    base_rate = res["n_lenses"] / res["n_eval"]
    assert lin["average_precision"] >= 2 * base_rate
    assert lin["top_n"][0]["n"] == round(0.01 * N) and lin["top_n"][0]["precision"] >= 5 * base_rate
