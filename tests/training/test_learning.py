"""Training that must learn: when an optimiser step, a loss or the data path breaks, these fail.

Each test trains the tiny preset for a few dozen steps on a handful of synthetic scenes (fixed
seeds) through `training.run.train`, as `discoseg train` does, and measures what the trained
network finds on those images against the same network untrained.
"""

from pathlib import Path

import pytest
import torch

from models.bundle import ModelBundle, build_bundle, load_bundle
from training.config import TrainConfig
from training.data.coco import CocoDataset
from training.data.synthetic import CLASSES, generate_dataset
from training.evaluate import InstanceSegEvaluator
from training.run import train

pytestmark = pytest.mark.slow

SIZE = 96
SUPERVISED = TrainConfig(
    supervision="masks",
    rounds=0,
    final_p_epochs=20,
    batch_size=2,
    image_size=SIZE,
    device="cpu",
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scenes")
    train_json, _ = generate_dataset(root, n=8, size=SIZE, seed=21, val_fraction=0.0)
    return train_json, root


def mean_ap(bundle: ModelBundle, train_json: Path, root: Path) -> float:
    """mAP_r@0.5 of the prediction network on the images it trained on."""
    dataset = CocoDataset(train_json, root, "masks")
    evaluator = InstanceSegEvaluator(CLASSES, iou_thresholds=(0.5,))
    for index in range(len(dataset)):
        sample = dataset[index]
        instances = bundle.segment(sample.image, score_threshold=0.05)
        truth = zip(sample.labels, sample.masks, strict=True)
        evaluator.process(
            sample.image_id,
            [(int(label) - 1, mask) for label, mask in truth],
            [
                (int(label) - 1, float(score), mask.numpy())
                for label, score, mask in zip(
                    instances.labels, instances.scores, instances.masks, strict=True
                )
            ],
        )
    return evaluator.evaluate()["mAP_r@0.5"]


def test_full_supervision_teaches_the_prediction_network_to_find_the_objects(
    scenes: tuple[Path, Path], tmp_path: Path
) -> None:
    train_json, root = scenes
    out = tmp_path / "supervised.pt"
    torch.manual_seed(0)
    train(SUPERVISED, annotations=train_json, images=root, out=out, progress=False)
    trained = mean_ap(load_bundle(out), train_json, root)
    torch.manual_seed(0)
    untrained = build_bundle(classes=CLASSES, preset="tiny").to("cpu")
    untrained.prediction.eval()
    before = mean_ap(untrained, train_json, root)
    assert trained >= 0.5 and trained >= before + 0.3, (before, trained)
