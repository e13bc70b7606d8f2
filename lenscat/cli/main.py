"""The ``lenscat`` command line: the root group, the one place where every command is registered, and ``main()``.

Each command lives in the module of its domain (``lenscat/cli/<domain>.py``); this module attaches
them to the root group and to the groups that gather commands of several domains (``ingest``,
``encoder``, ``classifier``, ``spectra``).
"""

from __future__ import annotations

import sys

import click

from lenscat.cli import (
    catalogue,
    classifiers,
    db,
    embeddings,
    encoders,
    ensemble,
    export,
    grading,
    images,
    jobs,
    labels,
    learning,
    literature,
    modelling,
    proposal,
    ranking,
    simulate,
    sky,
    skymap,
    spectra,
    spectra_detectors,
    spectra_eval,
    web,
)
from lenscat.cli.common import _err, error_message
from lenscat.errors import LenscatError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lenscat")
def cli() -> None:
    """lenscat: find strong gravitational lenses in survey-scale catalogues.

    With LENSCAT_DATABASE_URL unset, lenscat runs its own PostgreSQL (with pgvector) under
    LENSCAT_HOME (default ~/.lenscat), started on first use.
    """


@cli.group()
def ingest() -> None:
    """Load source catalogues and literature lens lists."""


# ------------------------------------------------------------------------- registration
ingest.add_command(catalogue.ingest_sources_cmd)
ingest.add_command(literature.ingest_literature_cmd)
ingest.add_command(images.ingest_cutouts_cmd)
ingest.add_command(embeddings.ingest_embeddings_cmd)

encoders.encoder.add_command(embeddings.encoder_evaluate_cmd)

classifiers.classifier.add_command(ranking.classifier_evaluate_cmd)
classifiers.classifier.add_command(ensemble.ensemble_cmd)
classifiers.classifier.add_command(ensemble.anomaly_cmd)

for _cmd in (
    spectra_detectors.matched_filter_cmd,
    spectra_detectors.oii_filter_cmd,
    spectra_detectors.train_cmd,
    spectra_detectors.ensemble_cmd,
    spectra_detectors.continuum_group,
    spectra_eval.inject_cmd,
    spectra_eval.evaluate_cmd,
):
    spectra.spectra.add_command(_cmd)

for _cmd in (
    db.db,
    db.sql_cmd,
    literature.crossmatch_cmd,
    sky.cone_cmd,
    skymap.skymap,
    simulate.simulate,
    images.cutout_cmd,
    encoders.encoder,
    embeddings.embed_cmd,
    embeddings.similar_cmd,
    jobs.jobs,
    jobs.worker_cmd,
    jobs.reprocess_cmd,
    labels.labels,
    classifiers.classifier,
    ranking.top_cmd,
    spectra.spectra,
    grading.grader,
    grading.grade_cmd,
    grading.grades,
    export.export_cmd,
    modelling.model,
    proposal.evidence_cmd,
    proposal.proposal_cmd,
    learning.learn,
    web.serve_cmd,
):
    cli.add_command(_cmd)


def main() -> None:
    """Entry point: one-line errors, resumable interrupts."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        why = exc.__context__
        _err(
            f"lenscat: interrupted; {why}"
            if isinstance(why, KeyboardInterrupt) and str(why)
            else "lenscat: interrupted; re-run the same command to resume"
        )
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _err(
            f"lenscat: interrupted; {exc}"
            if str(exc)
            else "lenscat: interrupted; committed batches are kept, re-run the same command to resume"
        )
        sys.exit(130)
    except LenscatError as exc:
        _err(f"lenscat: error: {error_message(exc)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
