"""Box-conditioned proposals: for each box the filled rectangle, GrabCut foregrounds seeded by
it and the hierarchical regions that mostly lie inside it, clipped to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.grabcut import grabcut_foreground

if TYPE_CHECKING:
    from models.proposals import ProposalSettings, _OverlapIndex, _Segmentation


def box_proposals(
    image: np.ndarray,
    box_pixels: np.ndarray,
    segmentations: list[_Segmentation],
    index: _OverlapIndex,
    min_area: float,
    settings: ProposalSettings,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deduplicated box-conditioned masks, box by box, as (bool[H, W], pixel box) pairs."""
    height, width = image.shape[:2]
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for box in box_pixels:
        x0, y0, x1, y1 = box
        candidates = []
        rectangle = np.zeros((height, width), dtype=bool)
        rectangle[y0:y1, x0:x1] = True
        candidates.append(rectangle)
        candidates += _grabcut_masks(image, box, settings)
        candidates += _clipped_regions(box, segmentations, index, min_area, settings)
        for mask in candidates:
            if mask.any() and not any(
                _mask_iou(mask, box, other, other_box) > settings.dedup_iou
                for other, other_box in kept
            ):
                kept.append((mask, box))
    return kept


def _mask_iou(a: np.ndarray, box_a: np.ndarray, b: np.ndarray, box_b: np.ndarray) -> float:
    """IoU of two full-res masks that are zero outside their pixel boxes."""
    x0, y0 = np.maximum(box_a[:2], box_b[:2])
    x1, y1 = np.minimum(box_a[2:], box_b[2:])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    inter = np.count_nonzero(a[y0:y1, x0:x1] & b[y0:y1, x0:x1])
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    union = np.count_nonzero(a[ay0:ay1, ax0:ax1]) + np.count_nonzero(b[by0:by1, bx0:bx1]) - inter
    return inter / union


def _clipped_regions(
    box: np.ndarray,
    segmentations: list[_Segmentation],
    index: _OverlapIndex,
    min_area: float,
    settings: ProposalSettings,
) -> list[np.ndarray]:
    """The hierarchical regions that mostly lie inside the box and best cover it, clipped."""
    if settings.clipped_per_box == 0:
        return []
    x0, y0, x1, y1 = box.tolist()
    height, width = segmentations[0].full_labels.shape
    rectangle = np.zeros((height, width), dtype=bool)
    rectangle[y0:y1, x0:x1] = True
    counts = index.pixel_counts(rectangle, box)
    box_area = float((x1 - x0) * (y1 - y0))
    scored = []
    for s, seg in enumerate(segmentations):
        inside = seg.regions @ counts[index.span(s)]  # (R,) pixels inside the box
        fraction = inside / index.areas[s]
        coverage = inside / box_area
        eligible = (fraction >= settings.clip_inside_fraction) & (inside >= max(min_area, 1))
        for r in np.flatnonzero(eligible).tolist():
            scored.append((-coverage[r] * fraction[r], s, r))
    scored.sort()
    masks = []
    for _, s, r in scored[: settings.clipped_per_box]:
        seg = segmentations[s]
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = seg.regions[r][seg.full_labels[y0:y1, x0:x1]]
        masks.append(mask)
    return masks


def _grabcut_masks(
    image: np.ndarray, box: np.ndarray, settings: ProposalSettings
) -> list[np.ndarray]:
    """GrabCut foregrounds seeded by the box, one per variant."""
    masks = (
        grabcut_foreground(
            image,
            box,
            shrink=shrink,
            iterations=iterations,
            work_size=settings.grabcut_size,
            margin=settings.grabcut_margin,
            seed=settings.seed,
        )
        for shrink, iterations in settings.grabcut_variants
    )
    return [mask for mask in masks if mask is not None]
