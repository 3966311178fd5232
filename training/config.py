"""Training settings, filled by the CLI; defaults are the documented ones."""

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from models.devices import DEVICES
from models.presets import PRESETS
from training.data.dataset import SUPERVISION_MODES, Supervision


@dataclass(frozen=True)
class Schedule:
    """Phase lengths of the DISCO schedule (docs/design.md, Training schedule): the rounds of P-step
    and C-step, and each phase's epochs (passes over the training images)."""

    warm_start_epochs: int
    rounds: int
    p_epochs: int
    c_epochs: int
    final_p_epochs: int

    @property
    def prediction_epochs(self) -> int:
        """The prediction network's epochs: every P-step's."""
        return self.rounds * self.p_epochs + self.final_p_epochs


# The larger presets train on GPUs: two rounds and 16 epochs of the prediction network.
_TWO_ROUNDS = Schedule(warm_start_epochs=12, rounds=2, p_epochs=4, c_epochs=1, final_p_epochs=8)

# Each preset's default schedule. tiny's 12 prediction epochs train 100 images of 256 px from
# full masks in under 5 minutes on 2 CPU cores (docs/results.md). Its 16 warm-start epochs (6 s
# each on the demo's 96 images) made the tag picks right 140 times of 249 against 120 at 4.
SCHEDULES: dict[str, Schedule] = {
    "tiny": Schedule(warm_start_epochs=16, rounds=1, p_epochs=4, c_epochs=1, final_p_epochs=8),
    "small": _TWO_ROUNDS,
    "paper": _TWO_ROUNDS,
}


UNCLAIMED_CHOICES = ("ignore", "background")

# AdamW rates of the prediction network. From scratch, fully supervised on 100 synthetic images,
# the tiny preset reached mAP_r@0.5 0.745 in 12 epochs at 2e-3 against 0.725 at 1e-3;
# pretrained weights are fine-tuned gently, as detectors usually are.
LR_PREDICTION_FROM_SCRATCH = 2e-3
LR_PREDICTION_PRETRAINED = 1e-4


# Help panels of `discoseg train --help`.
TRAINING, OPTIMISATION, DATA, RUN = "Training schedule", "Optimisation", "Data and proposals", "Run"


def setting(default: Any, help: str, *, panel: str = TRAINING, **option: Any) -> Any:
    """A TrainConfig field with what its `discoseg train` option needs (training.train_command):
    `help` and `panel` for --help; in `option`, `flag` (instead of --field-name), `metavar`,
    and `choices` (checked by the command before the config is built)."""
    return field(default=default, metadata={"help": help, "panel": panel, **option})


def _preset_defaults(phase: str) -> str:
    values = ", ".join(f"{name} {getattr(s, phase)}" for name, s in SCHEDULES.items())
    return f"Default: the preset's ({values})."


@dataclass(frozen=True)
class TrainConfig:
    """The DISCO schedule (docs/design.md, Training schedule) and its optimisation settings; each
    field's help is its `discoseg train` option's. A None default is completed in __post_init__ from
    the preset or the weights."""

    supervision: Supervision = setting(
        "tags",
        "What training sees of the annotation: image-level tags, boxes, or masks (full "
        "supervision: trains the prediction network alone, the upper bound).",
        choices=SUPERVISION_MODES,
    )
    preset: str = setting(
        "tiny",
        "Size of the Mask R-CNN and default schedule: tiny (ResNet-18, CPU-friendly; a short "
        "schedule: on 2 CPU cores 100 images of 256 px train from masks in about 2 minutes, "
        "from tags in 4.5 to 7), small "
        "(ResNet-18 at half resolution), paper (ResNet-50-FPN, torchvision's defaults).",
        choices=tuple(SCHEDULES),
    )
    k: int = setting(
        10,
        "Conditional samples per image: the pseudo labels of each image in a P-step (drawn once "
        "per P-step), the samples of Algorithm 1 in the C-step.",
    )
    gamma: float = setting(
        0.5,
        "γ of the dissimilarity coefficient, in [0, 1]; the P-step's self-diversity weight is "
        "1 - γ.",
    )
    rounds: int | None = setting(
        None,
        "P-step + C-step alternations after the warm start; a last P-step follows. "
        + _preset_defaults("rounds"),
    )
    warm_start_epochs: int | None = setting(
        None,
        "Epochs of the conditional network's warm start from the annotation alone. "
        + _preset_defaults("warm_start_epochs"),
    )
    p_epochs: int | None = setting(
        None, "Epochs of each round's P-step. " + _preset_defaults("p_epochs")
    )
    c_epochs: int | None = setting(
        None, "Epochs of each round's C-step. " + _preset_defaults("c_epochs")
    )
    final_p_epochs: int | None = setting(
        None,
        "Epochs of the last P-step. Under masks supervision the single supervised phase runs "
        "rounds * p + final-p epochs, the prediction network's epochs in DISCO. "
        + _preset_defaults("final_p_epochs"),
    )
    prior_weight: float = setting(
        0.0,
        "Extra weight of the objectness prior in the warm start's detection stream (tags); the "
        "scores already carry it with a learned weight.",
    )
    seed_ratio: float = setting(
        1.0,
        "Tags warm start: besides each tag's top proposal, the proposals scoring at least this "
        "fraction of its detection score that overlap no other seed are seeds of further "
        "instances of the tag (1: the top one alone). In (0, 1].",
    )
    unclaimed: str = setting(
        "ignore",
        "P-step given tags: what Mask R-CNN learns on the likely instances that a pseudo label "
        "leaves out for --max-instances-per-tag (positive margin, no overlap with its "
        "instances): ignore (neither object nor background) or background.",
        choices=UNCLAIMED_CHOICES,
    )
    max_instances_per_tag: int = setting(
        1,
        "Tags: the most instances of one tagged class in a conditional sample (0: as many as "
        "have a positive margin). Extra ones are mostly background on the synthetic data "
        "(docs/results.md).",
    )
    noise_amplitude: float = setting(
        30.0,
        "The conditional network's noise is uniform in [-a, a]; larger makes its K samples "
        "differ more (bench/noise_effect.py measures how much).",
    )
    prediction_threshold: float = setting(
        0.1,
        "C-step: y_p is a sample of the prediction network's output, each detection scoring at "
        "least this an instance with probability its score; an image whose sample is empty "
        "gets the warm start's loss alone.",
    )
    baseline: str | None = setting(
        None,
        "Train the prediction network alone on pseudo masks made from the boxes: box-mask (the "
        "filled box) or grabcut (GrabCut in the box). Boxes supervision only.",
    )
    backbone_weights: str | None = setting(
        None,
        "ImageNet weights of the ResNet body: a torch.save'd state_dict file, or a torchvision "
        "weights enum such as ResNet18_Weights.IMAGENET1K_V1 (downloaded). Default: random "
        "initialisation.",
        metavar="FILE|ENUM",
    )
    coco_weights: str | None = setting(
        None,
        "Start the prediction network from torchvision's COCO Mask R-CNN (maskrcnn_resnet50_fpn; "
        "its class-specific layers are replaced): coco downloads torchvision's weights, FILE is "
        "a torch.save'd state_dict of that model. Needs --preset paper; not with "
        "--backbone-weights.",
        flag="--init",
        metavar="coco|FILE",
    )
    lr_conditional: float = setting(
        1e-3, "Adam learning rate of the conditional network.", panel=OPTIMISATION
    )
    lr_prediction: float | None = setting(
        None,
        "AdamW learning rate of the prediction network (Mask R-CNN). Default: "
        f"{LR_PREDICTION_FROM_SCRATCH:g} from scratch, {LR_PREDICTION_PRETRAINED:g} with --init "
        "or --backbone-weights.",
        panel=OPTIMISATION,
    )
    lr_drop_epochs: int = setting(
        3,
        "The prediction network's last epochs (of its last P-step, or of the supervised phase) "
        "run at a tenth of its learning rate, as Mask R-CNN's schedules end (0: never).",
        panel=OPTIMISATION,
    )
    max_grad_norm: float = setting(
        5.0,
        "The prediction network's gradients are scaled down to this norm when larger (0: never). "
        "The median norm is about 0.2, so only loss spikes are clipped; unclipped, one spike "
        "late in training can leave Mask R-CNN's classifier diverged.",
        panel=OPTIMISATION,
    )
    batch_size: int = setting(
        2, "Images per step (per process under torchrun).", panel=OPTIMISATION
    )
    seed: int = setting(
        0, "Seed of initialisation, sampling and batch order.", panel=OPTIMISATION
    )
    image_size: int | None = setting(
        None,
        "Images are downscaled so the longer side is at most this (never upscaled). Default: "
        "the preset's working size, the one it serves at ("
        + ", ".join(f"{name} {p.working_size}" for name, p in PRESETS.items())
        + ").",
        panel=DATA,
    )
    max_proposals: int = setting(
        300, "Segment proposals per image (box-conditioned ones come on top).", panel=DATA
    )
    device: str = setting(
        "auto",
        "auto: CUDA when present (each torchrun process takes its LOCAL_RANK GPU).",
        panel=RUN,
        choices=DEVICES,
    )

    def __post_init__(self) -> None:
        if self.preset not in SCHEDULES:
            raise ValueError(f"unknown preset {self.preset!r}; presets are {sorted(SCHEDULES)}")
        # frozen: the defaults that depend on the preset are set once, here
        for phase in fields(Schedule):
            if getattr(self, phase.name) is None:
                default = getattr(SCHEDULES[self.preset], phase.name)
                object.__setattr__(self, phase.name, default)
        if self.image_size is None:
            object.__setattr__(self, "image_size", PRESETS[self.preset].working_size)
        if self.lr_prediction is None:
            pretrained = self.backbone_weights is not None or self.coco_weights is not None
            lr = LR_PREDICTION_PRETRAINED if pretrained else LR_PREDICTION_FROM_SCRATCH
            object.__setattr__(self, "lr_prediction", lr)
        checks = {
            "k must be at least 1": self.k >= 1,
            "gamma must be in [0, 1]": 0 <= self.gamma <= 1,
            "rounds must be >= 0": self.rounds >= 0,
            "epochs must be >= 0": min(
                self.warm_start_epochs, self.p_epochs, self.c_epochs, self.final_p_epochs
            )
            >= 0,
            "learning rates must be positive": min(self.lr_conditional, self.lr_prediction) > 0,
            "max_grad_norm must be 0 or more": self.max_grad_norm >= 0,
            "lr_drop_epochs must be 0 or more": self.lr_drop_epochs >= 0,
            "seed_ratio must be in (0, 1]": 0 < self.seed_ratio <= 1,
            "unclaimed must be ignore or background": self.unclaimed in UNCLAIMED_CHOICES,
            "batch_size must be at least 1": self.batch_size >= 1,
            "image_size must be at least 32": self.image_size >= 32,
            "max_proposals must be at least 1": self.max_proposals >= 1,
            "max_instances_per_tag must be 0 or more": self.max_instances_per_tag >= 0,
            "noise_amplitude must be 0 or more": self.noise_amplitude >= 0,
            "device must be auto, cpu or cuda": self.device in DEVICES,
            "give backbone weights or COCO weights, not both": self.backbone_weights is None
            or self.coco_weights is None,
            "baseline must be box-mask or grabcut, with boxes supervision": self.baseline is None
            or (self.baseline in ("box-mask", "grabcut") and self.supervision == "boxes"),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    @property
    def border_prior_weight(self) -> float:
        """The conditional network's boundary-prior weight (models.conditional): off given
        boxes, where it cost the box DISCO row 0.08 mAP_r at IoU 0.5 (docs/results.md)."""
        return 0.0 if self.supervision == "boxes" else 1.0

    @property
    def schedule(self) -> Schedule:
        return Schedule(**{phase.name: getattr(self, phase.name) for phase in fields(Schedule)})

    def as_dict(self) -> dict:
        return asdict(self)
