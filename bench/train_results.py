"""Train and evaluate every configuration of the results table through the CLI.

For each run: `discoseg train` on the synthetic train split, then `discoseg evaluate --model` on
the val split. Prints one JSON object per run as it finishes, and at the end the markdown table
(mAP_r at IoU 0.25 / 0.5 / 0.75, ABO, training seconds). With `--parallel N`, N runs train at
once with one torch thread each (on 2 cores, two runs of one thread finish sooner than two runs
of two threads one after the other); their training seconds then count one thread each.

Every run uses the `tiny` network. The schedule is the table's (`TABLE_SCHEDULE`, 7 Mask R-CNN
epochs), or with `--preset-schedule` the tiny preset's shorter default.
"""

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from training.config import SCHEDULES, Schedule

# The schedule of every table: the small and paper presets' default.
TABLE_SCHEDULE = SCHEDULES["small"]


def schedule_options(schedule: Schedule) -> list[str]:
    options = []
    for name, value in asdict(schedule).items():
        options += ["--" + name.replace("_", "-"), str(value)]
    return options


def runs(schedule: Schedule) -> dict[str, list[str]]:
    """The table's rows: their `discoseg train` options after the schedule's."""
    # The baseline's Mask R-CNN trains as long as DISCO's: all of its P-step epochs in one phase.
    p_epochs = str(schedule.prediction_epochs)
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


def train_and_evaluate(
    index: int, name: str, options: list[str], args: argparse.Namespace, env: dict[str, str]
) -> dict:
    data = args.out / "data"
    bundle = args.out / f"run{index}.pt"
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
        *args.schedule_options,
        *options,
        *args.train_args.split(),
        env=env,
    )
    seconds = time.perf_counter() - start
    metrics_file = args.out / f"run{index}.metrics.json"
    discoseg(
        "evaluate",
        "--data",
        str(data / "val.json"),
        "--images",
        str(data),
        "--model",
        str(bundle),
        "--out",
        str(metrics_file),
        env=env,
    )
    metrics = json.loads(metrics_file.read_text())
    row = {"run": name, "options": " ".join(options), "train_s": round(seconds, 1)}
    row |= {k: round(metrics[k], 4) for k in ("mAP_r@0.25", "mAP_r@0.5", "mAP_r@0.75", "ABO")}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="run names (substrings) to run")
    parser.add_argument("--train-args", default="", help="extra `discoseg train` options")
    parser.add_argument("--parallel", type=int, default=1, help="runs training at once")
    parser.add_argument(
        "--preset-schedule",
        action="store_true",
        help="the tiny preset's default schedule instead of the table's",
    )
    args = parser.parse_args()
    schedule = SCHEDULES["tiny"] if args.preset_schedule else TABLE_SCHEDULE
    args.schedule_options = schedule_options(schedule)

    data = args.out / "data"
    if not (data / "val.json").is_file():
        discoseg(
            "make-data",
            str(data),
            "--n",
            str(args.n),
            "--size",
            str(args.size),
            "--seed",
            str(args.seed),
            "--val-fraction",
            str(args.val_fraction),
        )
    env = dict(os.environ)
    if args.parallel > 1:
        # passive OpenMP threads: spinning ones take the cores from the other runs
        env |= {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    selected = [
        (index, name, options)
        for index, (name, options) in enumerate(runs(schedule).items())
        if not args.only or any(part in name for part in args.only)
    ]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(lambda run: train_and_evaluate(*run, args, env), selected))
    print("| model | options | mAP_r 0.25 | 0.5 | 0.75 | ABO | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | `{r['options']}` | {r['mAP_r@0.25']:.3f} | {r['mAP_r@0.5']:.3f} "
            f"| {r['mAP_r@0.75']:.3f} | {r['ABO']:.3f} | {r['train_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
