"""Science check (issue 30): a lens finder trained one way, judged on a survey made another way.

The user's situation: a survey nobody tuned on, a few dozen known lenses. Here that survey is
rendered by :mod:`lenscat.simulate.alt`, a second simulator written independently of the
project's lenstronomy one (its own SIE ray-shooting, galaxy, source and impostor populations,
double-Gaussian PSF, CCD noise with cosmic rays), with a fixed seed (SEED, the one docs/benchmarks.md
records for this check; ``LENSCAT_SCIENCE_SEED=<n>`` picks another, ``LENSCAT_SCIENCE_SEED=random`` a
new one, printed so a failure can be reproduced):

* a *training* survey (TRAIN_N cutouts, TRAIN_FRACTION lenses, labels imported from its truth) and
  an *evaluation* survey (TEST_N cutouts, TEST_FRACTION lenses) drawn from the same independent
  simulator with different seeds, as a user's labelled and unlabelled fields would be;
* an injection training set painted with lenstronomy (the *other* path: SIE + shear, Sersic +
  clumpy sources, a Gaussian PSF of the survey's FWHM) onto INJECT red galaxies of the training
  survey's own cutouts (``lenscat simulate inject``);
* the default classifier recipe (``lenscat classifier train`` with no architecture flags) and the
  36-number radial colour-profile baseline, trained on exactly the same sources and labels, scored
  by the score job, evaluated on the evaluation survey, which neither saw, and their rank-average
  ensemble.

Figures (AUC, TPR0, TPR10, precision in the top N) are printed and recorded in docs/benchmarks.md;
the issue's goals are there, not here (never a timing or goal threshold in a test): the test
asserts floors below every seed measured, and that the network does not lose to its baseline.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.science_seed import science_seed

pytestmark = pytest.mark.slow

TRAIN_N, TRAIN_FRACTION = 3000, 0.05  # 150 labelled lenses (the protocol)
TEST_N, TEST_FRACTION = 3000, 0.02  # 60 lenses the networks never saw, in a survey they never saw
INJECT = 1500
STAMP = 96  # pixels; the networks read the central 64-80
SEED = 777  # the training survey's; the evaluation survey's is SEED + 1 (docs/benchmarks.md: AUC 0.952)
MIN_AUC_DEFAULT = 0.85
MIN_AUC_RADIAL = 0.6


def test_default_recipe_transfers_to_an_independent_survey(session, tmp_path):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.ensemble import train_ensemble
    from lenscat.classifiers.evaluation_plot import format_metrics
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.ranking import evaluate_classifier
    from lenscat.classifiers.scoring import plan_score_job, score_chunk
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.jobs.service import run_here
    from lenscat.simulate.alt import simulate_survey_alt
    from lenscat.simulate.injection import inject_survey

    seed = science_seed(SEED)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t0
        times[step] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()

    train_path, test_path = tmp_path / "train.h5", tmp_path / "test.h5"
    simulate_survey_alt(TRAIN_N, TRAIN_FRACTION, seed, train_path, stamp=STAMP, progress=False)
    simulate_survey_alt(TEST_N, TEST_FRACTION, seed + 1, test_path, stamp=STAMP, progress=False)
    lap("simulate")
    ingest_sources(train_path, "xfer-train")
    ingest_sources(test_path, "xfer-test")
    for path, survey in ((train_path, "xfer-train"), (test_path, "xfer-test")):
        import_labels(path, label_col="is_lens", survey=survey, origin="simulation", session=session)
    lap("ingest")
    inj = inject_survey("xfer-train", INJECT, tmp_path / "inject.h5", seed=seed % 1000, session=session, progress=False)
    lap("inject")

    training = {"session": session, "surveys": ["xfer-train", inj.survey], "test_fraction": 0.0, "seed": seed % 1000}
    cnn = train_image_classifier_version("xfer-default", **training)
    lap("train default")
    radial = train_image_classifier_version("xfer-radial", arch="radial", **training)
    lap("train radial")
    for clf in (cnn.model, radial.model):
        run_here(
            plan_score_job(clf, chunk_size=1000, surveys=["xfer-test"], session=session).job_id,
            score_chunk,
            session=session,
        )
    ens = train_ensemble(
        "xfer-ensemble", [cnn.model.label, radial.model.label], method="rank", surveys=["xfer-test"], session=session
    )
    run_here(
        plan_score_job(ens.model, chunk_size=1000, surveys=["xfer-test"], session=session).job_id,
        score_chunk,
        session=session,
    )
    lap("score")

    n_test_lenses = round(TEST_N * TEST_FRACTION)
    res = evaluate_classifier(
        cnn.model.label,
        baselines=[radial.model.label, ens.model.label],
        surveys=["xfer-test"],
        origins=["simulation"],
        top_n=[n_test_lenses],
        session=session,
    )
    lap("evaluate")
    m = res["models"]
    print(
        f"evaluated on {res['n_eval']} sources of an unseen survey ({res['n_lenses']} lenses); trained on "
        f"{cnn.report['train_lenses']} lenses ({INJECT} injected) : {cnn.report['train_nonlenses']} non-lenses; "
        f"seconds {times}"
    )
    for label, name in (
        (cnn.model.label, "default recipe"),
        (radial.model.label, "radial baseline"),
        (ens.model.label, "rank ensemble"),
    ):
        print(format_metrics(name, m[label]))
    assert res["n_eval"] == TEST_N and res["n_lenses"] == n_test_lenses
    assert m[radial.model.label]["auc"] >= MIN_AUC_RADIAL
    assert m[cnn.model.label]["auc"] >= MIN_AUC_DEFAULT
    # the finding this check exists for: the network must not lose to the 36-number baseline
    assert m[cnn.model.label]["auc"] > m[radial.model.label]["auc"]
