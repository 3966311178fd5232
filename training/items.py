"""Training items: one image with its annotation and everything computed once for it.

An item keeps its proposals bit-packed and the proposal context and candidate geometry in
memory (a few MB per image), so that every phase reads them instead of recomputing.
"""

from dataclasses import dataclass

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
from models.structures import mask_boxes
from models.warm_start import box_seed_labels
from training.baselines import baseline_target, grabcut_in_box
from training.data.dataset import Sample
from training.proposal_cache import ProposalCache


@dataclass
class TrainingItem:
    """image: uint8[H, W, 3]; annotation: tags or boxes (None under masks supervision);
    target: the ground truth in torchvision's format under masks supervision, else None;
    box_labels: for boxes, Int64Tensor[P] the warm start's self-training labels, seeded by
    GrabCut in each box (models.warm_start.box_seed_labels; they depend on the annotation
    alone, so they are computed once here), else None."""

    index: int
    image: np.ndarray
    annotation: Annotation | None
    target: dict[str, Tensor] | None
    packed_proposals: np.ndarray
    proposal_shape: tuple[int, int, int]
    context: ProposalContext | None
    geometry: dict[str, Tensor]
    box_labels: Tensor | None = None

    @property
    def tensor(self) -> Tensor:
        """FloatTensor[3, H, W] in [0, 1]."""
        return torch.from_numpy(np.array(self.image)).permute(2, 0, 1).float() / 255

    def proposals(self) -> Tensor:
        """BoolTensor[P, H, W]."""
        count = int(np.prod(self.proposal_shape))
        bits = np.unpackbits(self.packed_proposals, count=count)
        return torch.from_numpy(bits.reshape(self.proposal_shape).astype(bool))

    def candidates(self) -> Candidates:
        """The annotation's candidates as found at preparation time, with their geometry."""
        proposals = self.proposals()
        proposal_ids, box_ids = self.geometry["proposal_ids"], self.geometry["box_ids"]
        masks = proposals[proposal_ids]
        if isinstance(self.annotation, BoxAnnotation):
            masks &= box_rectangles(self.annotation, self.proposal_shape[1:])[box_ids]
        candidates = Candidates(masks, proposal_ids, box_ids)
        candidates.__dict__.update(self.geometry)  # fills the cached properties
        return candidates


def fit_to_size(sample: Sample, max_size: int) -> Sample:
    """Downscale so the longer side is at most max_size (boxes and masks follow)."""
    height, width = sample.image.shape[:2]
    scale = max_size / max(height, width)
    if scale >= 1:
        return sample
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA)
    masks = None if sample.masks is None else _resize_masks(sample.masks, size)
    boxes = None if sample.boxes is None else sample.boxes * scale
    return Sample(
        image=image,
        image_id=sample.image_id,
        file_name=sample.file_name,
        supervision=sample.supervision,
        tags=sample.tags,
        labels=sample.labels,
        boxes=boxes,
        masks=masks,
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
    keep = masks.flatten(1).any(1)
    return {
        "boxes": mask_boxes(masks[keep]),
        "labels": torch.from_numpy(np.asarray(sample.labels, np.int64))[keep],
        "masks": masks[keep].to(torch.uint8),
    }


def _target_only_item(index: int, sample: Sample, target: dict[str, Tensor]) -> TrainingItem:
    height, width = sample.image.shape[:2]
    return TrainingItem(
        index=index,
        image=sample.image,
        annotation=None,
        target=target,
        packed_proposals=np.zeros(0, np.uint8),
        proposal_shape=(0, height, width),
        context=None,
        geometry={},
    )


def prepare_item(
    index: int,
    sample: Sample,
    cache: ProposalCache,
    config: ConditionalConfig,
    max_size: int,
    baseline: str | None = None,
) -> TrainingItem:
    """Proposals, their context and the candidates' geometry; none under masks supervision or
    a baseline, which train the prediction network alone on `target`."""
    sample = fit_to_size(sample, max_size)
    annotation = annotation_of(sample)
    if baseline is not None:
        return _target_only_item(index, sample, baseline_target(sample.image, annotation, baseline))
    if annotation is None:
        return _target_only_item(index, sample, target_of(sample))

    boxes = sample.boxes if isinstance(annotation, BoxAnnotation) else None
    proposals = cache.get(sample.image, boxes)
    if isinstance(annotation, BoxAnnotation):
        proposals = with_box_rectangles(proposals, annotation)
    image = torch.from_numpy(np.array(sample.image)).permute(2, 0, 1).float() / 255
    candidates = annotation_candidates(proposals, annotation, config.inference.box_iou_threshold)
    box_labels = (
        box_seed_labels(
            candidates,
            annotation,
            len(proposals),
            mask_boxes(proposals),
            grabcut_agreement(sample.image, candidates, annotation),
        )
        if isinstance(annotation, BoxAnnotation)
        else None
    )
    return TrainingItem(
        index=index,
        image=sample.image,
        annotation=annotation,
        target=target_of(sample),
        packed_proposals=np.packbits(proposals.numpy().ravel()),
        proposal_shape=tuple(proposals.shape),
        context=describe_proposals(image, proposals, config),
        geometry={
            "proposal_ids": candidates.proposal_ids,
            "box_ids": candidates.box_ids,
            "intersection": candidates.intersection,
            "areas": candidates.areas,
            "boxes": candidates.boxes,
        },
        box_labels=box_labels,
    )


def grabcut_agreement(image: np.ndarray, candidates: Candidates, boxes: BoxAnnotation) -> Tensor:
    """FloatTensor[Q]: each candidate's mask IoU with GrabCut's foreground in its box."""
    foreground = torch.stack([grabcut_in_box(image, box) for box in boxes.boxes])
    agreement = torch.zeros(len(candidates))
    for b in range(len(boxes)):
        ids = (candidates.box_ids == b).nonzero().squeeze(1)
        agreement[ids] = mask_iou(candidates.masks[ids], foreground[b : b + 1])[:, 0]
    return agreement
