"""Class-agnostic segment proposals: selective-search style hierarchical grouping of superpixels.

Superpixels come from graph-based segmentation (Felzenszwalb & Huttenlocher, scikit-image's
implementation: OpenCV's lives in its contrib build, which the plain `opencv-python-headless`
that many annotation tools install shadows) of a downscaled copy of the image, at a few scales
and in a few colour spaces.
Each (segmentation, similarity) pair is one grouping strategy: starting from the superpixels,
it greedily merges the most similar pair of adjacent regions until one region is left; every
region on the way is a proposal. Regions are rows of a boolean (region x superpixel) table and
only the kept ones are turned into full-resolution masks at the end.

Ranking follows selective search: within a strategy the i-th region from the top of the
hierarchy (the last merge is i = 1) gets priority i * u with u ~ U(0, 1); all strategies are
sorted together, so cutting the list keeps the large, often-found regions of every strategy.

Duplicates are removed exactly at full resolution without building masks: with nearest
neighbour upsampling, every full-resolution pixel belongs to one superpixel of each
segmentation, so the overlap of two regions is `a @ C @ b` for the (superpixel x superpixel)
matrix C of full-resolution co-occurrence counts.

With boxes, each box adds its filled rectangle, GrabCut masks seeded by the box and the
hierarchical regions that mostly lie inside the box, clipped to it. A box covers the pixel
columns floor(x0) .. ceil(x1) - 1 and rows floor(y0) .. ceil(y1) - 1.
"""

import hashlib
import heapq
import json
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from models.box_proposals import box_proposals

_COLOUR_CONVERSIONS = {
    "rgb": None,
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2Lab,
    "ycrcb": cv2.COLOR_RGB2YCrCb,
}
_CHANNEL_RANGES = {"hsv": (180, 256, 256)}  # 8-bit OpenCV HSV stores hue in [0, 180)
_SIMILARITY_TERMS = frozenset("ctsf")  # colour, texture, size, fill
_COLOUR_BINS = 25
_TEXTURE_BINS = 10
_ORIENTATIONS = 8


@dataclass(frozen=True)
class ProposalSettings:
    """Knobs of the proposal generator; `as_dict` is JSON-able (checkpoints, cache keys).

    work_size: the long side of the downscaled copy the grouping runs on (never upscaled).
    colour_spaces: of "rgb", "hsv", "lab", "ycrcb"; each is segmented and grouped separately.
    scales: graph-segmentation k at work resolution; the minimum superpixel size is
        k * min_size_ratio pixels.
    similarities: one strategy per entry and segmentation; each a string of the terms summed:
        c colour histogram, t texture histogram, s size, f fill.
    dedup_iou: drop a proposal whose mask IoU with a better one exceeds this.
    max_proposals: how many hierarchical proposals to keep (box-conditioned ones come on top).
    min_area_fraction: drop hierarchical regions smaller than this share of the image.
    seed: seed of the randomised ranking (and of GrabCut's initialisation).
    grabcut_variants: (shrink, iterations) per GrabCut run: the seed rectangle is the box
        shrunk by `shrink` of its width/height on each side.
    grabcut_size: GrabCut runs on the crop around the box downscaled to this long side.
    grabcut_margin: the crop extends the box by this share of its size on each side.
    clipped_per_box: how many hierarchical regions to clip to each box.
    clip_inside_fraction: a region is clipped to a box only if this share of it lies inside.
    """

    work_size: int = 256
    colour_spaces: tuple[str, ...] = ("hsv", "lab")
    scales: tuple[float, ...] = (100.0, 300.0)
    sigma: float = 0.5
    min_size_ratio: float = 0.5
    similarities: tuple[str, ...] = ("ctsf", "tsf", "csf")
    dedup_iou: float = 0.9
    max_proposals: int = 300
    min_area_fraction: float = 0.0005
    seed: int = 0
    grabcut_variants: tuple[tuple[float, int], ...] = ((0.0, 3), (0.1, 1))
    grabcut_size: int = 96
    grabcut_margin: float = 0.25
    clipped_per_box: int = 5
    clip_inside_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.work_size < 8:
            raise ValueError(f"work_size must be at least 8, got {self.work_size}")
        unknown = [c for c in self.colour_spaces if c not in _COLOUR_CONVERSIONS]
        if not self.colour_spaces or unknown:
            raise ValueError(
                f"colour_spaces must be a non-empty subset of {sorted(_COLOUR_CONVERSIONS)}, "
                f"got {self.colour_spaces}"
            )
        if not self.scales or any(not k > 0 for k in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        if not self.similarities or any(
            not s or set(s) - _SIMILARITY_TERMS for s in self.similarities
        ):
            raise ValueError(
                f"similarities must be non-empty strings over 'ctsf', got {self.similarities}"
            )
        if not 0 < self.dedup_iou <= 1:
            raise ValueError(f"dedup_iou must be in (0, 1], got {self.dedup_iou}")
        if self.max_proposals < 0:
            raise ValueError(f"max_proposals must be >= 0, got {self.max_proposals}")
        if not 0 <= self.min_area_fraction < 1:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")
        if any(not 0 <= s < 0.5 or i < 1 for s, i in self.grabcut_variants):
            raise ValueError(
                "grabcut_variants must be (shrink in [0, 0.5), iterations >= 1) pairs, "
                f"got {self.grabcut_variants}"
            )
        if self.grabcut_size < 16:
            raise ValueError(f"grabcut_size must be at least 16, got {self.grabcut_size}")

    def as_dict(self) -> dict:
        """Plain JSON types only (tuples become lists)."""
        return {
            key: [list(v) if isinstance(v, tuple) else v for v in value]
            if isinstance(value, tuple)
            else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> "ProposalSettings":
        """Inverse of `as_dict`; ValueError naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ProposalSettings keys: {unknown}")
        converted = {
            key: tuple(tuple(v) if isinstance(v, list) else v for v in value)
            if isinstance(value, list)
            else value
            for key, value in values.items()
        }
        return cls(**converted)


@dataclass
class _Segmentation:
    """One superpixel map and the regions its strategies grouped.

    labels: int[h, w] superpixel ids at work resolution; full_labels: intp[H, W] upsampled.
    regions: bool[R, n] unique regions as superpixel sets; priority: float[R] (lower = better).
    """

    labels: np.ndarray
    full_labels: np.ndarray
    regions: np.ndarray
    priority: np.ndarray

    @property
    def n(self) -> int:
        return self.regions.shape[1]


def proposal_key(image: np.ndarray, boxes: np.ndarray | None, settings: ProposalSettings) -> str:
    """The cache key of `propose(image, boxes, settings=settings)`: a hash of the image's
    pixels and shape, the boxes and the settings."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update(str(image.shape).encode())
    if boxes is not None:
        digest.update(np.asarray(boxes, dtype=np.float64).tobytes())
    digest.update(json.dumps(settings.as_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:32]


def propose(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    *,
    max_proposals: int | None = None,
    settings: ProposalSettings | None = None,
) -> torch.Tensor:
    """Segment proposals of an image, best first.

    image: uint8[H, W, 3] RGB. boxes: float[N, 4] in x0, y0, x1, y1 pixels, inside the image.
    Returns BoolTensor[P, H, W]: first the box-conditioned proposals (box by box: rectangle,
    GrabCut masks, clipped regions), then at most `max_proposals` (default
    `settings.max_proposals`) hierarchical ones. Every mask is non-empty and no two have mask
    IoU above `settings.dedup_iou`. Deterministic for a given image, boxes and settings.
    """
    settings = settings or ProposalSettings()
    _check_image(image)
    height, width = image.shape[:2]
    box_pixels = _check_boxes(boxes, height, width)
    limit = settings.max_proposals if max_proposals is None else max_proposals
    if limit < 0:
        raise ValueError(f"max_proposals must be >= 0, got {limit}")

    scale = min(1.0, settings.work_size / max(height, width))
    work_h, work_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = cv2.resize(image, (work_w, work_h), interpolation=cv2.INTER_AREA)
    rows = np.minimum(((np.arange(height) + 0.5) * work_h / height).astype(np.intp), work_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * work_w / width).astype(np.intp), work_w - 1)
    weights = np.outer(np.bincount(rows, minlength=work_h), np.bincount(cols, minlength=work_w))

    rng = np.random.default_rng(settings.seed)
    segmentations = []
    for space in settings.colour_spaces:
        conversion = _COLOUR_CONVERSIONS[space]
        coloured = small if conversion is None else cv2.cvtColor(small, conversion)
        colour_bins = _colour_bins(coloured, _CHANNEL_RANGES.get(space, (256, 256, 256)))
        texture_bins = (
            _texture_bins(coloured) if any("t" in s for s in settings.similarities) else None
        )
        for k in settings.scales:
            labels = felzenszwalb(
                coloured,
                scale=float(k),
                sigma=settings.sigma,
                min_size=int(k * settings.min_size_ratio),
                channel_axis=-1,
            ).astype(np.intp)
            regions, priority = _group(labels, colour_bins, texture_bins, settings, rng)
            # uint8 labels let `_paint` use cv2.LUT, several times faster than np.take.
            full_dtype = np.uint8 if regions.shape[1] <= 256 else np.intp
            full_labels = np.ascontiguousarray(labels[rows][:, cols], dtype=full_dtype)
            segmentations.append(_Segmentation(labels, full_labels, regions, priority))

    index = _OverlapIndex(segmentations, weights)
    min_area = settings.min_area_fraction * height * width
    box_masks = box_proposals(image, box_pixels, segmentations, index, min_area, settings)
    chosen = index.select(box_masks, limit, min_area, settings.dedup_iou)

    masks = np.empty((len(box_masks) + len(chosen), height, width), dtype=bool)
    for i, (mask, _) in enumerate(box_masks):
        masks[i] = mask
    for i, (s, r) in enumerate(chosen, start=len(box_masks)):
        _paint(segmentations[s].regions[r], segmentations[s].full_labels, masks[i])
    return torch.from_numpy(masks)  # (P, H, W)


def _paint(region: np.ndarray, full_labels: np.ndarray, out: np.ndarray) -> None:
    """Write the full-resolution mask of a region (bool[n] over superpixels) into `out`."""
    if full_labels.dtype == np.uint8:
        table = np.zeros(256, dtype=np.uint8)
        table[: len(region)] = region
        cv2.LUT(full_labels, table, dst=out.view(np.uint8))
    else:
        np.take(region, full_labels, out=out)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"image must be a uint8 array of shape (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        )
    if image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W, 3) with H, W > 0, got {image.shape}")


def _check_boxes(boxes: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """int[N, 4] pixel ranges x0, y0, x1, y1 (exclusive ends) of valid float boxes."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.intp)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        box = [float(v) for v in (x0, y0, x1, y1)]
        if not np.all(np.isfinite(box)):
            raise ValueError(f"box {i} {box} is not finite")
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {i} {box} is empty (needs x1 > x0 and y1 > y0)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"box {i} {box} lies outside the {width}x{height} image")
    pixels = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    return pixels.astype(np.intp)


def _colour_bins(coloured: np.ndarray, ranges: tuple[int, ...]) -> np.ndarray:
    """intp[h, w, 3] histogram bin per channel, offset so that channels use disjoint bins."""
    limits = np.array(ranges)
    bins = coloured.astype(np.intp) * _COLOUR_BINS // limits
    return np.minimum(bins, _COLOUR_BINS - 1) + np.arange(3) * _COLOUR_BINS


def _texture_bins(coloured: np.ndarray) -> np.ndarray:
    """intp[h, w, 8 * 3] bin of each channel's derivative in 8 directions (as in SS).

    The directions are the signs of the x, y and diagonal derivatives of the blurred image.
    Bins are fixed (square-root spaced over the Sobel range), so that histograms of different
    images are comparable and weak textures still spread over several bins.
    """
    blurred = cv2.GaussianBlur(coloured, (0, 0), 1.0).astype(np.float32)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0)  # (h, w, 3), |gx| <= 4 * 255
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
    responses = np.stack([gx, gy, 0.5 * (gx + gy), 0.5 * (gx - gy)], axis=2)  # (h, w, 4, 3)
    signed = np.concatenate([responses, -responses], axis=2)  # (h, w, 8, 3)
    scaled = np.sqrt(np.maximum(signed, 0) * (_TEXTURE_BINS**2 / 1020.0))
    bins = np.minimum(scaled, _TEXTURE_BINS - 1).astype(np.intp).reshape(*coloured.shape[:2], -1)
    return bins + np.arange(3 * _ORIENTATIONS) * _TEXTURE_BINS


def _histograms(labels: np.ndarray, bins: np.ndarray, n: int) -> np.ndarray:
    """float[n, D] per-superpixel histograms, each row summing to 1."""
    dims = bins.shape[-1] * (_COLOUR_BINS if bins.shape[-1] == 3 else _TEXTURE_BINS)
    flat = (labels[..., None] * dims + bins).ravel()
    hist = np.bincount(flat, minlength=n * dims).reshape(n, dims).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """int[E, 2] unique pairs (a < b) of superpixels touching in the 8-neighbourhood."""
    pairs = [
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ]
    a = np.concatenate([p[0].ravel() for p in pairs])
    b = np.concatenate([p[1].ravel() for p in pairs])
    differ = a != b
    a, b = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    n = int(labels.max()) + 1
    codes = np.unique(a * n + b)
    return np.stack([codes // n, codes % n], axis=1)


def _group(
    labels: np.ndarray,
    colour_bins: np.ndarray,
    texture_bins: np.ndarray | None,
    settings: ProposalSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Run every similarity strategy on one superpixel map.

    Returns the unique regions bool[R, n] and their priorities float[R] (the best priority a
    region got from any strategy).
    """
    n = int(labels.max()) + 1
    image_area = float(labels.size)
    sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    bboxes = np.array(
        [(c.start, r.start, c.stop, r.stop) for r, c in ndimage.find_objects(labels + 1)],
        dtype=np.float64,
    )  # (n, 4) x0, y0, x1, y1 at work resolution
    colour = _histograms(labels, colour_bins, n)
    texture = None if texture_bins is None else _histograms(labels, texture_bins, n)
    pairs = _adjacent_pairs(labels)

    all_regions, all_priority = [], []
    for terms in settings.similarities:
        regions = _merge_hierarchy(
            n, pairs, sizes, bboxes, colour, texture, terms, image_area
        )  # (R, n), creation order
        count = len(regions)
        all_regions.append(regions)
        all_priority.append((count - np.arange(count)) * rng.random(count))
    regions = np.concatenate(all_regions)
    priority = np.concatenate(all_priority)
    order = np.argsort(priority, kind="stable")
    packed = np.packbits(regions[order], axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    keep = order[np.sort(first)]
    return regions[keep], priority[keep]


def _merge_hierarchy(
    n: int,
    pairs: np.ndarray,
    sizes: np.ndarray,
    bboxes: np.ndarray,
    colour: np.ndarray,
    texture: np.ndarray | None,
    terms: str,
    image_area: float,
) -> np.ndarray:
    """Greedy hierarchical grouping with one similarity; bool[R, n] regions in creation order
    (the n superpixels, then one region per merge)."""
    total = 2 * n - 1
    size = np.zeros(total)
    size[:n] = sizes
    box = np.zeros((total, 4))
    box[:n] = bboxes
    hist_c = np.zeros((total, colour.shape[1])) if "c" in terms else None
    hist_t = np.zeros((total, texture.shape[1])) if "t" in terms else None
    if hist_c is not None:
        hist_c[:n] = colour
    if hist_t is not None:
        hist_t[:n] = texture
    members = np.zeros((total, n), dtype=bool)
    members[np.arange(n), np.arange(n)] = True

    def similarity(a: np.ndarray | int, b: np.ndarray) -> np.ndarray:
        score = np.zeros(len(b))
        if hist_c is not None:
            score += np.minimum(hist_c[a], hist_c[b]).sum(axis=-1)
        if hist_t is not None:
            score += np.minimum(hist_t[a], hist_t[b]).sum(axis=-1)
        if "s" in terms:
            score += 1 - (size[a] + size[b]) / image_area
        if "f" in terms:
            joint = np.concatenate(
                [np.minimum(box[a, :2], box[b, :2]), np.maximum(box[a, 2:], box[b, 2:])], axis=-1
            )
            joint_area = (joint[:, 2] - joint[:, 0]) * (joint[:, 3] - joint[:, 1])
            score += 1 - (joint_area - size[a] - size[b]) / image_area
        return score

    neighbours: list[set[int]] = [set() for _ in range(total)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    scores = similarity(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
    heap = [(-s, a, b) for s, (a, b) in zip(scores.tolist(), pairs.tolist(), strict=True)]
    heapq.heapify(heap)
    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    new = n
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        alive[a] = alive[b] = False
        alive[new] = True
        size[new] = size[a] + size[b]
        box[new, :2] = np.minimum(box[a, :2], box[b, :2])
        box[new, 2:] = np.maximum(box[a, 2:], box[b, 2:])
        for hist in (hist_c, hist_t):
            if hist is not None:
                hist[new] = (size[a] * hist[a] + size[b] * hist[b]) / size[new]
        members[new] = members[a] | members[b]
        around = (neighbours[a] | neighbours[b]) - {a, b}
        for x in around:
            neighbours[x] -= {a, b}
            neighbours[x].add(new)
        neighbours[new] = around
        if around:
            others = np.fromiter(around, dtype=np.intp, count=len(around))
            for s, x in zip(similarity(new, others).tolist(), others.tolist(), strict=True):
                heapq.heappush(heap, (-s, new, x))
        new += 1
    return members[:new]


class _OverlapIndex:
    """Exact full-resolution areas and overlaps of regions of all segmentations.

    The superpixels of all segmentations are numbered consecutively (offsets); cooccurrence
    [u, v] is the number of full-resolution pixels in superpixel u and superpixel v.
    """

    def __init__(self, segmentations: list[_Segmentation], weights: np.ndarray) -> None:
        self.segmentations = segmentations
        sizes = [seg.n for seg in segmentations]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(self.offsets[-1])
        dtype = np.float32 if weights.sum() < 2**24 else np.float64
        self.cooccurrence = np.zeros((total, total), dtype=dtype)
        w = weights.ravel()
        for i, si in enumerate(segmentations):
            li = si.labels.ravel()
            for j in range(i, len(segmentations)):
                sj = segmentations[j]
                joint = np.bincount(li * sj.n + sj.labels.ravel(), weights=w, minlength=si.n * sj.n)
                block = joint.reshape(si.n, sj.n)
                self.cooccurrence[self.span(i), self.span(j)] = block
                self.cooccurrence[self.span(j), self.span(i)] = block.T
        self.superpixel_area = np.diag(self.cooccurrence).astype(np.float64)
        self.areas = [
            seg.regions @ self.superpixel_area[self.span(i)] for i, seg in enumerate(segmentations)
        ]

    def span(self, s: int) -> slice:
        return slice(int(self.offsets[s]), int(self.offsets[s + 1]))

    def pixel_counts(self, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        """float[N_superpixels] pixels of `mask` (full-res, zero outside `box`) per superpixel."""
        x0, y0, x1, y1 = box
        counts = []
        for seg in self.segmentations:
            inside = seg.full_labels[y0:y1, x0:x1][mask[y0:y1, x0:x1]]
            counts.append(np.bincount(inside, minlength=seg.n))
        return np.concatenate(counts).astype(np.float64)

    def select(
        self,
        box_masks: list[tuple[np.ndarray, np.ndarray]],
        limit: int,
        min_area: float,
        dedup_iou: float,
    ) -> list[tuple[int, int]]:
        """Greedy deduplication of the hierarchical regions in priority order.

        A region is dropped if its IoU with a kept region or with one of `box_masks` (full-res
        mask, pixel box) exceeds `dedup_iou`. Returns up to `limit` (segmentation, row) pairs.
        """
        candidates = [
            (p, s, r)
            for s, seg in enumerate(self.segmentations)
            for r, p in enumerate(seg.priority.tolist())
            if self.areas[s][r] >= max(min_area, 1)
        ]
        candidates.sort()
        total = self.cooccurrence.shape[0]
        capacity = min(limit, len(candidates))
        kept_members = np.zeros((capacity, total), dtype=self.cooccurrence.dtype)
        kept_areas = np.zeros(capacity)
        box_counts = np.array([self.pixel_counts(m, b) for m, b in box_masks]).reshape(-1, total)
        box_areas = np.array([m.sum() for m, _ in box_masks], dtype=np.float64)
        chosen: list[tuple[int, int]] = []
        for _, s, r in candidates:
            if len(chosen) == capacity:
                break
            span = self.span(s)
            row = self.segmentations[s].regions[r]
            area = self.areas[s][r]
            overlap = row.astype(self.cooccurrence.dtype) @ self.cooccurrence[span]  # (N,)
            k = len(chosen)
            inter = np.concatenate([kept_members[:k] @ overlap, box_counts[:, span] @ row])
            union = area + np.concatenate([kept_areas[:k], box_areas]) - inter
            if np.any(inter > dedup_iou * union):
                continue
            kept_members[k, span] = row
            kept_areas[k] = area
            chosen.append((s, r))
        return chosen
