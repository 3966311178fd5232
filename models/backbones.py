"""ResNet bodies for the prediction network's backbone, from scratch or from ImageNet weights."""

from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, get_weight, resnet
from torchvision.ops import FrozenBatchNorm2d

# layers left trainable on top of pretrained weights, torchvision's default for detection
_PRETRAINED_TRAINABLE_LAYERS = ("layer4", "layer3", "layer2")


def resnet_body(
    arch: str, weights: Path | str | None = None, *, frozen_norm: bool = False
) -> resnet.ResNet:
    """The ResNet `arch` with ImageNet `weights` loaded and torchvision's freezing applied.

    weights: None (random initialisation, every layer trains with batch norm), a file holding
    a ResNet state_dict saved with `torch.save` (torchvision's resnet weights files are such),
    or the name of a torchvision weights enum, e.g. "ResNet50_Weights.IMAGENET1K_V1"
    (downloaded by torchvision). With weights, batch norm is frozen and conv1/layer1 are not
    trained (torchvision's choice for detection); `frozen_norm` gives that layout without
    loading weights, for weights loaded later (a whole pretrained detector, a checkpoint).
    """
    if weights is None and not frozen_norm:
        return getattr(resnet, arch)(weights=None, norm_layer=nn.BatchNorm2d)
    if weights is None:
        body = getattr(resnet, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
    elif isinstance(weights, str) and "_Weights." in weights and not Path(weights).is_file():
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
