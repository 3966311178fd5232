"""`discoseg train`: a COCO-format dataset in, a model bundle out (DESIGN section 5)."""

import os
from pathlib import Path
from typing import Annotated

import typer

from models.devices import DEVICES
from models.presets import PRESETS
from training.config import (
    LR_PREDICTION_FROM_SCRATCH,
    LR_PREDICTION_PRETRAINED,
    SCHEDULES,
    UNCLAIMED_CHOICES,
    TrainConfig,
)
from training.data.dataset import SUPERVISION_MODES
from training.errors import check_choice, fail, user_errors

DEFAULTS = TrainConfig()
_TRAINING = "Training schedule"
_OPTIMISATION = "Optimisation"
_DATA = "Data and proposals"
_RUN = "Run"


def _preset_defaults(setting: str) -> str:
    values = ", ".join(f"{name} {getattr(s, setting)}" for name, s in SCHEDULES.items())
    return f"Default: the preset's ({values})."


def train_command(
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
    supervision: Annotated[
        str,
        typer.Option(
            "--supervision",
            metavar="|".join(SUPERVISION_MODES),
            help="What training sees of the annotation: image-level tags, boxes, or masks "
            "(full supervision: trains the prediction network alone, the upper bound).",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.supervision,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            metavar="tiny|small|paper",
            help="Size of the Mask R-CNN and default schedule: tiny (ResNet-18, CPU-friendly; a "
            "short schedule: 100 images of 256 px train in under 5 minutes on 2 CPU cores), "
            "small (ResNet-18 at half resolution), paper (ResNet-50-FPN, torchvision's "
            "defaults).",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.preset,
    k: Annotated[
        int,
        typer.Option(
            "--k",
            help="Conditional samples per image: pseudo labels per P-step image, samples of "
            "Algorithm 1 in the C-step.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.k,
    gamma: Annotated[
        float,
        typer.Option(
            "--gamma",
            help="γ of the dissimilarity coefficient, in [0, 1]; the P-step's self-diversity "
            "weight is 1 - γ.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.gamma,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds",
            help="P-step + C-step alternations after the warm start; a last P-step follows. "
            + _preset_defaults("rounds"),
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    warm_start_epochs: Annotated[
        int | None,
        typer.Option(
            "--warm-start-epochs",
            help="Epochs of the conditional network's warm start from the annotation alone. "
            + _preset_defaults("warm_start_epochs"),
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    p_epochs: Annotated[
        int | None,
        typer.Option(
            "--p-epochs",
            help="Epochs of each round's P-step. " + _preset_defaults("p_epochs"),
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    c_epochs: Annotated[
        int | None,
        typer.Option(
            "--c-epochs",
            help="Epochs of each round's C-step. " + _preset_defaults("c_epochs"),
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    final_p_epochs: Annotated[
        int | None,
        typer.Option(
            "--final-p-epochs",
            help="Epochs of the last P-step. Under masks supervision the single supervised "
            "phase runs rounds * p + final-p epochs, the prediction network's epochs in DISCO. "
            + _preset_defaults("final_p_epochs"),
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Train the prediction network alone on pseudo masks made from the boxes: "
            "box-mask (the filled box) or grabcut (GrabCut in the box). Boxes supervision only.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.baseline,
    prior_weight: Annotated[
        float,
        typer.Option(
            "--prior-weight",
            help="Extra weight of the objectness prior in the warm start's detection stream "
            "(tags); the scores already carry it with a learned weight.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.prior_weight,
    seed_ratio: Annotated[
        float,
        typer.Option(
            "--seed-ratio",
            help="Tags warm start: besides each tag's top proposal, the proposals scoring at "
            "least this fraction of its detection score that overlap no other seed are seeds "
            "of further instances of the tag (1: the top one alone). In (0, 1].",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.seed_ratio,
    unclaimed: Annotated[
        str,
        typer.Option(
            "--unclaimed",
            metavar="|".join(UNCLAIMED_CHOICES),
            help="P-step given tags: what Mask R-CNN learns on the likely instances that a "
            "pseudo label leaves out for --max-instances-per-tag (positive margin, no overlap "
            "with its instances): ignore (neither object nor background) or background.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.unclaimed,
    lr_conditional: Annotated[
        float,
        typer.Option(
            "--lr-conditional",
            help="Adam learning rate of the conditional network.",
            rich_help_panel=_OPTIMISATION,
        ),
    ] = DEFAULTS.lr_conditional,
    lr_prediction: Annotated[
        float,
        typer.Option(
            "--lr-prediction",
            help="AdamW learning rate of the prediction network (Mask R-CNN). Default: "
            f"{LR_PREDICTION_FROM_SCRATCH:g} from scratch, {LR_PREDICTION_PRETRAINED:g} with "
            "--init or --backbone-weights.",
            rich_help_panel=_OPTIMISATION,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Images per step (per process under torchrun).",
            rich_help_panel=_OPTIMISATION,
        ),
    ] = DEFAULTS.batch_size,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of initialisation, sampling and batch order.",
            rich_help_panel=_OPTIMISATION,
        ),
    ] = DEFAULTS.seed,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="Images are downscaled so the longer side is at most this (never upscaled). "
            "Default: the preset's working size, the one it serves at ("
            + ", ".join(f"{name} {p.working_size}" for name, p in PRESETS.items())
            + ").",
            rich_help_panel=_DATA,
        ),
    ] = None,
    max_proposals: Annotated[
        int,
        typer.Option(
            "--max-proposals",
            help="Segment proposals per image (box-conditioned ones come on top).",
            rich_help_panel=_DATA,
        ),
    ] = DEFAULTS.max_proposals,
    prediction_threshold: Annotated[
        float,
        typer.Option(
            "--prediction-threshold",
            help="C-step: y_p is a sample of the prediction network's output, each detection "
            "scoring at least this an instance with probability its score; an image whose "
            "sample is empty gets the warm start's loss alone.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.prediction_threshold,
    max_instances_per_tag: Annotated[
        int,
        typer.Option(
            "--max-instances-per-tag",
            help="Tags: the most instances of one tagged class in a conditional sample (0: as "
            "many as have a positive margin). Extra ones are mostly background on the synthetic "
            "data (bench/results.md).",
            rich_help_panel=_TRAINING,
        ),
    ] = 1,
    noise_amplitude: Annotated[
        float | None,
        typer.Option(
            "--noise-amplitude",
            help="The conditional network's noise is uniform in [-a, a]; larger makes its K "
            "samples differ more (bench/noise_effect.py measures how much). Default: "
            "models.conditional.ConditionalConfig's, 30.",
            rich_help_panel=_TRAINING,
        ),
    ] = None,
    backbone_weights: Annotated[
        str | None,
        typer.Option(
            "--backbone-weights",
            metavar="FILE|ENUM",
            help="ImageNet weights of the ResNet body: a torch.save'd state_dict file, or a "
            "torchvision weights enum such as ResNet18_Weights.IMAGENET1K_V1 (downloaded). "
            "Default: random initialisation.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.backbone_weights,
    coco_weights: Annotated[
        str | None,
        typer.Option(
            "--init",
            metavar="coco|FILE",
            help="Start the prediction network from torchvision's COCO Mask R-CNN "
            "(maskrcnn_resnet50_fpn; its class-specific layers are replaced): coco downloads "
            "torchvision's weights, FILE is a torch.save'd state_dict of that model. Needs "
            "--preset paper; not with --backbone-weights.",
            rich_help_panel=_TRAINING,
        ),
    ] = DEFAULTS.coco_weights,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Where proposals are cached between runs (default: .proposals beside OUT).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            metavar="|".join(DEVICES),
            help="auto: CUDA when present (each torchrun process takes its LOCAL_RANK GPU).",
            rich_help_panel=_RUN,
        ),
    ] = DEFAULTS.device,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run from OUT and OUT.state, skipping the phases it "
            "completed; the settings must be the same as the interrupted run's.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Show progress bars.", rich_help_panel=_RUN),
    ] = True,
) -> None:
    """Train a model from tags, boxes or masks and write a model bundle.

    DISCO schedule: a warm start of the conditional network from the annotation
    alone, then --rounds of P-step (Mask R-CNN on K samples) and C-step, then a
    last P-step.

    Several GPUs or nodes: run the same command through torchrun, e.g.
    torchrun --nproc-per-node 4 -m training.cli train --data ... --out model.pt
    (each process trains on its share of the images; gradients are averaged).
    """
    check_choice("--supervision", supervision, SUPERVISION_MODES)
    # Imported here so that `--help` and option errors do not pay for torch.
    from models.conditional import ConditionalConfig
    from models.inference import InferenceConfig
    from training.run import train
    from training.trainer import log_path, state_path

    check_choice("--preset", preset, list(PRESETS))
    if coco_weights is not None and preset != "paper":
        fail(f"--init loads a ResNet-50 Mask R-CNN: it needs --preset paper, not {preset}")
    check_choice("--unclaimed", unclaimed, list(UNCLAIMED_CHOICES))
    if max_instances_per_tag < 0:
        fail(f"--max-instances-per-tag must be 0 or more, got {max_instances_per_tag}")
    if noise_amplitude is not None and noise_amplitude < 0:
        fail(f"--noise-amplitude must be 0 or more, got {noise_amplitude}")
    if out.is_dir():
        fail(f"--out must be a bundle file, {out} is a folder")
    with user_errors():
        config = TrainConfig(
            supervision=supervision,
            preset=preset,
            k=k,
            gamma=gamma,
            rounds=rounds,
            warm_start_epochs=warm_start_epochs,
            p_epochs=p_epochs,
            c_epochs=c_epochs,
            final_p_epochs=final_p_epochs,
            prior_weight=prior_weight,
            seed_ratio=seed_ratio,
            unclaimed=unclaimed,
            baseline=baseline,
            lr_conditional=lr_conditional,
            lr_prediction=lr_prediction,
            batch_size=batch_size,
            image_size=image_size,
            max_proposals=max_proposals,
            prediction_threshold=prediction_threshold,
            seed=seed,
            device=device,
            backbone_weights=backbone_weights,
            coco_weights=coco_weights,
        )
        inference = InferenceConfig(max_instances_per_tag=max_instances_per_tag or None)
    noise = {} if noise_amplitude is None else {"noise_amplitude": noise_amplitude}
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
                conditional_config=ConditionalConfig(
                    inference=inference, border_prior_weight=config.border_prior_weight, **noise
                ),
                progress=progress,
            )
    except FloatingPointError as error:
        fail(f"training diverged ({error}); {out} holds the last completed phase", code=1)
    if main_process:
        typer.echo(f"wrote {out} (log {log_path(out)})")
