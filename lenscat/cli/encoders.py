"""Command line: ``lenscat encoder`` (train, import, derive, from-classifier, list)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, RESTART_OPTION, needs_schema
from lenscat.io.output import write_rows


@click.group("encoder")
def encoder() -> None:
    """Image encoders (versioned): train, import, derive, from-classifier, list, evaluate."""


@encoder.command("train")
@click.option("--name", required=True, help="Encoder name; a new checkpoint becomes its next version.")
@click.option("--survey", "surveys", multiple=True, required=True, help="Train on this survey's cutouts (repeatable).")
@click.option(
    "--arch",
    default="resnet-small",
    show_default=True,
    type=click.Choice(["resnet-small", "resnet18", "resnet50"]),
    help="resnet-small trains in minutes on a CPU; resnet50 (2048-d) is for GPUs.",
)
@click.option(
    "--dim", type=click.IntRange(min=8, max=4000), default=None, help="Output dimension of resnet-small (default 128)."
)
@click.option(
    "--blocks",
    type=click.IntRange(min=1, max=8),
    default=None,
    help="Residual blocks per stage of resnet-small (default 1; 2 with --epochs 45 trains 4x longer "
    "and lifted the probe's AUC by 0.009 on average over five seeds, docs/benchmarks.md).",
)
@click.option(
    "--readout",
    type=click.Choice(["gap", "gap+annuli2"]),
    default=None,
    help="What resnet-small stores as the embedding: gap+annuli2 (default), the pooled 128-d "
    "vector beside the mean and maximum of the stage-2 map in three annuli (512-d; the "
    "arcs' ring shows there: linear-probe AUC 0.95-0.96 against 0.90-0.92), or gap, the "
    "pooled vector alone (128-d).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Passes over the training cutouts [default: resnet-small 15, resnet18/resnet50 5].",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="[default: 64]")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Initial SGD learning rate, cosine decay [default: resnet-small 0.2, others 0.06].",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=16),
    default=None,
    help="MoCo queue of negatives [default: resnet-small 1024, others 4096].",
)
@click.option(
    "--crop",
    type=click.IntRange(min=16),
    default=None,
    help="Centre crop the network sees, pixels [default: resnet-small 48; resnet18/resnet50 96, as Stein et al.].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.01),
    default=None,
    help="InfoNCE temperature [default: resnet-small 0.1, others 0.2].",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Steps of linear learning-rate warm-up before the cosine decay [default: resnet-small 50, others 0].",
)
@click.option(
    "--zero-init-residual/--no-zero-init-residual",
    default=None,
    help="Start every residual block as the identity (its last BatchNorm scale at zero) "
    "[default: resnet-small yes, resnet18/resnet50 no].",
)
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding of this encoder is averaged over: 1 as it is, "
    "4 its 90-degree turns, 8 those and their mirror images (exactly rotation- and "
    "flip-invariant, 8 times the embedding cost) [default: resnet-small 8, resnet18/resnet50 1].",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=2),
    default=20000,
    show_default=True,
    help="Train on a seeded random subset of at most this many cutouts.",
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: LENSCAT_DEVICE, else CUDA when available).")
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def encoder_train_cmd(
    name: str,
    surveys: tuple[str, ...],
    arch: str,
    dim: int | None,
    blocks: int | None,
    readout: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    queue_size: int | None,
    crop: int | None,
    temperature: float | None,
    warmup_steps: int | None,
    zero_init_residual: bool | None,
    views: str | None,
    max_images: int,
    max_steps: int | None,
    seed: int,
    device: str | None,
    restart: bool,
    as_json: bool,
) -> None:
    """Self-supervised MoCo-v2 pre-training with Stein et al.'s augmentations (reddening, flips,
    rotations, 0.9-1.1 scaling, PSF blur, +-7 px jitter with a 96 px centre crop, noise).

    Options left out take the architecture's recipe: for resnet-small the CPU recipe measured
    in docs/benchmarks.md (15 epochs, 48 px crop, temperature 0.1, queue 1,024, lr 0.2 after a
    50-step warm-up, residual blocks starting as the identity, embeddings averaged over the 8
    turns and flips of the crop, stored as the pooled vector beside the stage-2 map's annuli), for
    resnet18/resnet50 Stein et al.'s 96 px setting. The registered version records every value.
    The training state is saved every epoch, every 10 minutes and on Ctrl-C (in
    LENSCAT_HOME/training); the same command resumes an interrupted run.
    """
    from lenscat.embeddings.encoder_train import train_encoder

    if arch != "resnet-small" and (dim or blocks or readout):
        raise click.UsageError("--dim, --blocks and --readout apply to --arch resnet-small only")
    hp: dict[str, Any] = {k: v for k, v in (("output_dim", dim), ("blocks", [blocks] * 4 if blocks else None)) if v}
    model, created, metrics = train_encoder(
        name,
        list(surveys),
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_images=max_images,
        max_steps=max_steps,
        queue_size=queue_size,
        crop=crop,
        temperature=temperature,
        warmup_steps=warmup_steps,
        zero_init_residual=zero_init_residual,
        views=int(views) if views else None,
        readout=readout,
        seed=seed,
        device=device,  # LENSCAT_DEVICE by default (lenscat.registry.device)
        hparams=hp,
        resume=not restart,
    )
    out = {
        "encoder": model.label,
        "created": created,
        "architecture": model.architecture,
        "dim": model.output_dim,
        "checkpoint_sha256": model.checkpoint_sha256,
        **metrics,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        state = "registered" if created else "identical to the existing"
        resumed = f", resumed at step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
        for note in metrics.get("band_setup", []):
            click.echo(note)
        click.echo(
            f"encoder {model.label} ({state}): {model.architecture}, {model.output_dim}-d, "
            f"{metrics['steps']} steps in {metrics['seconds']:.0f} s{resumed}, "
            f"final loss {metrics['final_loss']:.3f}"
        )


@encoder.command("import")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Encoder name, e.g. stein2022-moco.")
@click.option("--arch", default="resnet50", show_default=True, type=click.Choice(["resnet50"]))
@click.option("--description", default=None)
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default="1",
    show_default=True,
    help="Orientations of the crop every embedding is averaged over (see `encoder train --views`).",
)
@needs_schema
def encoder_import_cmd(checkpoint: Path, name: str, arch: str, description: str | None, views: str) -> None:
    """Register a torchvision ResNet-50 state dict (e.g. Stein et al.'s MoCo release; fc is dropped)."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoder_import import import_encoder

    with session_scope() as s:
        model, created = import_encoder(
            checkpoint, name, arch=arch, session=s, description=description, views=int(views)
        )
    click.echo(
        f"encoder {model.label} {'registered' if created else 'already registered'}: "
        f"{model.architecture}, {model.output_dim}-d, sha256 {model.checkpoint_sha256}"
    )


def _check_derive(views: str | None, readout: str | None, **_: Any) -> None:
    """``encoder derive`` changes something (checked before the database starts)."""
    if views is None and readout is None:
        raise click.UsageError("give --views and/or --readout")


@encoder.command("derive")
@click.argument("source")
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding of the new version is averaged over (see `encoder train --views`).",
)
@click.option(
    "--readout",
    type=click.Choice(["gap", "gap+annuli2"]),
    default=None,
    help="What the new version stores (see `encoder train --readout`; gap+annuli2 for resnet-small "
    "only): an encoder trained with the pooled 128-d readout gains the stage-2 annuli.",
)
@click.option(
    "--name", default=None, help="Register under this name [default: the source's name, as its next version]."
)
@click.option("--description", default=None)
@needs_schema(before=_check_derive)
def encoder_derive_cmd(
    source: str, views: str | None, readout: str | None, name: str | None, description: str | None
) -> None:
    """A new version of SOURCE (NAME or NAME@VERSION) with the same weights and another --views or --readout.

    Nothing is trained: the checkpoint is the source's with its embedding rule changed, the new
    version's parent is the source, and it keeps the source's hyper-parameters, training-set hash
    and metrics. Its embeddings are new (`lenscat embed --encoder NEW`, or `lenscat reprocess`).
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoder_derive import derive_encoder

    with session_scope() as s:
        src, model, created = derive_encoder(
            source, views=int(views) if views else None, readout=readout, name=name, description=description, session=s
        )
    asked = " and ".join([f"{views} view(s)"] * bool(views) + [f"readout {readout}"] * bool(readout))
    if model.model_id == src.model_id:
        click.echo(f"encoder {src.label} already has {asked}: nothing registered")
        return
    state = "registered" if created else "already registered"
    click.echo(
        f"encoder {model.label} {state}: the weights of {src.label}, {model.output_dim}-d embeddings "
        f"with {asked}; embed with `lenscat embed --encoder {model.label}`"
    )


@encoder.command("from-classifier")
@click.option(
    "--classifier",
    "classifier",
    required=True,
    help="An image classifier (cnn, finetune, ...): NAME (latest version) or NAME@VERSION.",
)
@click.option("--name", default=None, help="Encoder name [default: CLASSIFIER-features].")
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding is averaged over [default: those the classifier "
    "averages its score over].",
)
@click.option("--description", default=None)
@needs_schema
def encoder_from_classifier_cmd(classifier: str, name: str | None, views: str | None, description: str | None) -> None:
    """Register a trained image classifier's penultimate layer as an encoder version.

    Similarity that knows lenses: the embedding of a cutout is the classifier's backbone output
    (the input of its linear head) on the crop it sees, L2-normalised. A network trained on lenses
    (and injected lenses) puts lenses next to lenses, so `lenscat similar --encoder NAME` and
    `lenscat encoder evaluate --name NAME` can use it beside a self-supervised encoder. Nothing is
    trained; the version's parent is the classifier. Fill its vectors with `lenscat embed --encoder
    NAME` (or `lenscat reprocess`). The same classifier version gives the same encoder version.
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoder_derive import encoder_from_classifier

    with session_scope() as s:
        clf, model, created = encoder_from_classifier(
            classifier, name=name, views=int(views) if views else None, description=description, session=s
        )
    state = "registered" if created else "already registered"
    click.echo(
        f"encoder {model.label} {state}: the penultimate layer of classifier {clf.label}, "
        f"{model.output_dim}-d embeddings averaged over {model.input_spec.get('views', 1)} view(s); "
        f"embed with `lenscat embed --encoder {model.label}`"
    )


@encoder.command("list")
@FORMAT_OPTION
@needs_schema
def encoder_list_cmd(fmt: str) -> None:
    """Encoder versions with their provenance and number of embeddings."""
    from lenscat.db.session import session_scope
    from lenscat.registry.versions import list_models

    with session_scope() as s:
        rows = list_models("encoder", session=s)
    cols = [
        "model_id",
        "name",
        "version",
        "architecture",
        "dim",
        "crop",
        "views",
        "readout",
        "origin",
        "parent",
        "n_embeddings",
        "checkpoint_sha256",
        "training_set_sha256",
        "created_at",
    ]
    write_rows(cols, [[r[c] for c in cols] for r in rows], fmt, sys.stdout)
