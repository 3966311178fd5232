import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor
from torch.testing import assert_close
from torchvision.models.detection import MaskRCNN

from models.prediction import PRESETS, build_prediction_net
from models.prediction_loss import (
    _discard_negatives_near,
    _sample_rois,
    pseudo_target_loss,
    self_diversity,
)

NUM_CLASSES = 3
MASK_RCNN_TERMS = (
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
)


def make_target(height: int, width: int, rects: list[tuple[int, int, int, int, int]]) -> dict:
    """A target of rectangles (x0, y0, x1, y1, class); an empty list gives no instances."""
    masks = torch.zeros(len(rects), height, width, dtype=torch.uint8)
    for i, (x0, y0, x1, y1, _) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
    return {
        "boxes": torch.tensor([r[:4] for r in rects], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([r[4] for r in rects], dtype=torch.int64),
        "masks": masks,
    }


# sizes that model.transform resizes, so that the resizing of the targets is tested
IMAGE_SIZES = ((96, 128), (128, 96))
TARGET_A = [
    make_target(96, 128, [(10, 8, 60, 50, 1), (70, 40, 120, 90, 2)]),
    make_target(128, 96, [(20, 30, 80, 100, 3)]),
]
TARGET_B = [
    make_target(96, 128, [(30, 20, 90, 70, 3)]),
    make_target(128, 96, [(5, 5, 40, 60, 1), (50, 70, 90, 120, 1)]),
]
EMPTY = [make_target(h, w, []) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module")
def images() -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


def tiny_model(*, exhaustive_sampling: bool = False) -> MaskRCNN:
    torch.manual_seed(0)
    model = build_prediction_net(preset="tiny", num_classes=NUM_CLASSES)
    model.train()
    # smaller still than tiny, for speed; the images are still resized (by 1.25)
    model.transform.min_size, model.transform.max_size = (128,), 160
    model.rpn._pre_nms_top_n["training"], model.rpn._post_nms_top_n["training"] = 200, 100
    if exhaustive_sampling:
        # every anchor and RoI is sampled: the losses no longer depend on the random state
        model.rpn.fg_bg_sampler.batch_size_per_image = 10**9
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**9
    return model


def per_image(*targets_per_k: list[dict]) -> list[list[dict]]:
    """targets[b][k] from K lists of per-image targets."""
    return [list(ts) for ts in zip(*targets_per_k, strict=True)]


def objective(losses: dict[str, Tensor]) -> Tensor:
    return sum(v for name, v in losses.items() if name.startswith("loss_"))


# ---------------------------------------------------------------- the network


def test_presets_are_frozen() -> None:
    assert {"paper", "small", "tiny"} <= PRESETS.keys()
    with pytest.raises(AttributeError):
        PRESETS["tiny"].min_size = 1  # type: ignore[misc]


def test_paper_preset_is_resnet50_fpn_with_torchvision_defaults() -> None:
    model = build_prediction_net(preset="paper", num_classes=20)
    assert model.backbone.body.layer4[-1].conv3.out_channels == 2048  # bottleneck ResNet-50
    assert model.backbone.out_channels == 256
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 21
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_preset_trains_and_predicts(preset: str) -> None:
    torch.manual_seed(0)
    model = build_prediction_net(preset=preset, num_classes=NUM_CLASSES)
    # fewer sampled RoIs and detections than the preset's, only to keep the test fast on CPU
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.roi_heads.detections_per_img = 5
    image = torch.rand(3, 96, 128)
    model.train()
    losses = model([image], [TARGET_A[0]])
    assert set(losses) == set(MASK_RCNN_TERMS)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        (prediction,) = model([image])
    num = len(prediction["boxes"])
    assert num <= 5
    assert prediction["masks"].shape == (num, 1, 96, 128)
    assert prediction["labels"].shape == (num,) and prediction["scores"].shape == (num,)
    assert ((prediction["labels"] >= 1) & (prediction["labels"] <= NUM_CLASSES)).all()


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match="tiny"):
        build_prediction_net(preset="huge", num_classes=NUM_CLASSES)


def test_backbone_weights_from_a_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_prediction_net(preset="tiny", num_classes=NUM_CLASSES, backbone_weights=path)
    body = model.backbone.body
    assert_close(body.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    assert_close(body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"], rtol=0, atol=0)
    assert_close(body.bn1.running_var, state["bn1.running_var"], rtol=0, atol=0)
    # torchvision's fine-tuning choice: the stem and layer1 stay fixed
    assert not body.conv1.weight.requires_grad and body.layer4[1].conv2.weight.requires_grad
    also_as_str = build_prediction_net(
        preset="tiny", num_classes=NUM_CLASSES, backbone_weights=str(path)
    )
    assert_close(also_as_str.backbone.body.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_backbone_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit the resnet50"):
        build_prediction_net(preset="paper", num_classes=NUM_CLASSES, backbone_weights=path)
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="not a resnet18 state_dict"):
        build_prediction_net(preset="tiny", num_classes=NUM_CLASSES, backbone_weights=tensor_file)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="state_dict"):
        build_prediction_net(preset="tiny", num_classes=NUM_CLASSES, backbone_weights=garbage)
    with pytest.raises(FileNotFoundError):
        build_prediction_net(
            preset="tiny", num_classes=NUM_CLASSES, backbone_weights=tmp_path / "missing.pth"
        )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ResNet18_Weights.NO_SUCH_ENTRY", "unknown torchvision weights"),
        ("NoSuch_Weights.IMAGENET1K_V1", "unknown torchvision weights"),
        # ResNet-50 weights do not fit the tiny preset's ResNet-18: refused before any download
        ("ResNet50_Weights.IMAGENET1K_V1", "do not fit resnet18"),
    ],
)
def test_unknown_or_unfitting_weights_name(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_prediction_net(preset="tiny", num_classes=NUM_CLASSES, backbone_weights=name)


# ------------------------------------------------------------------- the loss


def test_one_target_gives_torchvisions_loss(images: list[Tensor]) -> None:
    model = tiny_model(exhaustive_sampling=True)
    expected = model(images, TARGET_A)
    losses = pseudo_target_loss(model, images, per_image(TARGET_A))
    for name in MASK_RCNN_TERMS:
        assert_close(losses[name], expected[name], msg=name)


def test_distinct_targets_average_their_losses(images: list[Tensor]) -> None:
    model = tiny_model(exhaustive_sampling=True)
    loss_a = pseudo_target_loss(model, images, per_image(TARGET_A))
    loss_b = pseudo_target_loss(model, images, per_image(TARGET_B))
    both = pseudo_target_loss(model, images, per_image(TARGET_A, TARGET_B))
    for name in MASK_RCNN_TERMS:
        assert_close(both[name], (loss_a[name] + loss_b[name]) / 2, msg=name)
    assert not torch.isclose(loss_a["loss_mask"], loss_b["loss_mask"])


def test_repeated_samples_weigh_by_how_often_they_occur(images: list[Tensor]) -> None:
    model = tiny_model(exhaustive_sampling=True)
    loss_a = pseudo_target_loss(model, images, per_image(TARGET_A))
    loss_b = pseudo_target_loss(model, images, per_image(TARGET_B))
    mixed = pseudo_target_loss(model, images, per_image(TARGET_A, TARGET_B, TARGET_A))
    for name in MASK_RCNN_TERMS:
        assert_close(mixed[name], (2 * loss_a[name] + loss_b[name]) / 3, msg=name)


def test_copies_of_one_target_give_the_single_target_loss(images: list[Tensor]) -> None:
    model = tiny_model()
    torch.manual_seed(7)
    single = pseudo_target_loss(model, images, per_image(TARGET_A))
    torch.manual_seed(7)
    copies = pseudo_target_loss(model, images, per_image(*[TARGET_A] * 4))
    assert single.keys() == copies.keys()
    for name in single:
        assert_close(copies[name], single[name], msg=name)
    torch.manual_seed(8)
    other_seed = pseudo_target_loss(model, images, per_image(TARGET_A))
    assert not torch.equal(other_seed["loss_objectness"], single["loss_objectness"])


def test_empty_targets_give_finite_losses_on_the_graph(images: list[Tensor]) -> None:
    model = tiny_model()
    for targets in (per_image(EMPTY), per_image(TARGET_A, EMPTY)):
        model.zero_grad()
        losses = pseudo_target_loss(model, images, targets)
        for name, value in losses.items():
            assert torch.isfinite(value), name
            assert (value.grad_fn is not None) == name.startswith("loss_"), name
        objective(losses).backward()
        assert model.backbone.body.layer1[0].conv1.weight.grad is not None
    assert pseudo_target_loss(model, images, per_image(EMPTY))["loss_mask"] == 0


def test_gradients_reach_every_part(images: list[Tensor]) -> None:
    model = tiny_model()
    objective(pseudo_target_loss(model, images, per_image(TARGET_A, TARGET_B))).backward()
    for module in (
        model.backbone.body.conv1,
        model.backbone.fpn.inner_blocks[0][0],
        model.rpn.head.conv[0][0],
        model.roi_heads.box_head.fc6,
        model.roi_heads.mask_head[0][0],
        model.roi_heads.mask_predictor.mask_fcn_logits,
    ):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, module


def test_self_diversity_term_scales_with_one_minus_gamma(images: list[Tensor]) -> None:
    model = tiny_model()
    terms = {}
    for gamma in (0.0, 0.5, 1.0):
        torch.manual_seed(3)
        terms[gamma] = pseudo_target_loss(model, images, per_image(TARGET_A), gamma=gamma)
    div_pp = terms[0.0]["div_pp"]
    assert div_pp > 0 and div_pp.grad_fn is None
    assert_close(terms[0.0]["loss_self_diversity"], -div_pp)
    assert_close(terms[0.5]["loss_self_diversity"], -0.5 * div_pp)
    assert terms[1.0]["loss_self_diversity"] == 0
    assert all(t["loss_self_diversity"] <= 0 for t in terms.values())


def test_self_diversity_is_the_disagreement_of_two_draws() -> None:
    uniform = self_diversity(torch.zeros(5, 4), torch.zeros(2, 4, 3, 3), torch.tensor([1, 3]))
    assert_close(uniform, torch.tensor(0.75 + 0.5))  # 1 - 4/16, and 2 * 0.5 * 0.5
    confident = torch.full((5, 4), -30.0)
    confident[:, 2] = 30.0
    certain_masks = torch.full((2, 4, 3, 3), 30.0)
    assert self_diversity(confident, certain_masks, torch.tensor([1, 3])) < 1e-6
    # only the target-class channel of the mask logits counts
    mixed = certain_masks.clone()
    mixed[:, 0] = 0.0
    assert self_diversity(confident, mixed, torch.tensor([1, 3])) < 1e-6
    logits = torch.zeros(5, 4, requires_grad=True)
    no_masks = self_diversity(logits, torch.zeros(0, 4, 3, 3), torch.zeros(0, dtype=torch.int64))
    assert math.isclose(no_masks.item(), 0.75, rel_tol=1e-6) and no_masks.grad_fn is not None


def with_ignore_boxes(targets: list[dict], boxes_per_image: list[list[tuple]]) -> list[dict]:
    return [
        {**t, "ignore_boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4)}
        for t, b in zip(targets, boxes_per_image, strict=True)
    ]


def test_negatives_near_an_ignore_box_are_discarded() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    labels = torch.tensor([0, 0, 0, 2])
    target = {"ignore_boxes": torch.tensor([[0, 0, 10, 10.0]])}
    # IoU 1 and 81/119 with the ignore box: discarded; far away: a negative still; a positive
    # stays one however much it overlaps
    assert _discard_negatives_near(labels, boxes, target, 0.5).tolist() == [-1, -1, 0, 2]
    assert _discard_negatives_near(labels, boxes, target, 0.7).tolist() == [-1, 0, 0, 2]
    assert _discard_negatives_near(labels, boxes, {}, 0.5).tolist() == [0, 0, 0, 2]
    float_labels = labels.float()  # the RPN's labels are float
    assert _discard_negatives_near(float_labels, boxes, target, 0.5).tolist() == [-1, -1, 0, 2]


def test_ignore_boxes_on_the_instances_themselves_change_nothing(images: list[Tensor]) -> None:
    # Whatever overlaps an instance as much as a positive may is a positive or discarded
    # already: the matchers' negative thresholds are the discarding ones.
    model = tiny_model(exhaustive_sampling=True)
    plain = pseudo_target_loss(model, images, per_image(TARGET_A))
    own_boxes = [t["boxes"].tolist() for t in TARGET_A]
    ignoring = pseudo_target_loss(model, images, per_image(with_ignore_boxes(TARGET_A, own_boxes)))
    for name in MASK_RCNN_TERMS:
        assert_close(ignoring[name], plain[name], msg=name)


def test_ignore_boxes_elsewhere_take_negatives_out_of_the_losses(images: list[Tensor]) -> None:
    model = tiny_model(exhaustive_sampling=True)
    plain = pseudo_target_loss(model, images, per_image(TARGET_A))
    elsewhere = [[(70, 5, 125, 35)], [(10, 105, 90, 125)]]  # away from TARGET_A's instances
    ignoring = pseudo_target_loss(model, images, per_image(with_ignore_boxes(TARGET_A, elsewhere)))
    assert ignoring["loss_objectness"] != plain["loss_objectness"]
    # the untrained RPN proposes nothing on those regions: RoI sampling is tested below
    for name in ("loss_classifier", "loss_box_reg", "loss_mask"):
        assert_close(ignoring[name], plain[name], msg=name)


def test_rois_on_an_ignore_box_are_not_sampled() -> None:
    roi_heads = tiny_model(exhaustive_sampling=True).roi_heads
    ignored, far, on_instance = [70, 5, 125, 35], [0, 60, 30, 90], [10, 8, 60, 50]
    proposals = [torch.tensor([ignored, far, on_instance], dtype=torch.float32)]
    target = make_target(96, 128, [(10, 8, 60, 50, 1)])
    for ignore_boxes, expected in (([], [0, 0, 1]), ([ignored], [0, 1])):
        (targets,) = per_image(with_ignore_boxes([target], [ignore_boxes]))
        sample = _sample_rois(roi_heads, proposals, targets, [0])
        # rows 0-2 are the proposals, row 3 the instance's box added as a proposal
        sampled = dict(zip(sample.rows[0].tolist(), sample.labels[0].tolist(), strict=True))
        proposal_labels = [sampled[row] for row in range(3) if row in sampled]
        assert sorted(proposal_labels) == expected
        assert (0 in sampled) == (ignore_boxes == [])


def test_targets_must_have_the_same_k_per_image(images: list[Tensor]) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="same number"):
        pseudo_target_loss(model, images, [[TARGET_A[0]], [TARGET_A[1], TARGET_B[1]]])
    with pytest.raises(ValueError, match="one target list per image"):
        pseudo_target_loss(model, images, [[TARGET_A[0]]])
