"""Training settings, filled by the CLI; defaults are the documented ones."""

from dataclasses import asdict, dataclass, fields

from models.devices import DEVICES
from models.presets import PRESETS
from training.data.dataset import Supervision


@dataclass(frozen=True)
class Schedule:
    """Phase lengths of the DISCO schedule (DESIGN section 5): the rounds of P-step and C-step,
    and each phase's epochs (passes over the training images)."""

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

# Each preset's default schedule. tiny's 12 prediction epochs fit the 5 minutes that 100 images
# of 256 px may take on 2 CPU cores (docs/results.md).
SCHEDULES: dict[str, Schedule] = {
    "tiny": Schedule(warm_start_epochs=4, rounds=1, p_epochs=4, c_epochs=1, final_p_epochs=8),
    "small": _TWO_ROUNDS,
    "paper": _TWO_ROUNDS,
}


UNCLAIMED_CHOICES = ("ignore", "background")

# AdamW rates of the prediction network. From scratch, fully supervised on 100 synthetic images,
# the tiny preset reached mAP_r@0.5 0.745 in 12 epochs at 2e-3 against 0.725 at 1e-3;
# pretrained weights are fine-tuned gently, as detectors usually are.
LR_PREDICTION_FROM_SCRATCH = 2e-3
LR_PREDICTION_PRETRAINED = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    """The DISCO schedule (DESIGN section 5) and its optimisation settings.

    supervision: what training sees: "tags", "boxes", or "masks" (full supervision, the upper
        bound: only the prediction network is trained, on the ground truth).
    k: conditional samples per image (pseudo labels in the P-step, Algorithm 1 in the C-step).
    gamma: γ of the dissimilarity coefficient; the P-step's self-diversity weight is 1 - γ.
    rounds, *_epochs: the schedule (`Schedule`); None takes the preset's (`SCHEDULES`).
    prior_weight: extra weight of the objectness prior in the warm start's detection stream
        (tags); the scores carry the prior with a learned weight already. Measured top-1 IoU
        per ground-truth instance after the warm start (dev data): 0.47 at 0, 0.42 at 1, 0.38
        at 3, 0.35 at 10, 0.21 at 30.
    seed_ratio: tags warm start: besides each tag's top proposal under the detection stream,
        the proposals scoring at least this fraction of the top's that overlap no other seed
        are seeds of the tag's self-training positives (models.warm_start.instance_seeds; 1:
        the top one alone).
    unclaimed: P-step given tags, what Mask R-CNN is taught on the instances that a pseudo
        label leaves out for its per-tag limit (models.inference.unclaimed_instances): "ignore"
        (anchors and RoIs on them are neither positive nor negative) or "background".
    baseline: instead of DISCO, train the prediction network alone on pseudo masks made from
        the boxes: "box-mask" or "grabcut" (training.baselines; boxes supervision only).
    backbone_weights: ImageNet weights of the prediction network's ResNet body (a state_dict
        file or a torchvision weights enum name); coco_weights: a start from torchvision's
        COCO Mask R-CNN (`coco` or a state_dict file; `paper` preset). Default: from scratch.
    lr_conditional, lr_prediction: Adam(W) learning rates; None takes LR_PREDICTION_FROM_SCRATCH,
        or LR_PREDICTION_PRETRAINED with pretrained weights.
    image_size: images are downscaled so the longer side is at most this (never upscaled);
        None takes the preset's working size, the one it serves at.
    prediction_threshold: in the C-step, detections scoring below it are never part of the
        sample y_p of the prediction network's output; above it each is, with probability its
        score.
    """

    supervision: Supervision = "tags"
    preset: str = "tiny"
    k: int = 10
    gamma: float = 0.5
    rounds: int | None = None
    warm_start_epochs: int | None = None
    p_epochs: int | None = None
    c_epochs: int | None = None
    final_p_epochs: int | None = None
    prior_weight: float = 0.0
    seed_ratio: float = 1.0
    unclaimed: str = "ignore"
    lr_conditional: float = 1e-3
    lr_prediction: float | None = None
    batch_size: int = 2
    image_size: int | None = None
    max_proposals: int = 300
    prediction_threshold: float = 0.1
    seed: int = 0
    device: str = "auto"
    backbone_weights: str | None = None
    coco_weights: str | None = None
    baseline: str | None = None

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
            "seed_ratio must be in (0, 1]": 0 < self.seed_ratio <= 1,
            "unclaimed must be ignore or background": self.unclaimed in UNCLAIMED_CHOICES,
            "batch_size must be at least 1": self.batch_size >= 1,
            "image_size must be at least 32": self.image_size >= 32,
            "max_proposals must be at least 1": self.max_proposals >= 1,
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
        boxes, where it cost the box DISCO row 0.08 mAP_r at IoU 0.5 (bench/results.md)."""
        return 0.0 if self.supervision == "boxes" else 1.0

    @property
    def schedule(self) -> Schedule:
        return Schedule(**{phase.name: getattr(self, phase.name) for phase in fields(Schedule)})

    def as_dict(self) -> dict:
        return asdict(self)
