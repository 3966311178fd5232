"""The networks on a CUDA device (skipped without one)."""

import numpy as np
import pytest
import torch

from models.annotations import TagAnnotation
from models.conditional import ConditionalConfig, ConditionalNet
from models.prediction import build_prediction_net
from models.prediction_loss import pseudo_target_loss
from training.data.synthetic import Scene, render_scene

pytestmark = pytest.mark.gpu


def instance_proposals(scene: Scene) -> torch.Tensor:
    """The scene's visible and whole instance masks, distinct: BoolTensor[P, H, W]. Proposals
    that need no segmenter (OpenCV's contrib modules are not on every GPU machine)."""
    masks = np.concatenate([scene.masks, scene.full_masks])
    distinct = np.unique(masks.reshape(len(masks), -1), axis=0)
    return torch.from_numpy(distinct.reshape(-1, *masks.shape[1:]))


def test_conditional_samples_on_cuda_are_consistent() -> None:
    scene = render_scene(np.random.default_rng(0), 96)
    proposals = instance_proposals(scene)
    net = ConditionalNet(6, ConditionalConfig(trunk_widths=(8, 16))).cuda().eval()
    tags = TagAnnotation(tuple(sorted(set(scene.labels))))
    samples = net.sample(scene.image, proposals, tags, 4, torch.Generator().manual_seed(0))
    assert len(samples) == 4
    for sample in samples:
        assert set(sample.labels.tolist()) == set(tags.labels)


def test_pstep_loss_runs_on_cuda() -> None:
    model = build_prediction_net(preset="tiny", num_classes=3).cuda().train()
    image = torch.rand(3, 128, 128, device="cuda")
    mask = torch.zeros((1, 128, 128), dtype=torch.uint8, device="cuda")
    mask[0, 20:60, 30:90] = 1
    target = {
        "boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0]], device="cuda"),
        "labels": torch.tensor([2], device="cuda"),
        "masks": mask,
    }
    losses = pseudo_target_loss(model, [image], [[target, target]])
    objective = sum(v for k, v in losses.items() if k.startswith("loss_"))
    objective.backward()
    assert torch.isfinite(objective)
