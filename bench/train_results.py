"""Train and evaluate the configurations of the results table through the CLI.

For each run and training seed: `discoseg train` on the train split of a `discoseg make-data`
family, `discoseg predict` on its val split keeping every detection, and `discoseg evaluate
--results` of those. Prints one JSON object per run as it finishes, and at the end the markdown
table: mAP_r at IoU 0.25 / 0.5 / 0.75 and ABO at the default score threshold as means over the
seeds (the spread of mAP_r@0.5 beside it), training seconds, the share of the C-step's samples
y_p of the prediction network that were not empty, and mAP_r@0.5 over every detection
(`--score-threshold 0`, the paper's convention: a threshold only cuts the tail of the
precision-recall curve, so it can lower AP but never raise it). With `--parallel N`, N runs
train at once with one torch thread each; their training seconds then count one thread each.

Every run uses the `tiny` network and its default schedule. With `--grayscale` the rendered
images are saved again as one-channel images before any training: how much each supervision
leans on colour.
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from models.thresholds import SCORE_THRESHOLD
from training.config import SCHEDULES
from training.make_data_command import FAMILIES


def runs() -> dict[str, list[str]]:
    """The table's rows: their `discoseg train` options."""
    # The baseline's Mask R-CNN trains as long as DISCO's: all of its P-step epochs in one phase.
    p_epochs = str(SCHEDULES["tiny"].prediction_epochs)
    best_proposal = ["--supervision", "tags", "--rounds", "0", "--final-p-epochs", p_epochs]
    best_proposal += ["--k", "1", "--gamma", "1"]
    return {
        "fully supervised (masks, upper bound)": ["--supervision", "masks"],
        "ours, tags (K=10, γ=0.5)": ["--supervision", "tags"],
        "ours, boxes (K=10, γ=0.5)": ["--supervision", "boxes"],
        # one proposal per tag, the rest of the image background
        "baseline: best proposal per tag (warm start only, K=1)": [
            *best_proposal,
            "--unclaimed",
            "background",
        ],
        "baseline: box-as-mask": ["--supervision", "boxes", "--baseline", "box-mask"],
        "baseline: GrabCut in box": ["--supervision", "boxes", "--baseline", "grabcut"],
        "ours, tags, K=1": ["--supervision", "tags", "--k", "1"],
        "ours, tags, γ=0": ["--supervision", "tags", "--gamma", "0"],
        "ours, tags, γ=1": ["--supervision", "tags", "--gamma", "1"],
        "ours, tags, no C-step": ["--supervision", "tags", "--c-epochs", "0"],
        "ours, tags, unclaimed instances as background": [
            "--supervision",
            "tags",
            "--unclaimed",
            "background",
        ],
        "baseline: best proposal per tag, unclaimed instances ignored": best_proposal,
        "ours, tags, every instance of positive margin": [
            "--supervision",
            "tags",
            "--max-instances-per-tag",
            "0",
        ],
    }


def discoseg(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(["discoseg", *args], check=True, env=env)


def c_step_y_p_share(log: Path) -> float | None:
    """The share of the C-step's samples y_p (a training log) that were not empty; None
    without a C-step."""
    shares = [
        record["terms"]["y_p_nonempty"]
        for record in map(json.loads, log.read_text().splitlines())
        if record.get("event") == "step" and record.get("phase") == "c_step"
    ]
    return statistics.mean(shares) if shares else None


def train_and_evaluate(
    index: int, name: str, options: list[str], seed: int, args: argparse.Namespace, env: dict
) -> dict:
    data = args.out / "data"
    bundle = args.out / f"run{index}-seed{seed}.pt"
    start = time.perf_counter()
    discoseg(
        "train",
        "--data",
        str(data / "train.json"),
        "--images",
        str(data),
        "--preset",
        "tiny",
        "--out",
        str(bundle),
        "--cache-dir",
        str(args.out / "proposals"),
        "--no-progress",
        "--seed",
        str(seed),
        *options,
        *args.train_args.split(),
        env=env,
    )
    seconds = time.perf_counter() - start
    metrics, every_detection = evaluate(bundle, data, env)
    row = {"run": name, "options": " ".join(options), "seed": seed, "train_s": round(seconds, 1)}
    row["c_step_y_p_share"] = c_step_y_p_share(Path(f"{bundle}.log.jsonl"))
    row |= {k: round(metrics[k], 4) for k in ("mAP_r@0.25", "mAP_r@0.5", "mAP_r@0.75", "ABO")}
    row["every_detection_mAP_r@0.5"] = round(every_detection["mAP_r@0.5"], 4)
    print(json.dumps(row), flush=True)
    return row


def evaluate(bundle: Path, data: Path, env: dict) -> tuple[dict, dict]:
    """`discoseg predict` of a bundle on the val split with every detection kept, then
    `discoseg evaluate --results` of them at the default score threshold and over every
    detection: their metrics JSONs."""
    val = data / "val.json"
    images = [str(data / image["file_name"]) for image in json.loads(val.read_text())["images"]]
    results = bundle.with_suffix(".results.json")
    discoseg(
        "predict",
        "--model",
        str(bundle),
        *images,
        "--data",
        str(val),
        "--out",
        str(results),
        "--score-threshold",
        "0",
        "--no-progress",
        env=env,
    )
    metrics = []
    for suffix, threshold in ((".metrics.json", str(SCORE_THRESHOLD)), (".metrics-t0.json", "0")):
        metrics_file = bundle.with_suffix(suffix)
        discoseg(
            "evaluate",
            "--data",
            str(val),
            "--results",
            str(results),
            "--score-threshold",
            threshold,
            "--out",
            str(metrics_file),
            env=env,
        )
        metrics.append(json.loads(metrics_file.read_text()))
    return metrics[0], metrics[1]


def summary(name: str, rows: list[dict]) -> str:
    """One markdown row: the means over a run's seeds."""

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    spread = max(r["mAP_r@0.5"] for r in rows) - min(r["mAP_r@0.5"] for r in rows)
    shares = [r["c_step_y_p_share"] for r in rows if r["c_step_y_p_share"] is not None]
    share = f"{statistics.mean(shares):.2f}" if shares else "-"
    return (
        f"| {name} | `{rows[0]['options']}` | {mean('mAP_r@0.25'):.3f} | {mean('mAP_r@0.5'):.3f} "
        f"± {spread / 2:.3f} | {mean('mAP_r@0.75'):.3f} | {mean('ABO'):.3f} "
        f"| {mean('train_s'):.0f} | {share} | {mean('every_detection_mAP_r@0.5'):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--family", choices=tuple(FAMILIES), default="shapes")
    parser.add_argument("--n", type=int, default=125)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per run")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the seeds are FIRST..FIRST+SEEDS-1"
    )
    parser.add_argument("--only", nargs="*", help="run names (substrings) to run")
    parser.add_argument("--train-args", default="", help="extra `discoseg train` options")
    parser.add_argument("--parallel", type=int, default=1, help="runs training at once")
    parser.add_argument(
        "--grayscale",
        action="store_true",
        help="train and evaluate on one-channel copies of the images",
    )
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "val.json").is_file():
        discoseg(
            "make-data",
            str(data),
            "--family",
            args.family,
            "--n",
            str(args.n),
            "--size",
            str(args.size),
            "--seed",
            str(args.data_seed),
            "--val-fraction",
            str(args.val_fraction),
        )
    if args.grayscale:
        for path in (data / "images").iterdir():
            image = Image.open(path)
            if image.mode != "L":
                image.convert("L").save(path)
    env = dict(os.environ)
    if args.parallel > 1:
        # passive OpenMP threads: spinning ones take the cores from the other runs
        env |= {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    selected = [
        (index, name, options, seed)
        for index, (name, options) in enumerate(runs().items())
        if not args.only or any(part in name for part in args.only)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(lambda run: train_and_evaluate(*run, args, env), selected))
    print(f"{args.family}{' (grayscale)' * args.grayscale}: {args.n} images, {args.seeds} seeds")
    print(
        "| model | options | mAP_r 0.25 | 0.5 | 0.75 | ABO | train s | C-step y_p non-empty "
        "| mAP_r 0.5, every detection |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in dict.fromkeys(r["run"] for r in rows):
        print(summary(name, [r for r in rows if r["run"] == name]))


if __name__ == "__main__":
    main()
