"""Hypothesis strategies for the model tests, the annotation-consistency checks they share,
and a fixture that runs a test module on one torch thread.

Masks are BoolTensor[P, H, W] of filled rectangles and ellipses on small images; scores are
FloatTensor[P, C+1]; tags are sorted tuples of class ids in 1..C; boxes are BoxAnnotations with
float coordinates inside the image.
"""

import itertools

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from models.annotations import BoxAnnotation, TagAnnotation
from models.candidates import box_pixel_window
from models.structures import InstanceSet

NUM_CLASSES = 4




image_sizes = st.tuples(st.integers(24, 48), st.integers(24, 48))
# Three times in four: how often the tag tests add disjoint tiles, so that most examples have
# a consistent output to check (the rest check that none exists).
usually = st.integers(0, 3).map(bool)


@st.composite
def rectangle_masks(draw: st.DrawFn, image_size: tuple[int, int]) -> Tensor:
    """BoolTensor[H, W]: one non-empty filled rectangle."""
    height, width = image_size
    x0 = draw(st.integers(0, width - 1))
    y0 = draw(st.integers(0, height - 1))
    x1 = draw(st.integers(x0 + 1, width))
    y1 = draw(st.integers(y0 + 1, height))
    mask = torch.zeros(image_size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


@st.composite
def ellipse_masks(draw: st.DrawFn, image_size: tuple[int, int]) -> Tensor:
    """BoolTensor[H, W]: one filled axis-aligned ellipse, cut by the image border; never empty
    because its centre pixel is inside."""
    height, width = image_size
    cy = draw(st.integers(0, height - 1))
    cx = draw(st.integers(0, width - 1))
    ry = draw(st.floats(0.5, height / 2))
    rx = draw(st.floats(0.5, width / 2))
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def single_masks(image_size: tuple[int, int]) -> st.SearchStrategy[Tensor]:
    return st.one_of(rectangle_masks(image_size), ellipse_masks(image_size))


@st.composite
def proposal_masks(
    draw: st.DrawFn, image_size: tuple[int, int], min_size: int = 1, max_size: int = 8
) -> Tensor:
    """BoolTensor[P, H, W] of non-empty rectangles and ellipses (duplicates allowed)."""
    masks = draw(st.lists(single_masks(image_size), min_size=min_size, max_size=max_size))
    if not masks:
        return torch.zeros((0, *image_size), dtype=torch.bool)
    return torch.stack(masks)


@st.composite
def disjoint_tiles(draw: st.DrawFn, image_size: tuple[int, int], count: int) -> Tensor:
    """BoolTensor[count (+1), H, W]: pairwise disjoint rectangles, one per column of a strip
    grid, sometimes after a rectangle that covers them all."""
    height, width = image_size
    tiles = torch.zeros((count, *image_size), dtype=torch.bool)
    edges = np.linspace(0, width, count + 1).astype(int)
    for t in range(count):
        x0 = draw(st.integers(edges[t], edges[t + 1] - 1))
        x1 = draw(st.integers(x0 + 1, edges[t + 1]))
        y0 = draw(st.integers(0, height - 1))
        y1 = draw(st.integers(y0 + 1, height))
        tiles[t, y0:y1, x0:x1] = True
    if draw(st.booleans()):
        # A proposal covering all tiles, e.g. the whole object group: it conflicts with each.
        cover = tiles.any(0)
        ys, xs = np.nonzero(cover.numpy())
        cover[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        tiles = torch.cat([cover[None], tiles])
    return tiles


@st.composite
def masks_near_boxes(draw: st.DrawFn, boxes: BoxAnnotation, image_size: tuple[int, int]) -> Tensor:
    """BoolTensor[N, H, W]: for each box, a rectangle or ellipse jittered around the box, the
    proposal a box candidate is usually made of."""
    height, width = image_size
    masks = []
    for box in boxes.boxes:
        x0, y0, x1, y1 = box_pixel_window(box, image_size)
        jitter = [draw(st.integers(-3, 3)) for _ in range(4)]
        x0, x1 = sorted((min(max(x0 + jitter[0], 0), width - 1), max(x1 + jitter[1], 1)))
        y0, y1 = sorted((min(max(y0 + jitter[2], 0), height - 1), max(y1 + jitter[3], 1)))
        mask = torch.zeros(image_size, dtype=torch.bool)
        if draw(st.booleans()):
            ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
            xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
            ry, rx = max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
            mask = ((ys - (y0 + y1) / 2) / ry) ** 2 + ((xs - (x0 + x1) / 2) / rx) ** 2 <= 1
        mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] |= not mask.any()
        masks.append(mask)
    return torch.stack(masks) if masks else torch.zeros((0, *image_size), dtype=torch.bool)


def score_tensors(num_proposals: int, num_classes: int = NUM_CLASSES) -> st.SearchStrategy[Tensor]:
    """FloatTensor[P, C+1] with values in [-5, 5]."""
    elements = st.floats(-5, 5, allow_nan=False, width=32)
    return arrays(np.float32, (num_proposals, num_classes + 1), elements=elements).map(
        torch.from_numpy
    )


def tag_sets(
    num_classes: int = NUM_CLASSES, min_size: int = 1, max_size: int | None = None
) -> st.SearchStrategy[TagAnnotation]:
    classes = st.sets(
        st.integers(1, num_classes), min_size=min_size, max_size=max_size or num_classes
    )
    return classes.map(lambda labels: TagAnnotation(tuple(sorted(labels))))


@st.composite
def box_annotations(
    draw: st.DrawFn,
    image_size: tuple[int, int],
    num_classes: int = NUM_CLASSES,
    min_size: int = 1,
    max_size: int = 4,
) -> BoxAnnotation:
    """Valid boxes with fractional coordinates inside the image; some boxes repeat exactly."""
    height, width = image_size

    def interval(extent: int) -> st.SearchStrategy[tuple[float, float]]:
        ends = st.tuples(st.floats(0, extent), st.floats(0, extent))
        return ends.filter(lambda e: abs(e[0] - e[1]) >= 0.25).map(lambda e: tuple(sorted(e)))

    boxes = []
    for _ in range(draw(st.integers(min_size, max_size))):
        if boxes and draw(st.booleans()):
            boxes.append(draw(st.sampled_from(boxes)))
            continue
        (x0, x1), (y0, y1) = draw(interval(width)), draw(interval(height))
        boxes.append([x0, y0, x1, y1])
    labels = draw(st.lists(st.integers(1, num_classes), min_size=len(boxes), max_size=len(boxes)))
    return BoxAnnotation(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
    )


@st.composite
def instance_sets(
    draw: st.DrawFn, image_size: tuple[int, int], min_size: int = 0, max_size: int = 5
) -> InstanceSet:
    """Random instance sets of non-empty masks (not from proposals)."""
    masks = draw(proposal_masks(image_size, min_size=min_size, max_size=max_size))
    labels = draw(st.lists(st.integers(1, NUM_CLASSES), min_size=len(masks), max_size=len(masks)))
    return InstanceSet.from_masks(masks, torch.tensor(labels, dtype=torch.int64))


def has_disjoint_subset(masks: Tensor, count: int) -> bool:
    """Whether `count` of the masks are pairwise disjoint (exhaustive search, small P)."""
    flat = masks.flatten(1).float()
    disjoint = ((flat @ flat.T) == 0).numpy()
    nonempty = masks.flatten(1).any(1).numpy()

    def extend(chosen: list[int], start: int) -> bool:
        if len(chosen) == count:
            return True
        return any(
            nonempty[q] and all(disjoint[q, c] for c in chosen) and extend([*chosen, q], q + 1)
            for q in range(start, len(masks))
        )

    return extend([], 0)


def overlap_over_smaller(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, min(int(a.sum()), int(b.sum())))


# Existence checks count only what clearly satisfies a constraint (by this much), so that a
# threshold met to the last bit by one computation and missed by another counts as missing.
_CLEAR = 1e-6


def tag_output_exists(proposals: Tensor, count: int, overlap_threshold: float) -> bool:
    """Whether `count` non-empty proposals overlap pairwise at most overlap_threshold
    (intersection over the smaller mask): a consistent output for `count` tags. Exhaustive
    over the subsets, for small P."""
    masks = [m for m in proposals.numpy() if m.any()]
    overlaps = np.array([[overlap_over_smaller(a, b) for b in masks] for a in masks])
    compatible = (overlaps == 0) | (overlaps <= overlap_threshold - _CLEAR)
    compatible = compatible.reshape(len(masks), len(masks))
    return any(
        all(compatible[i, j] for i, j in itertools.combinations(subset, 2))
        for subset in itertools.combinations(range(len(masks)), count)
    )


def box_output_exists(proposals: Tensor, boxes: BoxAnnotation, box_iou_threshold: float) -> bool:
    """Whether each box can take a distinct proposal that, clipped to the box's pixel window,
    is non-empty with tight-box IoU at least box_iou_threshold against the window: a
    consistent output for the boxes (maximum bipartite matching, exact)."""
    image_size = tuple(proposals.shape[-2:])
    masks = proposals.numpy()
    fits = np.zeros((len(boxes), len(masks)), dtype=bool)
    for b, box in enumerate(boxes.boxes):
        x0, y0, x1, y1 = box_pixel_window(box, image_size)
        window = np.zeros(image_size, dtype=bool)
        window[y0:y1, x0:x1] = True
        for p, mask in enumerate(masks):
            clipped = mask & window
            fits[b, p] = clipped.any() and (
                box_area_iou(tight_box(clipped), (x0, y0, x1, y1))
                >= box_iou_threshold + _CLEAR
            )
    rows, cols = linear_sum_assignment(-fits.astype(float))
    return len(rows) == len(boxes) and bool(fits[rows, cols].all())


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (x1, y1 exclusive) of a non-empty bool array."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_area_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_tag_consistent(
    output: InstanceSet, tags: TagAnnotation, overlap_threshold: float
) -> None:
    labels = output.labels.tolist()
    assert set(labels) == set(tags.labels), f"labels {labels} do not cover tags {tags.labels}"
    masks = output.masks.numpy()
    assert masks.reshape(len(masks), -1).any(1).all(), "an instance has an empty mask"
    for i in range(len(masks)):
        for j in range(i):
            overlap = overlap_over_smaller(masks[i], masks[j])
            assert overlap <= overlap_threshold + 1e-6, (
                f"instances {j} and {i} overlap {overlap:.3f} > {overlap_threshold}"
            )


def assert_tag_output(
    output: InstanceSet, tags: TagAnnotation, proposals: Tensor, overlap_threshold: float
) -> str:
    """Consistent with the tags where a consistent output exists; otherwise every tag has an
    instance, overlapping where it must (as many tags as there are non-empty proposals).
    Returns which case it was, for hypothesis' `event`."""
    if tag_output_exists(proposals, len(tags.labels), overlap_threshold):
        assert_tag_consistent(output, tags, overlap_threshold)
        return "consistent output"
    assert not has_disjoint_subset(proposals, len(tags.labels))
    labels = output.labels.tolist()
    available = int(proposals.flatten(1).any(1).sum())
    assert set(labels) <= set(tags.labels)
    assert len(set(labels)) == min(len(tags.labels), available), labels
    return "no consistent output (none exists): overlapping instances"


def assert_box_consistent(
    output: InstanceSet, boxes: BoxAnnotation, box_iou_threshold: float
) -> None:
    """One instance per box (in any order) with the box's class, inside its pixel window, with
    tight-box IoU >= τ_box against the window; no proposal used twice."""
    image_size = tuple(output.masks.shape[-2:])
    assert len(output) == len(boxes), f"{len(output)} instances for {len(boxes)} boxes"
    ids = output.proposal_ids.tolist()
    assert len(set(ids)) == len(ids), f"a proposal serves two boxes: {ids}"
    masks = output.masks.numpy()
    fits = np.zeros((len(output), len(boxes)), dtype=bool)
    for b, (box, label) in enumerate(zip(boxes.boxes, boxes.labels.tolist(), strict=True)):
        x0, y0, x1, y1 = box_pixel_window(box, image_size)
        window = np.zeros(image_size, dtype=bool)
        window[y0:y1, x0:x1] = True
        for i, mask in enumerate(masks):
            fits[i, b] = (
                int(output.labels[i]) == label
                and mask.any()
                and not (mask & ~window).any()
                and box_area_iou(tight_box(mask), (x0, y0, x1, y1)) >= box_iou_threshold - 1e-6
            )
    rows, cols = linear_sum_assignment(-fits.astype(float))
    assert fits[rows, cols].all() and len(rows) == len(boxes), (
        f"no one-to-one assignment of instances to boxes they fit: {fits.astype(int).tolist()}"
    )
