"""Point refinement: candidate masks consistent with clicked points (and a box).

A prompt holds positive points (each must lie inside the mask), negative points (none may lie
inside it) and optionally a box (the mask lies inside it and fits it). A point (x, y) in pixels
designates the pixel at column floor(x), row floor(y).

The candidates are segment proposals (clipped to the box), the box's rectangle, an optional
current mask, the union of the positive points' regions, and repairs of each of them: the
region around a missing positive point is added (the smallest proposal holding that point and
no negative one, else a small disc) and the region around an enclosed negative point is cut out
(the smallest proposal holding it and no positive one, else a disc). Repairs are consistent by
construction, so with at least one positive point a consistent candidate always exists. The
conditional network scores every candidate (its noise samples averaged) and the best `k`
distinct ones are returned.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from models.candidates import box_pixel_window
from models.conditional import ConditionalNet, describe_proposals
from models.images import as_image_tensor
from models.structures import InstanceSet, any_along, mask_areas, mask_boxes

# Two returned candidates overlap at most this much (mask IoU): near-copies add no choice.
DISTINCT_IOU = 0.9
# Radius of the disc that stands in for a region when no proposal fits, as a share of the
# image's shorter side (at least 2 pixels).
DISC_FRACTION = 0.03


@dataclass(frozen=True)
class PointPrompt:
    """What the annotator said about one object.

    positive: FloatTensor[N, 2] x, y pixels inside the object.
    negative: FloatTensor[M, 2] x, y pixels outside it.
    box: FloatTensor[4] x0, y0, x1, y1 pixels around it, or None.
    """

    positive: Tensor
    negative: Tensor
    box: Tensor | None = None

    @classmethod
    def from_lists(
        cls,
        positive: list[list[float]] | None = None,
        negative: list[list[float]] | None = None,
        box: list[float] | None = None,
    ) -> "PointPrompt":
        """A prompt from plain [[x, y], ...] lists and an [x0, y0, x1, y1] box (not validated)."""
        return cls(
            positive=_points_tensor(positive, "positive"),
            negative=_points_tensor(negative, "negative"),
            box=None if box is None else _box_tensor(box),
        )

    def validate(self, image_size: tuple[int, int]) -> None:
        """Raise ValueError naming the first problem; image_size is (H, W)."""
        height, width = image_size
        if len(self.positive) == 0 and self.box is None:
            raise ValueError("give at least one positive point or a box")
        for name, points in (("positive", self.positive), ("negative", self.negative)):
            for index, (x, y) in enumerate(points.tolist()):
                if not (np.isfinite(x) and np.isfinite(y)):
                    raise ValueError(f"{name} point {index}: coordinates must be finite")
                if not (0 <= x <= width and 0 <= y <= height):
                    raise ValueError(
                        f"{name} point {index}: ({x:g}, {y:g}) lies outside the "
                        f"{width}x{height} image"
                    )
        shared = set(map(tuple, point_pixels(self.positive, image_size).tolist())) & set(
            map(tuple, point_pixels(self.negative, image_size).tolist())
        )
        if shared:
            row, column = sorted(shared)[0]
            raise ValueError(f"pixel ({column}, {row}) is both a positive and a negative point")
        if self.box is not None:
            x0, y0, x1, y1 = self.box.tolist()
            if not all(np.isfinite([x0, y0, x1, y1])):
                raise ValueError("box coordinates must be finite")
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"empty box {[x0, y0, x1, y1]} (need x0 < x1 and y0 < y1)")
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise ValueError(f"box {[x0, y0, x1, y1]} lies outside the {width}x{height} image")
            window = box_window(self.box, image_size)
            inside = points_inside(window[None], self.positive)[0]
            if not bool(inside.all()):
                index = int((~inside).nonzero()[0])
                raise ValueError(f"positive point {index} lies outside the box")


def _points_tensor(points: list[list[float]] | None, name: str) -> Tensor:
    if not points:
        return torch.zeros((0, 2))
    try:
        tensor = torch.tensor(points, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} points must be [[x, y], ...] numbers: {error}") from None
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise ValueError(f"{name} points must be [[x, y], ...], got shape {tuple(tensor.shape)}")
    return tensor.float()


def _box_tensor(box: list[float]) -> Tensor:
    try:
        tensor = torch.tensor(box, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"box must be [x0, y0, x1, y1] numbers: {error}") from None
    if tensor.shape != (4,):
        raise ValueError(f"box must be [x0, y0, x1, y1], got shape {tuple(tensor.shape)}")
    return tensor.float()


def point_pixels(points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Int64Tensor[N, 2] (row, column) of each (x, y) point, clamped to the image."""
    height, width = image_size
    rows = points[:, 1].floor().long().clamp(0, height - 1)
    columns = points[:, 0].floor().long().clamp(0, width - 1)
    return torch.stack([rows, columns], dim=1)


def points_inside(masks: Tensor, points: Tensor) -> Tensor:
    """BoolTensor[Q, N]: whether point n lies in mask q. masks: BoolTensor[Q, H, W]."""
    pixels = point_pixels(points, tuple(masks.shape[-2:]))
    return masks[:, pixels[:, 0], pixels[:, 1]]


def box_window(box: Tensor, image_size: tuple[int, int]) -> Tensor:
    """BoolTensor[H, W]: the box filled on its pixel window (models.candidates)."""
    x0, y0, x1, y1 = box_pixel_window(box, image_size)
    window = torch.zeros(image_size, dtype=torch.bool)
    window[y0:y1, x0:x1] = True
    return window


def is_consistent(masks: Tensor, prompt: PointPrompt) -> Tensor:
    """BoolTensor[Q]: mask q holds every positive point, no negative point and, with a box,
    nothing outside the box. masks: BoolTensor[Q, H, W]."""
    consistent = points_inside(masks, prompt.positive).all(1)
    consistent &= ~points_inside(masks, prompt.negative).any(1)
    if prompt.box is not None:
        outside = ~box_window(prompt.box, tuple(masks.shape[-2:]))
        consistent &= ~any_along((masks & outside).flatten(1), 1)
    return consistent & any_along(masks.flatten(1), 1)


def _disc(centre: Tensor, image_size: tuple[int, int]) -> Tensor:
    height, width = image_size
    radius = max(2.0, DISC_FRACTION * min(height, width))
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def point_regions(proposals: Tensor, points: Tensor, avoid: Tensor) -> Tensor:
    """BoolTensor[N, H, W]: for each point, the smallest proposal that holds it and none of the
    `avoid` points, else a disc around it; the `avoid` pixels are never part of a region.

    proposals: BoolTensor[P, H, W]; points, avoid: FloatTensor[N, 2], [M, 2] x, y pixels.
    """
    image_size = tuple(proposals.shape[-2:])
    regions = torch.zeros((len(points), *image_size), dtype=torch.bool)
    if len(points) == 0:
        return regions
    holds = points_inside(proposals, points)  # (P, N)
    clear = ~points_inside(proposals, avoid).any(1)  # (P,)
    areas = mask_areas(proposals)
    avoided = point_pixels(avoid, image_size)
    for n, centre in enumerate(point_pixels(points, image_size)):
        fitting = (holds[:, n] & clear).nonzero().squeeze(1)
        if len(fitting):
            regions[n] = proposals[fitting[areas[fitting].argmin()]]
        else:
            regions[n] = _disc(centre.float(), image_size)
        regions[n, avoided[:, 0], avoided[:, 1]] = False
        regions[n, centre[0], centre[1]] = True
    return regions


def repair(masks: Tensor, prompt: PointPrompt, proposals: Tensor) -> Tensor:
    """BoolTensor[Q, H, W]: each mask made consistent with the prompt's points (and clipped to
    its box): the region of every positive point it misses is added, then the region of every
    negative point it holds is cut out (regions: `point_regions` over `proposals`)."""
    image_size = tuple(masks.shape[-2:])
    window = (
        torch.ones(image_size, dtype=torch.bool)
        if prompt.box is None
        else box_window(prompt.box, image_size)
    )
    grow = point_regions(proposals, prompt.positive, prompt.negative) & window
    cut = point_regions(proposals, prompt.negative, prompt.positive)
    repaired = masks & window
    missing = ~points_inside(repaired, prompt.positive)  # (Q, N)
    for n in range(len(prompt.positive)):
        repaired[missing[:, n]] |= grow[n]
    held = points_inside(repaired, prompt.negative)  # (Q, M)
    for m in range(len(prompt.negative)):
        repaired[held[:, m]] &= ~cut[m]
    return repaired


def candidate_masks(
    proposals: Tensor,
    prompt: PointPrompt,
    current: Tensor | None = None,
    box_iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """The distinct candidate masks consistent with the prompt and where each comes from.

    proposals: BoolTensor[P, H, W]; current: BoolTensor[H, W], the mask being refined, or None.
    With a box, a proposal clipped to it is a candidate when its tight box has IoU >=
    box_iou_threshold with the box (as for box hints); the box's rectangle always is.
    Returns (BoolTensor[Q, H, W], Int64Tensor[Q] the proposal index, or -1 for the rectangle,
    the current mask and repairs). Raises ValueError when no candidate is consistent (only
    possible without positive points).
    """
    image_size = tuple(proposals.shape[-2:])
    masks, sources = proposals, torch.arange(len(proposals))
    if prompt.box is not None:
        window = box_window(prompt.box, image_size)
        clipped = proposals & window
        x0, y0, x1, y1 = box_pixel_window(prompt.box, image_size)
        window_box = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        fits = box_iou(mask_boxes(clipped), window_box).squeeze(1) >= box_iou_threshold
        fits &= any_along(clipped.flatten(1), 1)
        masks = torch.cat([clipped[fits], window[None]])
        sources = torch.cat([fits.nonzero().squeeze(1), torch.tensor([-1])])
    # An empty mask, whose repair is the union of the positive points' regions.
    extra = [torch.zeros((1, *image_size), dtype=torch.bool)]
    if current is not None:
        extra.append(current[None].bool())
    masks = torch.cat([masks, *extra])
    sources = torch.cat([sources, torch.full((len(extra),), -1)])
    consistent = is_consistent(masks, prompt)
    repaired = repair(masks[~consistent], prompt, proposals)
    masks = torch.cat([masks[consistent], repaired])
    sources = torch.cat([sources[consistent], torch.full((len(repaired),), -1)])
    keep = is_consistent(masks, prompt) & _first_occurrences(masks)
    if not bool(keep.any()):
        raise ValueError("no mask consistent with the points and the box was found")
    return masks[keep], sources[keep]


def _first_occurrences(masks: Tensor) -> Tensor:
    """BoolTensor[Q]: true for the first of each group of identical masks."""
    packed = np.packbits(masks.flatten(1).numpy(), axis=1)
    seen: set[bytes] = set()
    first = []
    for row in packed:
        key = hashlib.sha1(row.tobytes()).digest()
        first.append(key not in seen)
        seen.add(key)
    return torch.tensor(first, dtype=torch.bool)


def distinct_best(masks: Tensor, scores: Tensor, k: int, max_iou: float = DISTINCT_IOU) -> Tensor:
    """Int64Tensor[<= k]: indices of the best-scoring masks, best first, skipping a mask whose
    IoU with one already taken exceeds max_iou. masks: BoolTensor[Q, H, W]; scores: [Q]."""
    flat = masks.flatten(1).float()
    areas = flat.sum(1)
    taken: list[int] = []
    for q in torch.argsort(scores, descending=True, stable=True).tolist():
        if len(taken) == k:
            break
        if taken:
            intersection = flat[taken] @ flat[q]
            iou = intersection / (areas[taken] + areas[q] - intersection).clamp(min=1)
            if bool((iou > max_iou).any()):
                continue
        taken.append(q)
    return torch.tensor(taken, dtype=torch.int64)


@torch.no_grad()
def refine(
    network: ConditionalNet,
    image: np.ndarray | Tensor,
    proposals: Tensor,
    prompt: PointPrompt,
    k: int,
    *,
    label: int | None = None,
    current: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> InstanceSet:
    """At most k distinct masks consistent with the prompt, best first.

    image: HxWx3 uint8 array or FloatTensor[3, H, W] in [0, 1]; proposals: BoolTensor[P, H, W]
    (box-conditioned ones when the prompt has a box); label: the object's class id in 1..C, or
    None to take each candidate's best class; current: BoolTensor[H, W] or None.
    A candidate's score is the probability of its class under the conditional network, averaged
    over k noise samples. Raises ValueError for an invalid prompt, label or k, or when no
    consistent candidate exists.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if label is not None and not 1 <= label <= network.num_classes:
        raise ValueError(f"unknown class id {label}: expected ids in 1..{network.num_classes}")
    image = as_image_tensor(image).to(network.image_mean.device)
    image_size = tuple(image.shape[-2:])
    prompt.validate(image_size)
    if current is not None and tuple(current.shape) != image_size:
        raise ValueError(
            f"the current mask is {tuple(current.shape)}, the image {image_size} (H, W)"
        )
    masks, sources = candidate_masks(
        proposals.cpu(), prompt, None if current is None else current.cpu(),
        network.config.inference.box_iou_threshold,
    )
    context = describe_proposals(image.cpu(), masks, network.config)
    scores = network(image, context.to(image.device), k, generator).cpu()  # (k, Q, C+1)
    probabilities = scores.softmax(dim=2).mean(dim=0)  # (Q, C+1)
    if label is None:
        confidence, labels = probabilities[:, 1:].max(dim=1)
        labels = labels + 1
    else:
        labels = torch.full((len(masks),), label, dtype=torch.int64)
        confidence = probabilities[:, label]
    best = distinct_best(masks, confidence, k)
    return InstanceSet(masks[best], labels[best], confidence[best], sources[best])
