"""Training images per second of each phase, from the JSONL logs that `discoseg train` writes.

For every log: per phase, the images of its steps over the seconds of its steps (the steps'
own timing, so data loading between steps is left out), printed as a markdown table.

    python bench/training_throughput.py runs/results/run*.pt.log.jsonl
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path


def phase_throughput(log: Path) -> dict[str, float]:
    """Images per second of each phase that has steps in `log`."""
    images: dict[str, float] = defaultdict(float)
    seconds: dict[str, float] = defaultdict(float)
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "step":
            images[record["phase"]] += record["images"]
            seconds[record["phase"]] += record["seconds"]
    return {phase: images[phase] / seconds[phase] for phase in images if seconds[phase] > 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("logs", type=Path, nargs="+")
    args = parser.parse_args()
    rates = {log.name: phase_throughput(log) for log in args.logs}
    phases = sorted({phase for rate in rates.values() for phase in rate})
    print("| log | " + " | ".join(phases) + " |")
    print("| --- |" + " --- |" * len(phases))
    for name, rate in rates.items():
        cells = [f"{rate[p]:.2f}" if p in rate else "" for p in phases]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
