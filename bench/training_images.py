"""What the scripts that look at a model's choices on training images share: their options and
the model, dataset and proposal cache those name."""

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch

from models.annotations import TagAnnotation
from models.bundle import ModelBundle, load_bundle
from models.structures import InstanceSet
from training.data.coco import CocoDataset
from training.data.dataset import Instances, Sample, Supervision
from training.proposal_cache import DiskProposalCache


def argument_parser(description: str, limit: int, **extra: int) -> argparse.ArgumentParser:
    """--model, --data, --images, --cache-dir (the training proposal cache, so that training
    images are not recomputed), --limit, and an int option per `extra` keyword (its default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=limit)
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser


def parse_args(description: str, limit: int, **extra: int) -> argparse.Namespace:
    """The options of `argument_parser`, parsed."""
    return argument_parser(description, limit, **extra).parse_args()


def open_inputs(
    args: argparse.Namespace, supervision: Supervision
) -> tuple[ModelBundle, CocoDataset, DiskProposalCache]:
    bundle = load_bundle(args.model)
    dataset = CocoDataset(args.data, args.images, supervision)
    return bundle, dataset, DiskProposalCache(args.cache_dir, bundle.proposal_settings)


def tag_picks(
    bundle: ModelBundle,
    dataset: CocoDataset,
    cache: DiskProposalCache,
    limit: int,
    instances_per_tag: int | None = None,
) -> Iterator[tuple[Sample, Instances, TagAnnotation, torch.Tensor, InstanceSet]]:
    """For each of the first `limit` images: the sample, its ground truth, its tags, its
    proposals and the model's pick given the tags (one sample, noise seed 0, at most
    `instances_per_tag` instances of a tagged class; None: as served)."""
    for index in range(min(limit, len(dataset))):
        sample = dataset[index]
        tags = TagAnnotation(tuple(sorted(sample.tags)))
        proposals = cache.get(sample.image)
        generator = torch.Generator().manual_seed(0)
        pick = bundle.pseudo_labels(
            sample.image, proposals, tags, 1, generator, instances_per_tag=instances_per_tag
        )[0]
        yield sample, dataset.ground_truth(index), tags, proposals, pick
