import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor
from torch.testing import assert_close

from models.delta import mask_iou
from models.prediction import (
    build_prediction_net,
    detected_instances,
    mask_nms,
    paste_mask_logits,
)
from models.prediction_loss import (
    IGNORE,
    assign_proposals,
    pseudo_target_loss,
    self_diversity,
)
from models.presets import PRESETS
from models.regions import RegionProposals, describe_regions

NUM_CLASSES = 3
MASK_RCNN_TERMS = ("loss_classifier", "loss_box_reg", "loss_mask")


def rectangles(height: int, width: int, rects: list[tuple[int, int, int, int]]) -> Tensor:
    """BoolTensor[N, H, W] of filled rectangles (x0, y0, x1, y1)."""
    masks = torch.zeros(len(rects), height, width, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = True
    return masks


def make_target(height: int, width: int, rects: list[tuple[int, int, int, int, int]]) -> dict:
    """A target of rectangles (x0, y0, x1, y1, class); an empty list gives no instances."""
    return {
        "boxes": torch.tensor([r[:4] for r in rects], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([r[4] for r in rects], dtype=torch.int64),
        "masks": rectangles(height, width, [r[:4] for r in rects]).to(torch.uint8),
    }


# sizes that model.transform resizes, so that the scaling of the RoIs is tested
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
# every instance of both targets, a piece of one, shifted copies, and background regions
PROPOSAL_RECTS = [
    [(10, 8, 60, 50), (70, 40, 120, 90), (30, 20, 90, 70), (10, 8, 30, 50), (12, 10, 62, 52),
     (0, 60, 40, 96), (90, 0, 128, 30), (0, 0, 128, 96)],
    [(20, 30, 80, 100), (5, 5, 40, 60), (50, 70, 90, 120), (20, 30, 50, 100), (0, 100, 20, 128),
     (60, 0, 96, 25), (0, 0, 96, 128)],
]


@pytest.fixture(scope="module")
def images() -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module")
def proposals(images: list[Tensor]) -> list[RegionProposals]:
    return [
        describe_regions(image, rectangles(*image.shape[-2:], rects))
        for image, rects in zip(images, PROPOSAL_RECTS, strict=True)
    ]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_prediction_net(preset="tiny", num_classes=NUM_CLASSES)
    model.train()
    # smaller still than tiny, for speed; the images are still resized (by 1.25)
    model.transform.min_size, model.transform.max_size = (128,), 160
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
    assert model.roi_heads.box_head.fc7.out_features == 1024
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 21
    assert model.transform.min_size[-1] == 800 and model.transform.max_size == 1333  # at eval


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_preset_trains_and_predicts(
    preset: str, images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    torch.manual_seed(0)
    model = build_prediction_net(preset=preset, num_classes=NUM_CLASSES)
    model.detections_per_img = 5
    model.train()
    losses = model(images, proposals, TARGET_A)
    assert set(losses) == {*MASK_RCNN_TERMS, "loss_self_diversity", "div_pp"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        predictions = model(images, proposals)
    for prediction, image in zip(predictions, images, strict=True):
        num = len(prediction["boxes"])
        assert num <= 5
        assert prediction["masks"].shape == (num, 1, *image.shape[-2:])
        assert prediction["labels"].shape == (num,) and prediction["scores"].shape == (num,)
        assert ((prediction["labels"] >= 1) & (prediction["labels"] <= NUM_CLASSES)).all()
        assert (prediction["scores"].diff() <= 0).all()  # best first


def test_proposals_of_another_image_size_are_refused(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="proposals of a"):
        model(images, proposals[::-1])
    with pytest.raises(ValueError, match="2 images but 1"):
        model(images, proposals[:1])


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


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A state_dict of torchvision's COCO Mask R-CNN architecture (random weights: nothing
    can be downloaded here), saved the way torchvision's weights files are."""
    torch.manual_seed(2)
    state = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    ).state_dict()
    path = tmp_path_factory.mktemp("coco") / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    return path, state


def test_coco_weights_load_every_class_agnostic_part(coco_checkpoint: tuple[Path, dict]) -> None:
    path, state = coco_checkpoint
    torch.manual_seed(3)
    model = build_prediction_net(preset="paper", num_classes=NUM_CLASSES, coco_weights=str(path))
    own = model.state_dict()
    for key in (
        "backbone.body.layer4.2.conv3.weight",
        "backbone.body.bn1.running_mean",
        "backbone.fpn.layer_blocks.3.0.weight",
        "roi_heads.box_head.fc6.weight",
        "roi_heads.box_head.fc7.bias",
        "roi_heads.mask_head.3.0.weight",
        "roi_heads.mask_predictor.conv5_mask.weight",
    ):
        assert_close(own[key], state[key], rtol=0, atol=0, msg=key)
    # the class-specific layers are the model's own (C + 1 = 4 classes, not COCO's 91)
    assert own["roi_heads.box_predictor.cls_score.weight"].shape[0] == NUM_CLASSES + 1
    assert own["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == NUM_CLASSES + 1
    body = model.backbone.body
    assert not body.layer1[0].conv1.weight.requires_grad
    assert body.layer4[0].conv1.weight.requires_grad


def test_coco_weights_need_the_paper_layout(
    coco_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    path, _ = coco_checkpoint
    with pytest.raises(ValueError, match="--preset paper"):
        build_prediction_net(preset="small", num_classes=NUM_CLASSES, coco_weights=str(path))
    with pytest.raises(FileNotFoundError):
        build_prediction_net(preset="paper", num_classes=1, coco_weights=str(tmp_path / "no.pth"))
    with pytest.raises(ValueError, match="not both"):
        build_prediction_net(
            preset="paper", num_classes=1, coco_weights=str(path), backbone_weights=str(path)
        )


# ------------------------------------------------------------------- the loss


def test_proposals_are_matched_by_mask_iou(proposals: list[RegionProposals]) -> None:
    target = {**TARGET_A[0], "ignore_masks": rectangles(96, 128, [(0, 60, 40, 96)])}
    assignment, empty = assign_proposals(proposals[0], [target, EMPTY[0]])
    # the two instances, the other target's instance (IoU 0.21 with the first: background),
    # 2/5 of the first instance (IoU 0.4: a near miss, ignored), a shifted copy (IoU 0.84), a
    # region under the ignore mask, a background region, the whole image
    assert assignment.labels.tolist() == [1, 2, 0, IGNORE, 1, IGNORE, 0, 0]
    assert assignment.matched[[0, 1, 3, 4]].tolist() == [0, 1, 0, 0]
    assert empty.labels.tolist() == [0] * 8


def test_known_region_ious_stand_for_the_masks_product(proposals: list[RegionProposals]) -> None:
    regions = proposals[0]
    target = {**TARGET_A[0], "ignore_masks": rectangles(96, 128, [(0, 60, 40, 96)])}
    known = {
        **target,
        "region_iou": mask_iou(regions.masks, target["masks"]),
        "ignore_region_iou": mask_iou(regions.masks, target["ignore_masks"]),
    }
    (from_masks,) = assign_proposals(regions, [target])
    (from_known,) = assign_proposals(regions, [known])
    assert torch.equal(from_known.labels, from_masks.labels)
    assert torch.equal(from_known.matched, from_masks.matched)
    # the known IoUs are what counts: at 0 every proposal is background
    disjoint = {
        **known,
        "region_iou": torch.zeros_like(known["region_iou"]),
        "ignore_region_iou": torch.zeros_like(known["ignore_region_iou"]),
    }
    assert assign_proposals(regions, [disjoint])[0].labels.tolist() == [0] * len(regions)
    # without the IoUs of its ignore masks a target's overlaps come from the masks
    del disjoint["ignore_region_iou"]
    assert torch.equal(assign_proposals(regions, [disjoint])[0].labels, from_masks.labels)


def test_distinct_targets_average_their_losses(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    loss_a = pseudo_target_loss(model, images, proposals, per_image(TARGET_A))
    loss_b = pseudo_target_loss(model, images, proposals, per_image(TARGET_B))
    both = pseudo_target_loss(model, images, proposals, per_image(TARGET_A, TARGET_B))
    for name in MASK_RCNN_TERMS:
        assert_close(both[name], (loss_a[name] + loss_b[name]) / 2, msg=name)
    assert not torch.isclose(loss_a["loss_mask"], loss_b["loss_mask"])


def test_repeated_samples_weigh_by_how_often_they_occur(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    loss_a = pseudo_target_loss(model, images, proposals, per_image(TARGET_A))
    loss_b = pseudo_target_loss(model, images, proposals, per_image(TARGET_B))
    mixed = pseudo_target_loss(model, images, proposals, per_image(TARGET_A, TARGET_B, TARGET_A))
    for name in MASK_RCNN_TERMS:
        assert_close(mixed[name], (2 * loss_a[name] + loss_b[name]) / 3, msg=name)


def test_copies_of_one_target_give_the_single_target_loss(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    single = pseudo_target_loss(model, images, proposals, per_image(TARGET_A))
    copies = pseudo_target_loss(model, images, proposals, per_image(*[TARGET_A] * 4))
    assert single.keys() == copies.keys()
    for name in single:
        assert_close(copies[name], single[name], msg=name)


def test_the_training_forward_is_the_single_target_loss(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    expected = pseudo_target_loss(model, images, proposals, per_image(TARGET_A), gamma=1.0)
    losses = model(images, proposals, TARGET_A)
    for name in expected:
        assert_close(losses[name], expected[name], msg=name)


def test_empty_targets_give_finite_losses_on_the_graph(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    for targets in (per_image(EMPTY), per_image(TARGET_A, EMPTY)):
        model.zero_grad()
        losses = pseudo_target_loss(model, images, proposals, targets)
        for name, value in losses.items():
            assert torch.isfinite(value), name
            assert (value.grad_fn is not None) == name.startswith("loss_"), name
        objective(losses).backward()
        assert model.backbone.body.layer1[0].conv1.weight.grad is not None
    empty = pseudo_target_loss(model, images, proposals, per_image(EMPTY))
    assert empty["loss_mask"] == 0 and empty["loss_box_reg"] == 0 and empty["loss_classifier"] > 0


def test_gradients_reach_every_part(images: list[Tensor], proposals: list[RegionProposals]) -> None:
    model = tiny_model()
    losses = pseudo_target_loss(model, images, proposals, per_image(TARGET_A, TARGET_B))
    objective(losses).backward()
    heads = model.roi_heads
    for module in (
        model.backbone.body.conv1,
        model.backbone.fpn.inner_blocks[0][0],
        heads.box_head.fc6,
        heads.region_head.mlp[0],
        heads.box_predictor.cls_score,
        heads.box_predictor.bbox_pred,
        heads.mask_head[0][0],
        heads.mask_prior.embedding,
        heads.mask_predictor.mask_fcn_logits,
    ):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, module
    assert heads.mask_prior.scale.grad is not None


def test_self_diversity_term_scales_with_one_minus_gamma(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    terms = {
        gamma: pseudo_target_loss(model, images, proposals, per_image(TARGET_A), gamma=gamma)
        for gamma in (0.0, 0.5, 1.0)
    }
    div_pp = terms[0.0]["div_pp"]
    assert div_pp > 0 and div_pp.grad_fn is None
    assert_close(terms[0.0]["loss_self_diversity"], -div_pp)
    assert_close(terms[0.5]["loss_self_diversity"], -0.5 * div_pp)
    assert terms[1.0]["loss_self_diversity"] == 0


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


def test_ignore_masks_take_background_proposals_out_of_the_loss(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    plain = pseudo_target_loss(model, images, proposals, per_image(TARGET_A))
    ignore = [rectangles(96, 128, [(0, 60, 40, 96)]), rectangles(128, 96, [(0, 100, 20, 128)])]
    ignoring = [{**t, "ignore_masks": m} for t, m in zip(TARGET_A, ignore, strict=True)]
    ignored = pseudo_target_loss(model, images, proposals, per_image(ignoring))
    assert ignored["loss_classifier"] != plain["loss_classifier"]
    assert_close(ignored["loss_mask"], plain["loss_mask"])
    # on the instances themselves they change nothing: those proposals are positives
    own = [{**t, "ignore_masks": t["masks"].bool()} for t in TARGET_A]
    on_instances = pseudo_target_loss(model, images, proposals, per_image(own))
    for name in MASK_RCNN_TERMS:
        assert_close(on_instances[name], plain[name], msg=name)


def test_targets_must_have_the_same_k_per_image(
    images: list[Tensor], proposals: list[RegionProposals]
) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="same number"):
        pseudo_target_loss(model, images, proposals, [[TARGET_A[0]], [TARGET_A[1], TARGET_B[1]]])
    with pytest.raises(ValueError, match="one target list per image"):
        pseudo_target_loss(model, images, proposals, [[TARGET_A[0]]])


# --------------------------------------------------------------- the detections


def test_mask_nms_removes_overlaps_whatever_their_class() -> None:
    masks = rectangles(20, 20, [(0, 0, 10, 10), (0, 0, 10, 9), (0, 0, 10, 10), (12, 12, 20, 20)])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.1])
    # 1 beats 0 (IoU 0.9) and 2 (another class's reading of the same region); 3 overlaps nothing
    assert mask_nms(masks, scores, 0.5).tolist() == [1, 3]
    # at 0.95 only 2, a copy of 0, goes
    assert mask_nms(masks, scores, 0.95).tolist() == [1, 0, 3]


def test_masks_keep_the_proposals_full_resolution_boundary(
    proposals: list[RegionProposals],
) -> None:
    """Without a learned correction a detection's mask is its proposal's mask, pixel for
    pixel: only the correction is resampled from the mask head's grid."""
    model = tiny_model().eval()
    regions = proposals[0]
    rows = torch.tensor([0, 3, 6])
    prior_logits = model.roi_heads.mask_prior.logits(regions.shapes[rows])
    probabilities = paste_mask_logits(prior_logits, regions, rows, model.roi_heads.mask_prior)
    assert torch.equal(probabilities > 0.5, regions.masks[rows])
    raised = paste_mask_logits(prior_logits + 100, regions, rows, model.roi_heads.mask_prior)
    boxes = regions.boxes[rows].long()
    for mask, (x0, y0, x1, y1) in zip(raised > 0.5, boxes.tolist(), strict=True):
        assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)


def test_detected_instances_keep_what_is_asked() -> None:
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :4] = 0.9
    masks[2, 0, 4:] = 0.7
    output = {
        "masks": masks,
        "labels": torch.tensor([1, 2, 3]),
        "scores": torch.tensor([0.9, 0.8, 0.2]),
        "boxes": torch.zeros(3, 4),
    }
    instances = detected_instances(output, output["scores"] >= 0.5)
    # the second detection's mask is empty at 0.5: dropped
    assert instances.labels.tolist() == [1] and instances.masks[0].sum() == 32
    assert len(detected_instances(output, torch.ones(3, dtype=torch.bool))) == 2


# ------------------------------------------------------------------ the regions


def test_region_proposals_mirror_with_the_image(images: list[Tensor]) -> None:
    image = images[0]
    masks = rectangles(96, 128, [(10, 8, 60, 50), (100, 0, 128, 20)])
    mirrored = describe_regions(image, masks).hflip()
    direct = describe_regions(image.flip(-1), masks.flip(-1))
    assert torch.equal(mirrored.masks, direct.masks)
    assert_close(mirrored.boxes, direct.boxes)
    assert_close(mirrored.shapes, direct.shapes)
    assert_close(mirrored.descriptors, direct.descriptors, atol=1e-4, rtol=1e-4)


def test_describe_regions_refuses_masks_of_another_size(images: list[Tensor]) -> None:
    with pytest.raises(ValueError, match="image's size"):
        describe_regions(images[0], torch.ones(2, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-empty"):
        describe_regions(images[0], torch.zeros(1, 96, 128, dtype=torch.bool))
