"""The prediction network Pr_p(y | x; θp): a torchvision Mask R-CNN built from a preset.

It is annotation-agnostic: trained on the conditional network's samples as pseudo ground truth
(see `models.prediction_loss`) and served by `/v1/segment`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, get_weight, resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d


@dataclasses.dataclass(frozen=True)
class PredictionPreset:
    """Size of the Mask R-CNN. Fields not named here keep torchvision's defaults."""

    backbone: str  # a torchvision ResNet builder name: "resnet18", "resnet50", ...
    fpn_channels: int
    min_size: int
    max_size: int
    anchor_sizes: tuple[int, ...]  # one anchor size per FPN level (5 levels)
    rpn_pre_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_train: int
    rpn_post_nms_top_n_test: int
    rpn_batch_size_per_image: int
    box_batch_size_per_image: int
    box_detections_per_img: int
    box_representation: int  # width of the TwoMLPHead
    mask_head_layers: tuple[int, ...]  # channels of the mask head's 3x3 convs
    mask_predictor_channels: int


_TORCHVISION_DEFAULTS = PredictionPreset(
    backbone="resnet50",
    fpn_channels=256,
    min_size=800,
    max_size=1333,
    anchor_sizes=(32, 64, 128, 256, 512),
    rpn_pre_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=2000,
    rpn_post_nms_top_n_test=1000,
    rpn_batch_size_per_image=256,
    box_batch_size_per_image=512,
    box_detections_per_img=100,
    box_representation=1024,
    mask_head_layers=(256, 256, 256, 256),
    mask_predictor_channels=256,
)

PRESETS: dict[str, PredictionPreset] = {
    # the paper's network: ResNet-50-FPN with torchvision's defaults
    "paper": _TORCHVISION_DEFAULTS,
    # ResNet-18-FPN at half the input resolution, for a single modest GPU
    "small": dataclasses.replace(
        _TORCHVISION_DEFAULTS, backbone="resnet18", min_size=512, max_size=853
    ),
    # trains in minutes on CPU on 256px images
    "tiny": PredictionPreset(
        backbone="resnet18",
        fpn_channels=64,
        min_size=256,
        max_size=256,
        anchor_sizes=(16, 32, 64, 128, 256),
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_detections_per_img=30,
        box_representation=256,
        mask_head_layers=(64, 64),
        mask_predictor_channels=64,
    ),
}

# layers left trainable on top of pretrained weights, torchvision's default for detection
_PRETRAINED_TRAINABLE_LAYERS = ("layer4", "layer3", "layer2")


def build_prediction_net(
    *, preset: str, num_classes: int, backbone_weights: Path | str | None = None
) -> MaskRCNN:
    """Build the Mask R-CNN of `preset` for `num_classes` foreground classes.

    Args:
        preset: a key of `PRESETS`.
        num_classes: number of foreground classes C; the model scores C + 1 with background 0.
        backbone_weights: ImageNet weights for the ResNet body, either a file holding a ResNet
            state_dict saved with `torch.save` (torchvision's resnet weights files are such), or
            the name of a torchvision weights enum, e.g. "ResNet50_Weights.IMAGENET1K_V1"
            (downloaded by torchvision). With weights, batch norm is frozen and conv1/layer1
            are not trained (torchvision's choice); without, everything trains with batch norm.

    The model follows torchvision's contracts. Training: `model(images, targets)` with images
    `list[FloatTensor[3, H, W]]` in [0, 1] and targets `list[dict]` of boxes
    `FloatTensor[N, 4]` (x0, y0, x1, y1 pixels), labels `Int64Tensor[N]` in 1..C, masks
    `UInt8Tensor[N, H, W]`; returns a dict of `loss_*` terms. Evaluation: `model(images)`
    returns per image boxes `FloatTensor[D, 4]`, labels `Int64Tensor[D]`, scores
    `FloatTensor[D]`, masks `FloatTensor[D, 1, H, W]` probabilities.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = PRESETS[preset]
    body = _resnet_body(p.backbone, backbone_weights)
    stage2_channels = body.inplanes // 8  # 64 for basic blocks, 256 for bottlenecks
    backbone = BackboneWithFPN(
        body,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[stage2_channels * 2**i for i in range(4)],
        out_channels=p.fpn_channels,
    )
    aspect_ratios = ((0.5, 1.0, 2.0),) * len(p.anchor_sizes)
    return MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors
        min_size=p.min_size,
        max_size=p.max_size,
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in p.anchor_sizes), aspect_ratios),
        rpn_pre_nms_top_n_train=p.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=p.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=p.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=p.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=p.rpn_batch_size_per_image,
        box_batch_size_per_image=p.box_batch_size_per_image,
        box_detections_per_img=p.box_detections_per_img,
        box_head=TwoMLPHead(p.fpn_channels * 7 * 7, p.box_representation),  # 7x7 RoIAlign
        box_predictor=FastRCNNPredictor(p.box_representation, num_classes + 1),
        mask_head=MaskRCNNHeads(p.fpn_channels, list(p.mask_head_layers), dilation=1),
        mask_predictor=MaskRCNNPredictor(
            p.mask_head_layers[-1], p.mask_predictor_channels, num_classes + 1
        ),
    )


def _resnet_body(arch: str, weights: Path | str | None) -> resnet.ResNet:
    """The ResNet `arch` with `weights` loaded and torchvision's freezing applied."""
    if weights is None:
        return getattr(resnet, arch)(weights=None, norm_layer=nn.BatchNorm2d)
    if isinstance(weights, str) and "_Weights." in weights and not Path(weights).is_file():
        body = getattr(resnet, arch)(
            weights=_weights_enum(arch, weights), norm_layer=FrozenBatchNorm2d
        )
    else:
        body = getattr(resnet, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
        body.load_state_dict(_read_state_dict(arch, Path(weights), body))
    for name, parameter in body.named_parameters():
        if not name.startswith(_PRETRAINED_TRAINABLE_LAYERS):
            parameter.requires_grad_(False)
    return body


def _weights_enum(arch: str, name: str) -> WeightsEnum:
    try:
        weights = get_weight(name)
    except (ValueError, KeyError) as e:
        raise ValueError(f"unknown torchvision weights {name!r}: {e}") from e
    expected = get_model_weights(arch)
    if not isinstance(weights, expected):
        raise ValueError(f"weights {name!r} do not fit {arch}; use a {expected.__name__} entry")
    return weights


def _read_state_dict(arch: str, path: Path, body: nn.Module) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a torch.save'd state_dict: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a {arch} state_dict")
    expected = body.state_dict()
    # FrozenBatchNorm2d has no step counter; plain BatchNorm2d checkpoints do
    keys = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected.keys() - keys), sorted(keys - expected.keys())
    misshapen = sorted(
        k for k in keys & expected.keys() if getattr(state[k], "shape", None) != expected[k].shape
    )
    if missing or unexpected or misshapen:
        raise ValueError(
            f"{path} does not fit the {arch} backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {misshapen[:5]}"
        )
    return state
