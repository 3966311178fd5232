"""`train`: from a COCO-format dataset to a checkpoint bundle (items, networks, schedule)."""

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from models.bundle import build_bundle, load_bundle
from models.conditional import ConditionalConfig
from models.devices import resolve_device
from models.inference import InferenceConfig
from models.proposals import ProposalSettings
from training.config import TrainConfig
from training.data.coco import CocoDataset
from training.data.dataset import Sample
from training.distributed import Rank, init_distributed, local_rank, shard_indices
from training.items import TrainingItem, prepare_item
from training.proposal_cache import DiskProposalCache
from training.trainer import Trainer, state_path

logger = logging.getLogger(__name__)


def prepare_items(
    dataset: CocoDataset,
    indices: list[int],
    cache: DiskProposalCache,
    conditional_config: ConditionalConfig,
    image_size: int,
    progress: bool,
    baseline: str | None = None,
    workers: int = 1,
) -> list[TrainingItem]:
    """Proposals (cached on disk), proposal context and candidate geometry for each image.

    With `workers` > 1 the images are prepared in that many processes of one torch thread
    each (the items are the same); the images are read in this one.
    """
    prepare = partial(
        _prepare_item,
        cache=cache,
        config=conditional_config,
        max_size=image_size,
        baseline=baseline,
    )
    samples = ((i, dataset[i]) for i in indices)
    bar = partial(tqdm, total=len(indices), desc="proposals", unit="image", disable=not progress)
    if workers <= 1:
        return list(bar(map(prepare, samples)))
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(1,),
    ) as pool:
        return list(bar(pool.map(prepare, samples, chunksize=4)))


def _prepare_item(indexed_sample: tuple[int, Sample], **settings) -> TrainingItem:
    return prepare_item(*indexed_sample, **settings)


def preparation_workers(images: int, rank: Rank) -> int:
    """Processes for `prepare_items`: this rank's share of the CPUs, and none beyond one per
    16 images (a worker's start-up, imports included, costs a few seconds)."""
    cpus = len(os.sched_getaffinity(0)) // rank.world_size
    return max(1, min(cpus, images // 16))


def conditional_config_for(config: TrainConfig) -> ConditionalConfig:
    """The conditional network's settings that training chooses, from the config (detectron2's
    from_config); the architecture keeps ConditionalConfig's defaults."""
    return ConditionalConfig(
        noise_amplitude=config.noise_amplitude,
        border_prior_weight=config.border_prior_weight,
        inference=InferenceConfig(max_instances_per_tag=config.max_instances_per_tag or None),
    )


def train(
    config: TrainConfig,
    *,
    annotations: Path,
    images: Path,
    out: Path,
    resume: bool = False,
    cache_dir: Path | None = None,
    conditional_config: ConditionalConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train both networks (or, under masks supervision, the prediction network alone) and
    write the bundle to `out`. Returns `out`.

    conditional_config: the conditional network's settings in place of those derived from
    `config` (`conditional_config_for`), e.g. a smaller network.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device, gpu=local_rank())
    rank = init_distributed(device)
    dataset = CocoDataset(annotations, images, config.supervision)
    if len(dataset) == 0:
        raise ValueError(
            f"{annotations} has no usable training image ({dataset.skipped.summary()})"
        )
    settings = ProposalSettings(max_proposals=config.max_proposals)
    conditional_config = conditional_config or conditional_config_for(config)
    if resume and out.is_file() and state_path(out).is_file():
        bundle = load_bundle(out)
        if bundle.classes != dataset.classes:
            raise ValueError(
                f"cannot resume: {out} was trained on the classes {bundle.classes}, "
                f"the dataset has {dataset.classes}"
            )
        if conditional_config != bundle.conditional.config:
            raise ValueError(
                "cannot resume: the conditional network's settings differ from the "
                "interrupted run's"
            )
    else:
        resume = False
        bundle = build_bundle(
            classes=dataset.classes,
            preset=config.preset,
            conditional_config=conditional_config,
            proposal_settings=settings,
            initialisation={
                "backbone_weights": config.backbone_weights,
                "coco_weights": config.coco_weights,
            },
            metadata={"supervision": config.supervision, "train_images": len(dataset)},
        )
    bundle.to(device)
    cache = DiskProposalCache(cache_dir or out.parent / ".proposals", settings)
    shard = shard_indices(len(dataset), rank)
    items = prepare_items(
        dataset,
        shard,
        cache,
        conditional_config,
        config.image_size,
        progress and rank.is_main,
        config.baseline,
        preparation_workers(len(shard), rank),
    )
    trainer = Trainer(config, bundle, items, out, device, rank=rank, progress=progress)
    if resume:
        trainer.load_state()
    trainer.run()
    return out
