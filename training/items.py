"""Training items: one image with its annotation and everything computed once for it.

An item keeps its proposals bit-packed and the proposal context and candidate geometry in
memory (a few MB per image), so that every phase reads them instead of recomputing.
"""

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
from torch import Tensor

from models.annotations import Annotation, BoxAnnotation, TagAnnotation
from models.candidates import (
    Candidates,
    annotation_candidates,
    box_rectangles,
    with_box_rectangles,
)
from models.conditional import ConditionalConfig, ProposalContext, describe_proposals
from models.delta import mask_iou
from models.images import as_image_tensor, fit_image, fitted_size
from models.inference import Selection
from models.regions import RegionProposals, describe_regions
from models.structures import any_along, mask_boxes
from models.warm_start import box_seed_labels
from training.baselines import baseline_target, grabcut_in_box
from training.data.dataset import Sample
from training.proposal_cache import DiskProposalCache


@dataclass(frozen=True)
class PackedMasks:
    """BoolTensor[N, H, W] kept bit-packed (an item's proposals are a few MB unpacked)."""

    bits: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def pack(cls, masks: Tensor) -> "PackedMasks":
        return cls(np.packbits(masks.numpy().ravel()), tuple(masks.shape))

    def unpack(self) -> Tensor:
        bits = np.unpackbits(self.bits, count=int(np.prod(self.shape)))
        return torch.from_numpy(bits.view(bool).reshape(self.shape))


@dataclass(frozen=True)
class PseudoLabel:
    """One sample of the conditional network for an item, as its candidates: the selection and,
    where the P-step ignores them, the candidates it leaves out (Int64Tensor[M]), else None."""

    selection: Selection
    ignored: Tensor | None


@dataclass
class TrainingItem:
    """One training image and what is computed once for it.

    image: uint8[H, W, 3]; annotation: tags or boxes (None under masks supervision and for the
    box baselines); target: the ground truth (masks supervision) or a baseline's pseudo masks
    in torchvision's format, else None; regions: the prediction network's RoIs, the image's
    annotation-agnostic proposals (`region_proposals()` restores their masks); proposals: the
    conditional network's proposals when they differ from those (given boxes: box-conditioned
    ones); context, geometry: the conditional network's proposal context and its candidates'
    geometry; box_labels: for boxes, Int64Tensor[P] the warm start's self-training labels,
    seeded by GrabCut in each box (models.warm_start.box_seed_labels; they depend on the
    annotation alone, so they are computed once here), else None; pseudo_labels: the K samples
    the current P-step trains on, drawn at the item's first step of the phase.
    """

    index: int
    image: np.ndarray
    annotation: Annotation | None
    target: dict[str, Tensor] | None
    regions: RegionProposals  # without masks: see region_masks
    region_masks: PackedMasks
    proposal_masks: PackedMasks | None = None
    context: ProposalContext | None = None
    geometry: dict[str, Tensor] = field(default_factory=dict)
    box_labels: Tensor | None = None
    pseudo_labels: list[PseudoLabel] | None = None

    @property
    def tensor(self) -> Tensor:
        """FloatTensor[3, H, W] in [0, 1]."""
        return as_image_tensor(self.image)

    def region_proposals(self) -> RegionProposals:
        """The prediction network's RoIs with their masks."""
        return replace(
            self.regions, masks=self.region_masks.unpack(), shapes=self.regions.shapes.float()
        )

    def proposals(self) -> Tensor:
        """BoolTensor[P, H, W]: the conditional network's proposals."""
        return (self.proposal_masks or self.region_masks).unpack()

    @property
    def candidates_are_regions(self) -> bool:
        """Whether the candidates are the region proposals themselves, in order: given tags
        every proposal is a candidate (tag_candidates)."""
        return self.proposal_masks is None and len(self.geometry["proposal_ids"]) == len(
            self.regions
        )

    def candidates(self) -> Candidates:
        """The annotation's candidates as found at preparation time, with their geometry."""
        proposals = self.proposals()
        proposal_ids, box_ids = self.geometry["proposal_ids"], self.geometry["box_ids"]
        # Copying every proposal took 5% of a warm-start step.
        masks = proposals if self.candidates_are_regions else proposals[proposal_ids]
        if isinstance(self.annotation, BoxAnnotation):
            masks &= box_rectangles(self.annotation, proposals.shape[1:])[box_ids]
        candidates = Candidates(masks, proposal_ids, box_ids)
        candidates.__dict__.update(self.geometry)  # fills the cached properties
        return candidates


def fit_to_size(sample: Sample, max_size: int) -> Sample:
    """Downscale so the longer side is at most max_size (boxes and masks follow)."""
    height, width = sample.image.shape[:2]
    size = fitted_size(height, width, max_size)
    if size == (height, width):
        return sample
    scale = np.array([size[1] / width, size[0] / height] * 2, dtype=np.float32)
    return replace(
        sample,
        image=fit_image(sample.image, max_size),
        masks=None if sample.masks is None else _resize_masks(sample.masks, size[::-1]),
        boxes=None if sample.boxes is None else sample.boxes * scale,
    )


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool[N, H, W] -> bool[N, size[1], size[0]] (nearest neighbour)."""
    resized = np.zeros((len(masks), size[1], size[0]), dtype=bool)
    for i, mask in enumerate(masks):
        resized[i] = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return resized


def annotation_of(sample: Sample) -> Annotation | None:
    if sample.supervision == "tags":
        return TagAnnotation(tuple(sorted(sample.tags)))
    if sample.supervision == "boxes":
        return BoxAnnotation(
            boxes=torch.from_numpy(np.asarray(sample.boxes, np.float32)).reshape(-1, 4),
            labels=torch.from_numpy(np.asarray(sample.labels, np.int64)),
        )
    return None


def target_of(sample: Sample) -> dict[str, Tensor] | None:
    if sample.masks is None:
        return None
    masks = torch.from_numpy(sample.masks)
    keep = any_along(masks.flatten(1), 1)
    return {
        "boxes": mask_boxes(masks[keep]),
        "labels": torch.from_numpy(np.asarray(sample.labels, np.int64))[keep],
        "masks": masks[keep].to(torch.uint8),
    }


def prepare_item(
    index: int,
    sample: Sample,
    cache: DiskProposalCache,
    config: ConditionalConfig,
    max_size: int,
    baseline: str | None = None,
) -> TrainingItem:
    """Proposals, their descriptions and the candidates' geometry of one sample.

    Under masks supervision or a baseline only the prediction network trains, on `target`:
    the conditional network's proposal context is not computed."""
    sample = fit_to_size(sample, max_size)
    annotation = annotation_of(sample)
    image = as_image_tensor(sample.image)
    plain = cache.get(sample.image)
    regions = describe_regions(image, plain)
    item = TrainingItem(
        index=index,
        image=sample.image,
        annotation=annotation,
        target=target_of(sample),
        # shapes in half precision: 0.5 MB instead of 1 MB per image of 300 proposals; no
        # masks, not even an empty view of them, which would keep all 20 MB of them alive
        regions=replace(
            regions, masks=plain.new_zeros((0, *plain.shape[1:])), shapes=regions.shapes.half()
        ),
        region_masks=PackedMasks.pack(plain),
    )
    if baseline is not None:
        return replace(
            item, annotation=None, target=baseline_target(sample.image, annotation, baseline)
        )
    if annotation is None:
        return item

    proposals = plain
    if isinstance(annotation, BoxAnnotation):
        proposals = with_box_rectangles(cache.get(sample.image, sample.boxes), annotation)
        item.proposal_masks = PackedMasks.pack(proposals)
    candidates = annotation_candidates(proposals, annotation, config.inference.box_iou_threshold)
    if isinstance(annotation, BoxAnnotation):
        item.box_labels = box_seed_labels(
            candidates,
            annotation,
            len(proposals),
            mask_boxes(proposals),
            grabcut_agreement(sample.image, candidates, annotation),
        )
    item.context = describe_proposals(image, proposals, config)
    item.geometry = {
        "proposal_ids": candidates.proposal_ids,
        "box_ids": candidates.box_ids,
        "intersection": candidates.intersection,
        "areas": candidates.areas,
        "boxes": candidates.boxes,
    }
    return item


def grabcut_agreement(image: np.ndarray, candidates: Candidates, boxes: BoxAnnotation) -> Tensor:
    """FloatTensor[Q]: each candidate's mask IoU with GrabCut's foreground in its box."""
    foreground = torch.stack([grabcut_in_box(image, box) for box in boxes.boxes])
    agreement = torch.zeros(len(candidates))
    for b in range(len(boxes)):
        ids = (candidates.box_ids == b).nonzero().squeeze(1)
        agreement[ids] = mask_iou(candidates.masks[ids], foreground[b : b + 1])[:, 0]
    return agreement
