"""Reductions over an image's proposal masks (CPU): the forms the code uses against the plain ones.

Prints one JSON object of median milliseconds, each pair timed interleaved on the same masks:
- `any`: whether each mask has a pixel along each axis (what `mask_boxes` needs), torch's any()
  of bools against `models.structures.any_along` (a max over the uint8 view);
- `iou`: a P-step target's matching, the proposals' mask IoU with its instances, as a product of
  masks (`models.delta.mask_iou`) against columns of the candidates' pairwise IoUs (given tags the
  instances are proposals; `Candidates.iou` from the intersections computed once per image).
Both pairs give identical values; the script checks it.

    python bench/mask_reductions.py --proposals 290 --size 256 --instances 3 --repeats 20
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from models.candidates import Candidates, tag_candidates
from models.delta import mask_iou
from models.structures import any_along, mask_areas


def random_masks(count: int, size: int, generator: torch.Generator) -> Tensor:
    """BoolTensor[count, size, size] of filled rectangles of random place and size."""
    corners = torch.randint(0, size - 2, (count, 2), generator=generator)
    extents = torch.randint(2, size // 2, (count, 2), generator=generator)
    masks = torch.zeros((count, size, size), dtype=torch.bool)
    for mask, (y, x), (h, w) in zip(masks, corners.tolist(), extents.tolist(), strict=True):
        mask[y : y + h, x : x + w] = True
    return masks


def median_ms(pairs: dict[str, tuple[Callable, Callable]], repeats: int) -> dict[str, list[float]]:
    """Per name, the median milliseconds of the plain and the used form, timed interleaved."""
    times = {name: ([], []) for name in pairs}
    for _ in range(repeats):
        for name, functions in pairs.items():
            for samples, function in zip(times[name], functions, strict=True):
                start = time.perf_counter()
                function()
                samples.append((time.perf_counter() - start) * 1000)
    return {name: [statistics.median(s) for s in both] for name, both in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proposals", type=int, default=290)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--instances", type=int, default=3, help="instances of the target")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    masks = random_masks(args.proposals, args.size, torch.Generator().manual_seed(0))
    areas = mask_areas(masks)
    candidates = tag_candidates(masks)
    geometry = {"intersection": candidates.intersection, "areas": candidates.areas}
    instances = torch.arange(args.instances)

    def known_iou() -> tuple[Tensor]:
        """As a training item gives them: its candidates with their stored geometry."""
        fresh = Candidates(masks, candidates.proposal_ids, candidates.box_ids)
        fresh.__dict__.update(geometry)
        return (fresh.iou[:, instances],)

    pairs = {
        "any": (
            lambda: (masks.any(2), masks.any(1)),
            lambda: (any_along(masks, 2), any_along(masks, 1)),
        ),
        "iou": (lambda: (mask_iou(masks, masks[instances], areas),), known_iou),
    }
    for plain, used in pairs.values():
        if not all(torch.equal(a, b) for a, b in zip(plain(), used(), strict=True)):
            raise SystemExit("the two forms differ")
    result = {"proposals": args.proposals, "size": args.size, "threads": torch.get_num_threads()}
    for name, (plain_ms, used_ms) in median_ms(pairs, args.repeats).items():
        result[name] = {"plain_ms": round(plain_ms, 2), "used_ms": round(used_ms, 3)}
        result[name]["ratio"] = round(plain_ms / used_ms, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
