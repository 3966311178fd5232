import contextlib
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.rle import encode_mask, rle_area, rle_box
from training.evaluate import (
    AssistQuality,
    InstanceSegEvaluator,
    assist_quality,
    average_precision,
    evaluate_coco_files,
    format_table,
)

THRESHOLDS = (0.25, 0.5, 0.75)


def rect(y0: int, x0: int, y1: int, x1: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A bool mask with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros(size, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def run(images, class_names=("a", "b"), thresholds=THRESHOLDS) -> dict:
    evaluator = InstanceSegEvaluator(list(class_names), thresholds)
    for image_id, (gt, predictions) in enumerate(images):
        evaluator.process(image_id, gt, predictions)
    return evaluator.evaluate()


# --- hand-made cases with known AP -----------------------------------------------------------

A = rect(0, 0, 10, 10)  # 100 px
B = rect(20, 20, 30, 30)  # 100 px, disjoint from A
HALF_A = rect(0, 0, 10, 5)  # IoU 0.5 with A


def test_perfect_predictions_score_one() -> None:
    images = [
        ([(0, A), (1, B)], [(0, 0.9, A), (1, 0.8, B)]),
        ([(0, B)], [(0, 0.3, B)]),
    ]
    metrics = run(images)
    for key in ("mAP_r@0.25", "mAP_r@0.5", "mAP_r@0.75", "ABO"):
        assert metrics[key] == 1.0
    assert metrics["per_class"]["a"] == {
        "AP@0.25": 1.0,
        "AP@0.5": 1.0,
        "AP@0.75": 1.0,
        "ABO": 1.0,
        "num_gt": 2,
    }
    assert metrics["per_class"]["b"]["num_gt"] == 1


def test_false_positive_ranked_first_halves_precision() -> None:
    images = [([(0, A)], [(0, 0.9, B), (0, 0.8, A)])]
    assert run(images)["per_class"]["a"]["AP@0.5"] == 0.5
    images = [([(0, A)], [(0, 0.8, B), (0, 0.9, A)])]
    assert run(images)["per_class"]["a"]["AP@0.5"] == 1.0


def test_envelope_over_two_images() -> None:
    # ranks: TP (0.9), FP (0.8), TP (0.7) with 2 GT: recall 1/2 at precision 1, then 1 at 2/3.
    images = [
        ([(0, A)], [(0, 0.9, A), (0, 0.8, B)]),
        ([(0, B)], [(0, 0.7, B)]),
    ]
    assert run(images)["per_class"]["a"]["AP@0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_envelope_lifts_precision_from_later_ranks() -> None:
    # ranks FP, FP, TP, TP with 2 GT: the envelope at recall 1/2 is 2/4 (from rank 4), not 1/3.
    false_positives = [(0, 0.9, rect(12, 12, 14, 14)), (0, 0.8, rect(15, 15, 17, 17))]
    images = [([(0, A), (0, B)], [*false_positives, (0, 0.7, A), (0, 0.6, B)])]
    assert run(images)["per_class"]["a"]["AP@0.5"] == pytest.approx(0.5)


def test_duplicate_detection_of_one_gt_is_a_false_positive() -> None:
    # ranks: A (TP), A again (FP), B (TP) -> 0.5 * 1 + 0.5 * 2/3
    images = [([(0, A), (0, B)], [(0, 0.9, A), (0, 0.8, A), (0, 0.7, B)])]
    assert run(images)["per_class"]["a"]["AP@0.5"] == pytest.approx(5 / 6)


def test_taken_best_gt_gives_false_positive_without_fallback() -> None:
    gt_b = rect(0, 4, 10, 14)  # overlaps A in 60 px
    pred = rect(0, 1, 10, 12)  # IoU 0.75 with A (taken), 80/130 ~ 0.615 with gt_b
    images = [([(0, gt_b), (0, A)], [(0, 0.9, A), (0, 0.8, pred)])]
    per_class = run(images)["per_class"]["a"]
    assert per_class["AP@0.5"] == 0.5  # a fallback to gt_b would give 1.0
    assert per_class["AP@0.25"] == 0.5
    assert per_class["ABO"] == pytest.approx((80 / 130 + 1.0) / 2)


def test_prediction_below_threshold_counts_only_at_lower_thresholds() -> None:
    images = [([(0, A)], [(0, 0.9, HALF_A)])]
    per_class = run(images)["per_class"]["a"]
    assert (per_class["AP@0.25"], per_class["AP@0.5"], per_class["AP@0.75"]) == (1.0, 1.0, 0.0)


def test_classes_are_matched_separately_and_mean_skips_classes_without_gt() -> None:
    # The class-b prediction on the class-a object is no TP for a; class c has no ground truth.
    images = [([(0, A), (1, B)], [(1, 0.9, A), (2, 0.8, B)])]
    metrics = run(images, class_names=("a", "b", "c"))
    assert set(metrics["per_class"]) == {"a", "b"}
    assert metrics["per_class"]["a"]["AP@0.5"] == 0.0  # ground truth, no predictions
    assert metrics["per_class"]["b"]["AP@0.5"] == 0.0
    assert metrics["mAP_r@0.5"] == 0.0
    assert metrics["ABO"] == 0.0


def test_mean_is_over_classes_not_instances() -> None:
    images = [([(0, A), (1, A), (1, B)], [(0, 0.9, A)])]
    metrics = run(images)
    assert metrics["mAP_r@0.5"] == 0.5  # class a: 1.0, class b: 0.0
    assert metrics["ABO"] == pytest.approx(1 / 3)  # over all instances
    assert metrics["per_class"]["b"]["ABO"] == 0.0


def test_abo_by_hand() -> None:
    images = [
        ([(0, A), (0, B)], [(0, 0.1, HALF_A), (0, 0.2, rect(20, 20, 30, 25)), (0, 0.3, B)]),
        ([(1, A)], [(1, 0.5, rect(0, 0, 10, 8))]),
    ]
    metrics = run(images)
    assert metrics["per_class"]["a"]["ABO"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["per_class"]["b"]["ABO"] == pytest.approx(0.8)
    assert metrics["ABO"] == pytest.approx((0.5 + 1.0 + 0.8) / 3)


def test_ties_in_score_keep_processing_order() -> None:
    # Same score: the FP of image 0 ranks before the TP of image 1 -> precision 1/2 at recall 1.
    images = [([], [(0, 0.5, A)]), ([(0, A)], [(0, 0.5, A)])]
    assert run(images)["per_class"]["a"]["AP@0.5"] == 0.5
    images.reverse()
    assert run(images)["per_class"]["a"]["AP@0.5"] == 1.0


def test_rle_bool_and_uncompressed_masks_agree() -> None:
    # Uncompressed RLE: run lengths of alternating 0/1 pixels in column-major order, 0 first.
    counts, value, run_length = [], False, 0
    for pixel in B.ravel(order="F"):
        if pixel == value:
            run_length += 1
        else:
            counts.append(run_length)
            value, run_length = pixel, 1
    counts.append(run_length)
    as_arrays = run([([(0, A), (0, B)], [(0, 0.9, HALF_A), (0, 0.5, B)])])
    as_rles = run([([(0, encode_mask(A)), (0, {"size": [32, 32], "counts": counts})],
                    [(0, 0.9, encode_mask(HALF_A)), (0, 0.5, encode_mask(B))])])  # fmt: skip
    assert as_arrays == as_rles
    assert as_arrays["per_class"]["a"]["ABO"] == 0.75


def test_reset_forgets_processed_images() -> None:
    evaluator = InstanceSegEvaluator(["a"])
    evaluator.process(0, [(0, A)], [])
    evaluator.reset()
    evaluator.process(0, [(0, A)], [(0, 1.0, A)])
    assert evaluator.evaluate()["mAP_r@0.5"] == 1.0


def test_average_precision_of_empty_ranking_is_zero() -> None:
    assert average_precision(np.zeros(0, dtype=bool), 3) == 0.0


# --- errors ------------------------------------------------------------------------------------


def test_evaluator_errors() -> None:
    evaluator = InstanceSegEvaluator(["a"])
    with pytest.raises(ValueError, match="label 1"):
        evaluator.process(0, [(1, A)], [])
    with pytest.raises(ValueError, match="label -1"):
        evaluator.process(0, [], [(-1, 0.5, A)])
    with pytest.raises(ValueError, match="different sizes"):
        evaluator.process(0, [(0, A)], [(0, 0.5, rect(0, 0, 2, 2, size=(16, 16)))])
    with pytest.raises(ValueError, match="not finite"):
        evaluator.process(0, [(0, A)], [(0, math.nan, A)])
    with pytest.raises(ValueError, match="2-D"):
        evaluator.process(0, [(0, A[None])], [])
    with pytest.raises(ValueError, match="no ground-truth"):
        evaluator.evaluate()
    evaluator.process(0, [(0, A)], [])
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process(0, [(0, A)], [])
    with pytest.raises(ValueError, match="thresholds"):
        InstanceSegEvaluator(["a"], iou_thresholds=(0.0,))


# --- an independent slow reference on random fixtures -----------------------------------------


def reference_ap(images, label: int, threshold: float) -> tuple[float, float, int]:
    """(AP, ABO, num_gt) of one class with plain loops and bool-array IoU.

    AP here is (1 / num_gt) * sum over the true positives at rank k of the largest precision
    at any rank >= k: the same quantity as the all-point envelope area, computed another way.
    """

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = np.logical_or(a, b).sum()
        return float(np.logical_and(a, b).sum() / union) if union else 0.0

    ranked = []
    for image_index, (_, predictions) in enumerate(images):
        for score, mask in ((s, m) for lab, s, m in predictions if lab == label):
            ranked.append((score, image_index, mask))
    ranked.sort(key=lambda item: -item[0])  # sort() is stable
    taken = set()
    outcomes = []
    for _, image_index, mask in ranked:
        gt_masks = [(j, m) for j, (lab, m) in enumerate(images[image_index][0]) if lab == label]
        best_j, best_iou = None, -1.0
        for j, gt_mask in gt_masks:
            value = iou(mask, gt_mask)
            if value > best_iou:
                best_j, best_iou = j, value
        if best_j is not None and best_iou >= threshold and (image_index, best_j) not in taken:
            taken.add((image_index, best_j))
            outcomes.append(True)
        else:
            outcomes.append(False)
    num_gt = sum(lab == label for gt, _ in images for lab, _ in gt)
    precisions = []
    tp = 0
    for rank, outcome in enumerate(outcomes, start=1):
        tp += outcome
        precisions.append(tp / rank)
    ap = 0.0
    for k, outcome in enumerate(outcomes):
        if outcome:
            ap += max(precisions[k:]) / num_gt
    overlaps = []
    for gt, predictions in images:
        for lab, gt_mask in gt:
            if lab == label:
                same = [iou(m, gt_mask) for plab, _, m in predictions if plab == label]
                overlaps.append(max(same, default=0.0))
    return ap, sum(overlaps) / len(overlaps) if overlaps else math.nan, num_gt


def random_rect(rng: random.Random, size: int) -> np.ndarray:
    y0, x0 = rng.randrange(size - 2), rng.randrange(size - 2)
    return rect(y0, x0, rng.randint(y0 + 1, size), rng.randint(x0 + 1, size), (size, size))


def jitter(rng: random.Random, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]
    y0 = min(max(ys.min() + rng.randint(-2, 2), 0), size - 1)
    x0 = min(max(xs.min() + rng.randint(-2, 2), 0), size - 1)
    y1 = max(min(ys.max() + 1 + rng.randint(-2, 2), size), y0 + 1)
    x1 = max(min(xs.max() + 1 + rng.randint(-2, 2), size), x0 + 1)
    return rect(y0, x0, y1, x1, (size, size))


def random_images(seed: int, num_classes: int = 3, size: int = 24):
    rng = random.Random(seed)
    images = []
    for _ in range(rng.randint(1, 6)):
        gt = [
            (rng.randrange(num_classes), random_rect(rng, size)) for _ in range(rng.randint(0, 4))
        ]
        predictions = []
        for label, mask in gt:
            for _ in range(rng.randint(0, 2)):
                # Scores on a coarse grid, so that ties (broken by order) happen.
                predictions.append((label, rng.randint(0, 10) / 10, jitter(rng, mask)))
        for _ in range(rng.randint(0, 3)):
            label = rng.randrange(num_classes)
            predictions.append((label, rng.randint(0, 10) / 10, random_rect(rng, size)))
        rng.shuffle(predictions)
        images.append((gt, predictions))
    return images


@pytest.mark.parametrize("seed", range(40))
def test_matches_slow_reference_on_random_fixtures(seed: int) -> None:
    images = random_images(seed)
    class_names = ("a", "b", "c")
    if not any(gt for gt, _ in images):
        with pytest.raises(ValueError, match="no ground-truth"):
            run(images, class_names)
        return
    metrics = run(images, class_names)
    classes_with_gt = []
    for label, name in enumerate(class_names):
        ap_by_threshold = {t: reference_ap(images, label, t) for t in THRESHOLDS}
        num_gt = ap_by_threshold[0.5][2]
        if num_gt == 0:
            assert name not in metrics["per_class"]
            continue
        classes_with_gt.append(name)
        row = metrics["per_class"][name]
        assert row["num_gt"] == num_gt
        assert row["ABO"] == pytest.approx(ap_by_threshold[0.5][1], abs=1e-12)
        for t in THRESHOLDS:
            assert row[f"AP@{t:g}"] == pytest.approx(ap_by_threshold[t][0], abs=1e-12)
    for t in THRESHOLDS:
        expected = np.mean([metrics["per_class"][n][f"AP@{t:g}"] for n in classes_with_gt])
        assert metrics[f"mAP_r@{t:g}"] == pytest.approx(expected)


# --- agreement with pycocotools' COCOeval -----------------------------------------------------


def cell_fixture(seed: int, num_classes: int = 3):
    """Images of 2x2 cells of 16 px; every object and prediction lies inside one cell, and a
    cell holds at most one ground-truth object, so no prediction overlaps two ground truths.
    There COCOeval's matching (best *free* ground truth) and the VOC rule (best ground truth,
    no fallback) give the same TP/FP labels."""
    rng = random.Random(seed)
    images = []
    for _ in range(10):
        gt, predictions = [], []
        for cy in (0, 16):
            for cx in (0, 16):
                cell = rect(cy, cx, cy + 16, cx + 16)
                if rng.random() < 0.7:
                    label = rng.randrange(num_classes)
                    y0, x0 = cy + rng.randint(0, 6), cx + rng.randint(0, 6)
                    mask = rect(y0, x0, y0 + rng.randint(6, 10), x0 + rng.randint(6, 10))
                    gt.append((label, mask))
                    for _ in range(rng.randint(0, 2)):
                        wrong = rng.random() < 0.2
                        pred_label = rng.randrange(num_classes) if wrong else label
                        predictions.append((pred_label, rng.random(), jitter(rng, mask) & cell))
                if rng.random() < 0.3:
                    y0, x0 = cy + rng.randint(0, 8), cx + rng.randint(0, 8)
                    mask = rect(y0, x0, y0 + rng.randint(2, 8), x0 + rng.randint(2, 8))
                    predictions.append((rng.randrange(num_classes), rng.random(), mask))
        images.append((gt, predictions))
    return images


def coco_dataset(images, num_classes: int) -> tuple[dict, list[dict]]:
    dataset = {"images": [], "annotations": [], "categories": []}
    dataset["categories"] = [{"id": c + 1, "name": f"class{c}"} for c in range(num_classes)]
    results = []
    for image_id, (gt, predictions) in enumerate(images, start=1):
        dataset["images"].append({"id": image_id, "height": 32, "width": 32})
        for label, mask in gt:
            rle = encode_mask(mask)
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1,
                "image_id": image_id,
                "category_id": label + 1,
                "segmentation": rle,
                "area": rle_area(rle),
                "bbox": rle_box(rle),
                "iscrowd": 0,
            })  # fmt: skip
        for label, score, mask in predictions:
            results.append({
                "image_id": image_id, "category_id": label + 1, "score": score,
                "segmentation": encode_mask(mask),
            })  # fmt: skip
    return dataset, results


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_cocoeval_where_definitions_coincide(seed: int) -> None:
    num_classes = 3
    images = cell_fixture(seed, num_classes)
    metrics = run(images, [f"class{c}" for c in range(num_classes)])
    dataset, results = coco_dataset(images, num_classes)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        # Same thresholds, one area range covering everything, maxDets above any image's count.
        coco_eval.params.iouThrs = np.array(THRESHOLDS)
        coco_eval.params.areaRng = [[0, 1e10]]
        coco_eval.params.areaRngLbl = ["all"]
        coco_eval.params.maxDets = [100]
        # COCO averages the envelope at fixed recall points (101 by default), which differs from
        # the all-point area by up to ~1/101. Recall only changes at multiples of 1/num_gt, so
        # sampling the envelope at all multiples of 1/L, L = lcm of the per-class num_gt, gives
        # exactly the all-point area; then the two must agree to rounding (COCO adds eps to the
        # precision denominator).
        num_gt = [row["num_gt"] for row in metrics["per_class"].values()]
        lcm = math.lcm(*num_gt)
        coco_eval.params.recThrs = np.arange(1, lcm + 1) / lcm
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    assert len(metrics["per_class"]) == num_classes
    compared = 0
    for k in range(num_classes):
        has_predictions = any(lab == k for _, preds in images for lab, _, _ in preds)
        for i, t in enumerate(THRESHOLDS):
            ours = metrics["per_class"][f"class{k}"][f"AP@{t:g}"]
            if has_predictions:
                assert ours == pytest.approx(precision[i, :, k, 0, 0].mean(), abs=1e-9)
                compared += 1
            else:  # COCOeval leaves such a class undefined (-1); ours is 0
                assert ours == 0.0
    assert compared >= 6
    assert 0.0 < metrics["mAP_r@0.5"] < 1.0  # the fixture is neither trivial nor hopeless


# --- COCO files ---------------------------------------------------------------------------------


def write_coco_files(tmp_path: Path, results) -> tuple[Path, Path]:
    square = [[0, 0, 10, 0, 10, 10, 0, 10]]  # polygon of the 10x10 square at the origin
    gt = {
        "images": [{"id": 7, "height": 32, "width": 32}, {"id": 9, "height": 32, "width": 32}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "segmentation": square,
             "area": 100.0, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": encode_mask(B),
             "area": 100.0, "bbox": [20, 20, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 1, "segmentation": encode_mask(A),
             "area": 100.0, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        ],
    }  # fmt: skip
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def test_evaluate_coco_files(tmp_path: Path) -> None:
    polygon_mask = mask_utils.decode(
        mask_utils.frPyObjects([[0, 0, 10, 0, 10, 10, 0, 10]], 32, 32)[0]
    ).astype(bool)
    results = [
        {"image_id": 7, "category_id": 3, "score": 0.9, "segmentation": encode_mask(polygon_mask)},
        {"image_id": 7, "category_id": 1, "score": 0.8, "segmentation": encode_mask(B)},
        # On the crowd region: crowd is not ground truth here, so this is a false positive.
        {"image_id": 9, "category_id": 1, "score": 0.95, "segmentation": encode_mask(A)},
    ]
    metrics = evaluate_coco_files(*write_coco_files(tmp_path, results))
    assert list(metrics["per_class"]) == ["dog", "cat"]  # categories sorted by id
    assert metrics["per_class"]["dog"]["num_gt"] == 1  # the crowd annotation is excluded
    assert metrics["per_class"]["cat"]["AP@0.75"] == 1.0
    assert metrics["per_class"]["dog"]["AP@0.5"] == 0.5  # the crowd FP ranks first
    assert metrics["mAP_r@0.5"] == 0.75
    assert metrics["ABO"] == 1.0
    # COCOeval ignores detections on crowd regions, so its AP is perfect.
    assert metrics["coco_mask_AP"] == pytest.approx(1.0)
    assert metrics["coco_mask_AP50"] == pytest.approx(1.0)
    assert metrics["coco_mask_AP75"] == pytest.approx(1.0)

    no_results = evaluate_coco_files(*write_coco_files(tmp_path, []))
    assert no_results["mAP_r@0.25"] == 0.0
    assert no_results["coco_mask_AP"] == 0.0


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ({"image_id": 7}, "must be a JSON list"),
        ([{"image_id": 8, "category_id": 1, "score": 1.0, "segmentation": encode_mask(A)}],
         "unknown image_id 8"),
        ([{"image_id": 7, "category_id": 2, "score": 1.0, "segmentation": encode_mask(A)}],
         "unknown category_id 2"),
        ([{"image_id": 7, "category_id": 1, "score": 1.0, "segmentation": [[0, 0, 1, 1]]}],
         "must be an RLE"),
        ([{"image_id": 7, "score": 1.0}], "lacks"),
        ([{"image_id": 7, "category_id": 1, "score": "high", "segmentation": encode_mask(A)}],
         "score must be a number"),
        ([{"image_id": 7, "category_id": 1, "score": None, "segmentation": encode_mask(A)}],
         "score must be a number"),
    ],
)  # fmt: skip
def test_evaluate_coco_files_rejects_bad_results(tmp_path: Path, results, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_coco_files(*write_coco_files(tmp_path, results))


# --- the table ----------------------------------------------------------------------------------


def test_format_table() -> None:
    metrics = run([([(0, A), (1, B)], [(0, 0.9, A), (1, 0.9, HALF_A)])], ("person", "horse"))
    metrics["coco_mask_AP"] = 0.25
    lines = format_table(metrics).splitlines()
    assert lines[0].split() == ["class", "num_gt", "AP@0.25", "AP@0.5", "AP@0.75", "ABO"]
    assert lines[2].split() == ["person", "1", "100.0", "100.0", "100.0", "100.0"]
    assert lines[3].split() == ["horse", "1", "0.0", "0.0", "0.0", "0.0"]
    assert lines[5].split() == ["mean", "2", "50.0", "50.0", "50.0", "50.0"]
    assert lines[6] == "COCO: coco_mask_AP=25.0"


# --- annotation assist quality --------------------------------------------------------------------


def test_assist_quality_by_hand() -> None:
    gt = [(0, A), (1, B)]
    samples = [
        [(0, A), (0, B)],  # A exact; B found but with the wrong class
        [(0, HALF_A), (1, B)],  # A at IoU 0.5, B exact
        [],
    ]
    quality = assist_quality(samples, gt)
    assert quality == AssistQuality(top1_iou=0.5, best_of_k_iou=1.0)
    assert assist_quality(samples[1:], gt) == AssistQuality(top1_iou=0.75, best_of_k_iou=0.75)
    with pytest.raises(ValueError, match="at least one sample"):
        assist_quality([], gt)
    with pytest.raises(ValueError, match="ground-truth"):
        assist_quality(samples, [])
