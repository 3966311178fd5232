"""Instance segmentation metrics: mAP_r and ABO (the paper's tables), COCO mask AP, assist quality.

mAP_r at an IoU threshold t follows the PASCAL VOC devkit over mask IoU. Per class, the
predictions of all images are sorted by score (descending, stable: ties keep the order in which
images were processed and, within an image, the order in which predictions were given). A
prediction is a true positive when the same-class ground-truth instance of its image with the
highest mask IoU has IoU >= t and has not been taken by a higher-scoring prediction; otherwise it
is a false positive (no fallback to the second-best instance). AP is the area under the monotone
precision envelope (VOC 2010+ all-point interpolation). The mean is over the classes that have
ground truth; a class with ground truth and no predictions has AP 0.

ABO (average best overlap) is, per ground-truth instance, the best IoU with a same-class
prediction of the same image (0 when there is none), averaged per class and over all instances.

Crowd annotations (iscrowd=1) are not ground truth here: a prediction on a crowd region is a
false positive. (COCOeval instead ignores predictions matched to crowd regions.)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.rle import RLE, compressed, encode_mask

MaskLike = RLE | np.ndarray
"""An RLE or a bool/uint8 array (height, width); arrays are encoded to RLE on arrival."""


class Instance(NamedTuple):
    """One ground-truth (or sampled) instance: class index in [0, num_classes) and its mask."""

    label: int
    mask: MaskLike


class ScoredInstance(NamedTuple):
    """One predicted instance: class index, confidence score and mask."""

    label: int
    score: float
    mask: MaskLike


def to_rle(mask: MaskLike) -> RLE:
    """Encode a mask (bool/uint8 array (H, W), or an RLE with compressed or list counts) as RLE."""
    if isinstance(mask, np.ndarray):
        return encode_mask(mask)
    if isinstance(mask, dict) and "size" in mask and "counts" in mask:
        return compressed(mask)
    raise ValueError(f"a mask must be a 2-D array or an RLE dict (size, counts), got {mask!r}")


def mask_iou(pred_rles: Sequence[RLE], gt_rles: Sequence[RLE]) -> np.ndarray:
    """IoU of every prediction with every ground-truth mask: float64 array (P, G)."""
    if not pred_rles or not gt_rles:
        return np.zeros((len(pred_rles), len(gt_rles)))
    return np.asarray(mask_utils.iou(list(pred_rles), list(gt_rles), [0] * len(gt_rles)))


def greedy_match(ious: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The VOC devkit assignment of one image and class.

    ious: float array (P, G), rows in descending score order. Returns a bool array (P,): True
    where the prediction's highest-IoU ground truth (the first one on ties) reaches the
    threshold and is still free; that ground truth is then taken.
    """
    is_tp = np.zeros(ious.shape[0], dtype=bool)
    if ious.shape[1] == 0:
        return is_tp
    taken = np.zeros(ious.shape[1], dtype=bool)
    best_gt = ious.argmax(axis=1)  # (P,)
    best_iou = ious[np.arange(ious.shape[0]), best_gt]
    for p in np.flatnonzero(best_iou >= iou_threshold):
        if not taken[best_gt[p]]:
            taken[best_gt[p]] = True
            is_tp[p] = True
    return is_tp


def average_precision(is_tp: np.ndarray, num_gt: int) -> float:
    """VOC 2010+ AP: area under the monotone precision envelope of the ranked list.

    is_tp: bool array (N,) in descending score order; num_gt > 0 ground-truth instances.
    """
    if num_gt <= 0:
        raise ValueError(f"average precision needs ground truth, got num_gt={num_gt}")
    tp_cum = np.cumsum(is_tp)
    recall = np.concatenate([[0.0], tp_cum / num_gt, [1.0]])
    precision = np.concatenate([[0.0], tp_cum / np.arange(1, len(is_tp) + 1), [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def _encode_same_size(masks: Sequence[MaskLike], what: str) -> list[RLE]:
    rles = [to_rle(m) for m in masks]
    sizes = {tuple(r["size"]) for r in rles}
    if len(sizes) > 1:
        raise ValueError(f"{what}: masks of different sizes {sorted(sizes)}")
    return rles


class InstanceSegEvaluator:
    """Accumulates mAP_r and ABO over images (detectron2 style: reset, process, evaluate).

    Only the per-image matching results are kept (scores, TP flags, best overlaps), not masks.
    """

    def __init__(
        self, class_names: Sequence[str], iou_thresholds: Sequence[float] = (0.25, 0.5, 0.75)
    ) -> None:
        if not class_names:
            raise ValueError("class_names is empty")
        if not iou_thresholds or not all(0.0 < t <= 1.0 for t in iou_thresholds):
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {iou_thresholds!r}")
        self.class_names = list(class_names)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.reset()

    def reset(self) -> None:
        num_classes = len(self.class_names)
        self._image_ids: set[int] = set()
        self._scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._is_tp: list[list[np.ndarray]] = [[] for _ in range(num_classes)]  # each (T, P)
        self._best_overlap: list[list[np.ndarray]] = [[] for _ in range(num_classes)]

    def process(
        self,
        image_id: int,
        gt: Sequence[Instance | tuple[int, MaskLike]],
        predictions: Sequence[ScoredInstance | tuple[int, float, MaskLike]],
    ) -> None:
        """Match one image's predictions to its (non-crowd) ground truth, class by class."""
        if image_id in self._image_ids:
            raise ValueError(f"image {image_id!r} was already processed")
        gt = [Instance(*g) for g in gt]
        predictions = [ScoredInstance(*p) for p in predictions]
        for label in [g.label for g in gt] + [p.label for p in predictions]:
            if not 0 <= label < len(self.class_names):
                raise ValueError(f"image {image_id!r}: label {label!r} is not a class index")
        for p in predictions:
            if not math.isfinite(p.score):
                raise ValueError(f"image {image_id!r}: score {p.score!r} is not finite")
        rles = _encode_same_size([x.mask for x in [*gt, *predictions]], f"image {image_id!r}")
        gt_rles, pred_rles = rles[: len(gt)], rles[len(gt) :]
        gt_labels = np.array([g.label for g in gt], dtype=np.int64)
        pred_labels = np.array([p.label for p in predictions], dtype=np.int64)
        pred_scores = np.array([p.score for p in predictions], dtype=np.float64)

        self._image_ids.add(image_id)
        for c in np.union1d(gt_labels, pred_labels):
            gt_idx = np.flatnonzero(gt_labels == c)
            pred_idx = np.flatnonzero(pred_labels == c)
            pred_idx = pred_idx[np.argsort(-pred_scores[pred_idx], kind="stable")]
            ious = mask_iou([pred_rles[i] for i in pred_idx], [gt_rles[i] for i in gt_idx])
            self._scores[c].append(pred_scores[pred_idx])
            self._is_tp[c].append(
                np.stack([greedy_match(ious, t) for t in self.iou_thresholds])  # (T, P)
            )
            self._best_overlap[c].append(
                ious.max(axis=0) if len(pred_idx) else np.zeros(len(gt_idx))  # (G,)
            )

    def evaluate(self) -> dict[str, Any]:
        """mAP_r@t per threshold, ABO, and per_class {name: {AP@t, ABO, num_gt}}.

        per_class lists only classes with ground truth; the means are over those classes.
        """
        per_class: dict[str, dict[str, float | int]] = {}
        all_overlaps = []
        for c, name in enumerate(self.class_names):
            if not self._best_overlap[c]:
                continue
            overlaps = np.concatenate(self._best_overlap[c])
            if overlaps.size == 0:
                continue
            scores = np.concatenate(self._scores[c])
            is_tp = np.concatenate(self._is_tp[c], axis=1)  # (T, N)
            order = np.argsort(-scores, kind="stable")
            row: dict[str, float | int] = {
                f"AP@{t:g}": average_precision(is_tp[i, order], overlaps.size)
                for i, t in enumerate(self.iou_thresholds)
            }
            row["ABO"] = float(overlaps.mean())
            row["num_gt"] = int(overlaps.size)
            per_class[name] = row
            all_overlaps.append(overlaps)
        if not per_class:
            raise ValueError("no ground-truth instances were processed; nothing to evaluate")
        metrics: dict[str, Any] = {
            f"mAP_r@{t:g}": float(np.mean([row[f"AP@{t:g}"] for row in per_class.values()]))
            for t in self.iou_thresholds
        }
        metrics["ABO"] = float(np.concatenate(all_overlaps).mean())
        metrics["per_class"] = per_class
        return metrics


def _check_results(results: Any, image_ids: set[int], category_ids: set[int]) -> None:
    if not isinstance(results, list):
        raise ValueError(f"results must be a JSON list of detections, got {type(results).__name__}")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "score"} <= r.keys():
            raise ValueError(f"result {i} lacks image_id, category_id or score: {r!r}")
        if r["image_id"] not in image_ids:
            raise ValueError(f"result {i} names unknown image_id {r['image_id']!r}")
        if r["category_id"] not in category_ids:
            raise ValueError(f"result {i} names unknown category_id {r['category_id']!r}")
        if not isinstance(r["score"], int | float) or isinstance(r["score"], bool):
            raise ValueError(f"result {i}: score must be a number, got {r['score']!r}")
        segmentation = r.get("segmentation")
        if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
            raise ValueError(f"result {i}: segmentation must be an RLE dict, got {segmentation!r}")


def evaluate_coco_files(
    gt_json: Path, results_json: Path, score_threshold: float = 0.0
) -> dict[str, Any]:
    """mAP_r, ABO and COCO mask AP of COCO-format results against COCO-format ground truth.

    Ground truth segmentations may be polygons or RLE; results are [{image_id, category_id,
    score, segmentation: RLE}], those scoring under `score_threshold` left out. Classes are
    the ground-truth categories sorted by id. Adds coco_mask_AP, coco_mask_AP50,
    coco_mask_AP75 from pycocotools' COCOeval (0 for no results).
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout
        coco_gt = COCO(str(gt_json))
    results = json.loads(Path(results_json).read_text())
    category_ids = sorted(coco_gt.getCatIds())
    _check_results(results, set(coco_gt.getImgIds()), set(category_ids))
    results = [r for r in results if float(r["score"]) >= score_threshold]

    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    evaluator = InstanceSegEvaluator([coco_gt.cats[c]["name"] for c in category_ids])
    predictions: dict[int, list[ScoredInstance]] = {i: [] for i in coco_gt.getImgIds()}
    for r in results:
        predictions[r["image_id"]].append(
            ScoredInstance(label_of[r["category_id"]], float(r["score"]), r["segmentation"])
        )
    for image_id in sorted(predictions):
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        gt = [
            Instance(label_of[a["category_id"]], coco_gt.annToRLE(a))
            for a in anns
            if not a.get("iscrowd", 0)
        ]
        evaluator.process(image_id, gt, predictions[image_id])
    metrics = evaluator.evaluate()

    coco_stats = np.zeros(3)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes edits the dicts
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        coco_stats = np.maximum(coco_eval.stats[:3], 0.0)  # -1 means "undefined" in COCOeval
    metrics["coco_mask_AP"], metrics["coco_mask_AP50"], metrics["coco_mask_AP75"] = (
        float(s) for s in coco_stats
    )
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table (percent) of the per-class rows and the mean row of `evaluate()`."""
    ap_keys = [k.removeprefix("mAP_r") for k in metrics if k.startswith("mAP_r@")]
    header = ["class", "num_gt", *(f"AP{k}" for k in ap_keys), "ABO"]
    rows = [
        [name, str(row["num_gt"]), *(f"{100 * row[f'AP{k}']:.1f}" for k in ap_keys)]
        + [f"{100 * row['ABO']:.1f}"]
        for name, row in metrics["per_class"].items()
    ]
    total_gt = sum(row["num_gt"] for row in metrics["per_class"].values())
    rows.append(
        ["mean", str(total_gt), *(f"{100 * metrics[f'mAP_r{k}']:.1f}" for k in ap_keys)]
        + [f"{100 * metrics['ABO']:.1f}"]
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), "-" * len(line(header)), *(line(r) for r in rows[:-1])]
    lines += ["-" * len(line(header)), line(rows[-1])]
    coco = [f"{k}={100 * metrics[k]:.1f}" for k in metrics if k.startswith("coco_mask_")]
    if coco:
        lines.append("COCO: " + "  ".join(coco))
    return "\n".join(lines)


@dataclass(frozen=True)
class AssistQuality:
    top1_iou: float
    best_of_k_iou: float


def assist_quality(
    samples: Sequence[Sequence[Instance | tuple[int, MaskLike]]],
    gt: Sequence[Instance | tuple[int, MaskLike]],
) -> AssistQuality:
    """Quality of K sampled segmentations of one image as annotation proposals.

    For a sample and a ground-truth instance, take the best IoU with an instance of the same
    class in that sample (0 if there is none). top1_iou averages this over the ground-truth
    instances for sample 0 (the first, highest-scoring sample); best_of_k_iou first takes, per
    ground-truth instance, the maximum over the K samples, then averages. Diversity among the
    samples is worth something only where best_of_k_iou > top1_iou.
    """
    if not samples:
        raise ValueError("assist_quality needs at least one sample")
    gt = [Instance(*g) for g in gt]
    if not gt:
        raise ValueError("assist_quality needs at least one ground-truth instance")
    gt_labels = np.array([g.label for g in gt])
    best = np.zeros((len(samples), len(gt)))  # (K, G) best same-class IoU per sample
    for k, sample in enumerate(samples):
        sample = [Instance(*s) for s in sample]
        rles = _encode_same_size([x.mask for x in [*gt, *sample]], f"sample {k}")
        gt_rles, sample_rles = rles[: len(gt)], rles[len(gt) :]
        sample_labels = np.array([s.label for s in sample])
        for c in np.unique(gt_labels):
            gt_idx = np.flatnonzero(gt_labels == c)
            sample_idx = np.flatnonzero(sample_labels == c)
            if sample_idx.size:
                ious = mask_iou([sample_rles[i] for i in sample_idx], [gt_rles[i] for i in gt_idx])
                best[k, gt_idx] = ious.max(axis=0)
    top1, best_of_k = best[0].mean(), best.max(axis=0).mean()
    return AssistQuality(top1_iou=float(top1), best_of_k_iou=float(best_of_k))
