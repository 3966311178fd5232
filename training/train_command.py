"""`discoseg train`: a COCO-format dataset in, a model bundle out (docs/design.md, Training
schedule).

Besides the files and the run's switches, the options are TrainConfig's fields, each with the
default and help text declared next to the field (training.config.setting).
"""

import inspect
import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from training.config import DATA, RUN, TrainConfig
from training.errors import check_choice, fail, user_errors


def train_command(
    *,
    data: Annotated[
        Path, typer.Option("--data", help="COCO annotation JSON of the training images.")
    ],
    images: Annotated[
        Path,
        typer.Option("--images", help="Folder the JSON's image file_name entries are relative to."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Model bundle to write after every phase; OUT.state (for --resume) and "
            "OUT.log.jsonl (one JSON record per step and per phase) are written beside it.",
        ),
    ],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Where proposals are cached between runs (default: .proposals beside OUT).",
            rich_help_panel=DATA,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run from OUT and OUT.state, skipping the phases it "
            "completed; the settings must be the same as the interrupted run's.",
            rich_help_panel=RUN,
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show progress bars.", rich_help_panel=RUN),
    ] = True,
    **settings: Any,
) -> None:
    """Train a model from tags, boxes or masks and write a model bundle.

    DISCO schedule: a warm start of the conditional network from the annotation
    alone, then --rounds of P-step (Mask R-CNN on K samples) and C-step, then a
    last P-step.

    Several GPUs or nodes: run the same command through torchrun, e.g.
    torchrun --nproc-per-node 4 -m training.cli train --data ... --out model.pt
    (each process trains on its share of the images; gradients are averaged).
    """
    for setting in fields(TrainConfig):
        if "choices" in setting.metadata:
            check_choice(_flag(setting), settings[setting.name], setting.metadata["choices"])
    preset = settings["preset"]
    if settings["coco_weights"] is not None and preset != "paper":
        fail(f"--init loads a ResNet-50 Mask R-CNN: it needs --preset paper, not {preset}")
    if out.is_dir():
        fail(f"--out must be a bundle file, {out} is a folder")
    # Imported here so that `--help` and option errors do not pay for torch.
    from training.run import train
    from training.trainer import log_path, state_path

    with user_errors():
        config = TrainConfig(**settings)
    main_process = os.environ.get("RANK", "0") == "0"
    resumable = out.is_file() and state_path(out).is_file()
    if resume and not resumable and main_process:
        typer.echo(f"nothing to resume at {out}: starting a new run", err=True)
    if not resume and main_process:
        log_path(out).unlink(missing_ok=True)  # a new run's log describes only the new bundle
    try:
        with user_errors():
            train(
                config,
                annotations=data,
                images=images,
                out=out,
                resume=resume,
                cache_dir=cache_dir,
                progress=progress,
            )
    except FloatingPointError as error:
        fail(f"training diverged ({error}); {out} holds the last completed phase", code=1)
    if main_process:
        typer.echo(f"wrote {out} (log {log_path(out)})")


def _flag(setting) -> str:
    return setting.metadata.get("flag", "--" + setting.name.replace("_", "-"))


def _option(setting) -> inspect.Parameter:
    """The keyword parameter of a TrainConfig field: its option, help, panel and default."""
    metadata = setting.metadata
    option = typer.Option(
        _flag(setting),
        help=metadata["help"],
        metavar=metadata.get("metavar", "|".join(metadata.get("choices", ())) or None),
        rich_help_panel=metadata["panel"],
    )
    # A field typed by its choices (Literal) takes its value as a str, checked above.
    kind = str if "choices" in metadata else setting.type
    return inspect.Parameter(
        setting.name, inspect.Parameter.KEYWORD_ONLY, default=setting.default,
        annotation=Annotated[kind, option],
    )


# The options typer reads: the required files, one option per TrainConfig field, then the
# run's switches (--help shows the panels in the order of their first option).
_parameters = [p for p in inspect.signature(train_command).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
train_command.__signature__ = inspect.Signature([
    *(p for p in _parameters if p.default is inspect.Parameter.empty),
    *(_option(setting) for setting in fields(TrainConfig)),
    *(p for p in _parameters if p.default is not inspect.Parameter.empty),
])
