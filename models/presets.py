"""Sizes of the prediction network, by name. Free of torch, so that the command line can
name them without loading it."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PredictionPreset:
    """Size of the network. `paper` keeps torchvision's Mask R-CNN defaults, so that its COCO
    weights load (`models.pretrained`)."""

    backbone: str  # a torchvision ResNet builder name: "resnet18", "resnet50", ...
    fpn_channels: int
    working_size: int  # images are downscaled to this longer side (proposals, masks)
    # the backbone's input size (torchvision's transform): training draws one of min_sizes per
    # batch (scale augmentation of the backbone's view; the proposals keep theirs), evaluation
    # takes the last
    min_sizes: tuple[int, ...]
    max_size: int
    box_representation: int  # width of the TwoMLPHead
    region_representation: int  # width of the RegionHead
    mask_head_layers: tuple[int, ...]  # channels of the mask head's 3x3 convs
    mask_predictor_channels: int
    detections_per_img: int


PRESETS: dict[str, PredictionPreset] = {
    # the paper's network: ResNet-50-FPN with torchvision's defaults
    "paper": PredictionPreset(
        backbone="resnet50",
        fpn_channels=256,
        working_size=640,
        min_sizes=(640, 672, 704, 736, 768, 800),
        max_size=1333,
        box_representation=1024,
        region_representation=256,
        mask_head_layers=(256, 256, 256, 256),
        mask_predictor_channels=256,
        detections_per_img=100,
    ),
    # ResNet-18-FPN at half the input resolution, for a single modest GPU
    "small": PredictionPreset(
        backbone="resnet18",
        fpn_channels=256,
        working_size=512,
        min_sizes=(416, 448, 480, 544, 576, 512),
        max_size=853,
        box_representation=1024,
        region_representation=256,
        mask_head_layers=(256, 256, 256, 256),
        mask_predictor_channels=256,
        detections_per_img=100,
    ),
    # trains in minutes on a CPU: 256 px images, the backbone on half of that (on 100 synthetic
    # images the backbone at 256 took 1.3 times as long and reached mAP_r@0.5 0.72, not 0.755)
    "tiny": PredictionPreset(
        backbone="resnet18",
        fpn_channels=64,
        working_size=256,
        min_sizes=(96, 112, 144, 160, 128),
        max_size=160,
        box_representation=256,
        region_representation=256,
        mask_head_layers=(64, 64),
        mask_predictor_channels=64,
        detections_per_img=30,
    ),
}
