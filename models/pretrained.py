"""A pretrained start for the prediction network: torchvision's COCO Mask R-CNN.

The `paper` preset has torchvision's `maskrcnn_resnet50_fpn` layout and parameter names, so
its class-agnostic parts load as they are: the ResNet-50 body and FPN, the box head's two
fully connected layers, the mask head's convolutions and the mask predictor's deconvolution.
The class-specific layers (box predictor, mask logits) keep their initialisation for the
model's own classes, and COCO's RPN is not used: the segment proposals are the RoIs.
"""

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import get_weight

COCO_WEIGHTS = "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
# COCO's class-specific layers and its RPN, which the prediction network does not take over
_NOT_LOADED = (
    "rpn.",
    "roi_heads.box_predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


def coco_state_dict(source: str | Path) -> dict[str, Tensor]:
    """torchvision's COCO Mask R-CNN weights: `coco` (the weights enum, downloaded by
    torchvision) or a file holding a `maskrcnn_resnet50_fpn` state_dict saved with
    `torch.save`. Raises FileNotFoundError or ValueError naming the problem."""
    if str(source) == "coco":
        return get_weight(COCO_WEIGHTS).get_state_dict(progress=False)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"COCO weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a torch.save'd state_dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a Mask R-CNN state_dict")
    return state


def load_coco_weights(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Copy the class-agnostic parts of a COCO Mask R-CNN state into `model` (built with the
    `paper` preset). Returns the keys loaded; raises ValueError when a part is missing from
    `state` or has another shape."""
    own = model.state_dict()
    wanted = [
        key
        for key in state
        if not key.startswith(_NOT_LOADED) and not key.endswith("num_batches_tracked")
    ]
    missing = [key for key in wanted if key not in own]
    misshapen = [key for key in wanted if key in own and own[key].shape != state[key].shape]
    if not wanted or missing or misshapen:
        raise ValueError(
            "the weights do not fit the prediction network (use --preset paper with "
            f"torchvision's maskrcnn_resnet50_fpn weights): {len(wanted)} layers, unknown "
            f"{missing[:3]}, wrong shape {misshapen[:3]}"
        )
    with torch.no_grad():
        for key in wanted:
            own[key].copy_(state[key])
    return wanted
