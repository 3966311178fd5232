"""One checkpoint file holding both networks, the class list, the preset, the proposal settings,
a format version and training metadata.

Loading names what is wrong with a bad file: unreadable (corrupt or truncated), not a discoseg
bundle, a format version this code does not read, or weights that do not fit the recorded
architecture.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.annotations import Annotation
from models.atomic import atomic_write
from models.conditional import ConditionalConfig, ConditionalNet
from models.images import as_image_tensor, fit_image
from models.prediction import (
    ProposalMaskRCNN,
    build_prediction_net,
    detected_instances,
)
from models.presets import PRESETS
from models.proposals import ProposalSettings, propose
from models.regions import RegionProposals, describe_regions
from models.structures import InstanceSet
from models.thresholds import SCORE_THRESHOLD

# The weight of the prediction network's class log-probabilities in the scores that
# `ModelBundle.pseudo_labels` samples from: given the tags of the demo's validation images the top
# sample's IoU per instance was 0.45 from the conditional network alone, 0.55 at weight 2, 0.58
# at 8 (docs/design.md#annotation-consistent-inference).
PREDICTION_EVIDENCE_WEIGHT = 8.0
# The share of `pseudo_labels`' draws that take the evidence; the others are the conditional
# network's alone, alternatives for an annotator. With half of 40 draws, on the same images,
# best-of-10 IoU went from 0.634 (every draw) to 0.656 and the top sample stayed at 0.583.
EVIDENCE_DRAW_SHARE = 0.5

FORMAT = "discoseg-bundle"
FORMAT_VERSION = 3
# the pretrained starts a prediction network may have (build_prediction_net's options)
INITIALISATIONS = ("backbone_weights", "coco_weights")
_REQUIRED_KEYS = (
    "format",
    "format_version",
    "classes",
    "preset",
    "conditional_config",
    "proposal_settings",
    "metadata",
    "prediction_state",
    "conditional_state",
)


class BundleError(ValueError):
    """A checkpoint bundle that cannot be loaded; the message says why."""


@dataclass
class ModelBundle:
    """Both networks of a discoseg model and what is needed to use them."""

    classes: list[str]
    preset: str
    prediction: ProposalMaskRCNN
    conditional: ConditionalNet
    proposal_settings: ProposalSettings = field(default_factory=ProposalSettings)
    metadata: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def prediction_trained(self) -> bool:
        """Whether the prediction network has been trained on this bundle's classes (training
        records it; bundles that do not say were trained)."""
        return bool(self.metadata.get("prediction_trained", True))

    @property
    def working_size(self) -> int:
        """The longest image side the networks work at; larger images are downscaled."""
        return PRESETS[self.preset].working_size

    def to(self, device: torch.device | str) -> "ModelBundle":
        self.prediction.to(device)
        self.conditional.to(device)
        return self

    @torch.no_grad()
    def segment(
        self,
        image: np.ndarray,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        proposer: Callable[[np.ndarray], Tensor] | None = None,
    ) -> InstanceSet:
        """The prediction network's instances scoring at least `score_threshold`, best first.

        image: uint8[H, W, 3] RGB of any size: the network runs on a copy whose longer side is
        at most `working_size`, and the masks come back at (H, W) (the probabilities are
        resampled before they are thresholded). proposer: the segment proposals of that copy,
        BoolTensor[P, h, w] (default: `models.proposals.propose` with the bundle's settings).
        Returns CPU tensors.
        """
        working = fit_image(image, self.working_size)
        masks = (proposer or self.propose)(working)
        device = next(self.prediction.parameters()).device
        tensor = as_image_tensor(working)
        regions = describe_regions(tensor, masks).to(device)
        output = self.prediction([tensor.to(device)], [regions])[0]
        keep = output["scores"] >= score_threshold
        output = {key: value[keep] for key, value in output.items()}
        if working.shape != image.shape:
            output["masks"] = _resample(output["masks"], image.shape[:2])
        return detected_instances(output, torch.ones_like(output["scores"], dtype=torch.bool))

    @torch.no_grad()
    def pseudo_labels(
        self,
        image: np.ndarray | Tensor,
        proposals: Tensor,
        annotation: Annotation,
        k: int,
        generator: torch.Generator | None = None,
        draws: int | None = None,
        instances_per_tag: int | None = None,
    ) -> list[InstanceSet]:
        """K instance segmentations consistent with the annotation (`ConditionalNet.sample`).
        Once the prediction network is trained, the first EVIDENCE_DRAW_SHARE of the draws
        (at least one) come from the conditional network's scores joined by its
        (`class_evidence`), the others from the conditional network's alone; with `draws`, the
        joined draws' outputs come first. Given tags, a sample holds at most `instances_per_tag`
        instances of each tagged class (None: every one of positive margin, whatever the limit
        the P-step's samples were drawn under). image: HxWx3 uint8 array or FloatTensor[3, H, W]
        in [0, 1]; proposals: BoolTensor[P, H, W]. Raises ValueError for an invalid
        annotation."""
        tensor = as_image_tensor(image)
        proposals = self.conditional.consistent_proposals(
            proposals, annotation, tuple(tensor.shape[-2:])
        )
        # Every instance by default: given the tags of the demo's validation images, the top
        # sample's IoU per instance was 0.66 against 0.58 at one instance per tag.
        inference = replace(
            self.conditional.config.inference, max_instances_per_tag=instances_per_tag
        )
        if not self.prediction_trained:
            return self.conditional.sample(
                tensor, proposals, annotation, k, generator, draws, inference=inference
            )
        count = draws or k
        joined = max(1, round(EVIDENCE_DRAW_SHARE * count))
        regions = describe_regions(tensor, proposals.cpu())
        takes_evidence = (torch.arange(count) < joined)[:, None, None]  # (D, 1, 1)
        evidence = takes_evidence * self.class_evidence(tensor, regions)
        return self.conditional.sample(
            tensor, proposals, annotation, k, generator, draws, evidence, joined, inference
        )

    @torch.no_grad()
    def class_evidence(self, image: Tensor, regions: RegionProposals) -> Tensor:
        """FloatTensor[P, C+1] (CPU): the prediction network's class log-probabilities of the
        regions of the image FloatTensor[3, H, W], times PREDICTION_EVIDENCE_WEIGHT."""
        device = next(self.prediction.parameters()).device
        log_probs = self.prediction.class_log_probs(image.to(device), regions.to(device))
        return PREDICTION_EVIDENCE_WEIGHT * log_probs.cpu()

    def propose(self, image: np.ndarray) -> Tensor:
        """BoolTensor[P, H, W]: the segment proposals of the bundle's settings."""
        return propose(image, settings=self.proposal_settings)


def _resample(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """FloatTensor[D, 1, H, W]: mask probabilities bilinearly resampled to `size`, one at a
    time (a 16 Mpx image holds 64 MB per float mask)."""
    resampled = torch.empty((len(masks), 1, *size), dtype=torch.float16)
    for i, mask in enumerate(masks):
        resampled[i] = F.interpolate(mask[None].float(), size=size, mode="bilinear").cpu()
    return resampled


def build_bundle(
    *,
    classes: list[str],
    preset: str,
    conditional_config: ConditionalConfig | None = None,
    proposal_settings: ProposalSettings | None = None,
    initialisation: dict[str, str | None] | None = None,
    metadata: dict | None = None,
) -> ModelBundle:
    """Networks for `classes` (names, class id = position + 1), freshly initialised or from
    pretrained weights: `initialisation` names them, `{"backbone_weights": ImageNet weights of
    the ResNet body, "coco_weights": torchvision's COCO Mask R-CNN}`
    (models.prediction.build_prediction_net); the bundle's metadata records it."""
    _check_classes(classes)
    initialisation = {**dict.fromkeys(INITIALISATIONS), **(initialisation or {})}
    return ModelBundle(
        classes=list(classes),
        preset=preset,
        prediction=build_prediction_net(
            preset=preset, num_classes=len(classes), **initialisation
        ),
        conditional=ConditionalNet(len(classes), conditional_config),
        proposal_settings=proposal_settings or ProposalSettings(),
        metadata={
            "prediction_trained": False,
            **(metadata or {}),
            "initialisation": initialisation,
        },
    )


def save_bundle(bundle: ModelBundle, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated bundle at `path`."""
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(bundle.classes),
        "preset": bundle.preset,
        "conditional_config": bundle.conditional.config.as_dict(),
        "proposal_settings": bundle.proposal_settings.as_dict(),
        "metadata": bundle.metadata,
        "prediction_state": bundle.prediction.state_dict(),
        "conditional_state": bundle.conditional.state_dict(),
    }
    with atomic_write(path) as file:
        torch.save(checkpoint, file)


def load_bundle(path: Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Read a bundle written by `save_bundle`; networks are returned in eval mode.

    Raises FileNotFoundError for a missing file and BundleError for anything else wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise BundleError(
            f"{path} is not a readable discoseg bundle (corrupt or truncated file): {error}"
        ) from error
    _check_header(checkpoint, path)
    try:
        classes, metadata = list(checkpoint["classes"]), dict(checkpoint["metadata"])
        _check_classes(classes)
        pretrained = any(metadata.get("initialisation", {}).values())
        bundle = ModelBundle(
            classes=classes,
            preset=checkpoint["preset"],
            prediction=build_prediction_net(
                preset=checkpoint["preset"], num_classes=len(classes), frozen_norm=pretrained
            ),
            conditional=ConditionalNet(
                len(classes), ConditionalConfig.from_dict(checkpoint["conditional_config"])
            ),
            proposal_settings=ProposalSettings.from_dict(checkpoint["proposal_settings"]),
            metadata=metadata,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{path} has invalid settings: {error}") from error
    _load_state(bundle.prediction, checkpoint["prediction_state"], "prediction", path)
    _load_state(bundle.conditional, checkpoint["conditional_state"], "conditional", path)
    bundle.prediction.eval()
    bundle.conditional.eval()
    return bundle.to(map_location)


def _check_classes(classes: list[str]) -> None:
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be a non-empty list of unique names, got {classes}")


def _check_header(checkpoint: object, path: Path) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise BundleError(f"{path} is not a discoseg bundle (no '{FORMAT}' header)")
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {version}; this discoseg reads version "
            f"{FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise BundleError(f"{path} is incomplete: missing {', '.join(missing)}")


def _load_state(module: nn.Module, state: dict, name: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise BundleError(
            f"{path}: the {name} network's weights do not fit its recorded architecture "
            f"({first_line})"
        ) from error


def file_digest(path: Path, length: int = 12) -> str:
    """The first `length` hex digits of the file's SHA-256: a model version for responses."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
