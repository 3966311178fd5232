"""Wall time of preparing training items (proposals computed, context, candidate geometry) in
this process against `--workers` processes, on the same images, timed in one run.

Each configuration starts from an empty proposal cache, so both compute the proposals. Prints
one JSON object: seconds and images per second of each, and the ratio.

    python bench/item_preparation.py --data DATA/train.json --images DATA --limit 100 --workers 2
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from models.conditional import ConditionalConfig
from models.proposals import ProposalSettings
from training.config import TrainConfig
from training.data.coco import CocoDataset
from training.proposal_cache import ProposalCache
from training.run import prepare_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="COCO annotation JSON")
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--supervision", default="tags", choices=("tags", "boxes"))
    parser.add_argument("--limit", type=int, default=100, help="images to prepare")
    parser.add_argument("--workers", type=int, default=2, help="processes to compare against one")
    args = parser.parse_args()
    dataset = CocoDataset(args.data, args.images, args.supervision)
    indices = list(range(min(args.limit, len(dataset))))
    config = TrainConfig()
    settings = ProposalSettings(max_proposals=config.max_proposals)
    seconds = {}
    for workers in (1, args.workers):
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = ProposalCache(Path(cache_dir), settings)
            start = time.perf_counter()
            prepare_items(
                dataset,
                indices,
                cache,
                ConditionalConfig(),
                config.image_size,
                False,
                workers=workers,
            )
            seconds[workers] = time.perf_counter() - start
    one, many = seconds[1], seconds[args.workers]
    result = {
        "images": len(indices),
        "seconds_1_process": round(one, 1),
        f"seconds_{args.workers}_processes": round(many, 1),
        "images_per_s_1_process": round(len(indices) / one, 2),
        f"images_per_s_{args.workers}_processes": round(len(indices) / many, 2),
        "speedup": round(one / many, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
