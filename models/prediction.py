"""The prediction network Pr_p(y | x; θp): a Mask R-CNN whose RoIs are segment proposals.

It is annotation-agnostic: trained on the conditional network's samples as pseudo ground truth
(see `models.prediction_loss`) and served by `/v1/segment`.

Trained from scratch on a hundred images, a standard Mask R-CNN learns almost nothing: its RPN
and heads must discover objects from the pixels alone (fully supervised on 100 synthetic
images, mAP_r@0.5 0.04). The segment proposals already carry most of what is needed, so they
replace the RPN, as selective search fed Fast R-CNN: every proposal's tight box is a RoI, the
box head's features are joined by the proposal's own evidence (its shape in the box, its
descriptors: `RegionHead`), and the mask head starts from the
proposal's mask (`MaskPrior`) and learns a correction. The backbone, FPN, box head and mask head
are torchvision's, with torchvision's parameter names, so COCO and ImageNet weights load.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from models.backbones import resnet_body
from models.descriptors import DESCRIPTOR_SIZE
from models.presets import PRESETS
from models.pretrained import coco_state_dict, load_coco_weights
from models.regions import SHAPE_SIZE, RegionProposals
from models.roi_align import SparseMultiScaleRoIAlign
from models.structures import InstanceSet, any_along


@dataclasses.dataclass
class RegionOutputs:
    """The box branch's outputs for every proposal of a batch, and what the mask branch needs.

    class_logits: FloatTensor[R, C+1] and box_regression: FloatTensor[R, (C+1) * 4] for the R
    proposals of all images, image-major; counts: proposals per image; features: the FPN maps;
    rois: per image FloatTensor[P_b, 4] boxes in the resized image's pixels; image_sizes: the
    resized images' (h, w).
    """

    class_logits: Tensor
    box_regression: Tensor
    counts: list[int]
    features: OrderedDict[str, Tensor]
    rois: list[Tensor]
    image_sizes: list[tuple[int, int]]


class RegionHead(nn.Module):
    """A proposal's own evidence: its shape in the box and its descriptors.
    -> FloatTensor[R, representation].

    The CNN's view of the proposal reaches the predictor through the box head alone: pooled
    under the mask and mixed with the descriptors here, features of a backbone that is still
    learning slowed the classifier down (40 steps on 8 synthetic images: mAP_r@0.5 on them 0.33
    with them, 0.66 without).
    """

    def __init__(self, representation: int, shape_size: int = 14) -> None:
        super().__init__()
        self.shape_size = shape_size
        evidence_size = shape_size**2 + DESCRIPTOR_SIZE
        # standardised as the inputs of a classifier over hand-made features are: shape cells
        # and descriptors differ in scale by orders of magnitude
        self.evidence_norm = nn.BatchNorm1d(evidence_size)
        self.mlp = nn.Sequential(
            nn.Linear(evidence_size, representation),
            nn.ReLU(inplace=True),
            nn.Linear(representation, representation),
            nn.ReLU(inplace=True),
        )

    def forward(self, shapes: Tensor, descriptors: Tensor) -> Tensor:
        """shapes: FloatTensor[R, S, S]; descriptors: FloatTensor[R, DESCRIPTOR_SIZE]."""
        shape = F.adaptive_avg_pool2d(shapes[:, None], self.shape_size).flatten(1)
        return self.mlp(self.evidence_norm(torch.cat([shape, descriptors], dim=1)))


class MaskPrior(nn.Module):
    """The proposal's mask as the mask head's starting point: its shape joins the mask RoI
    features (a convolution that starts at zero, so pretrained mask heads start unchanged) and
    the predicted logits are a correction of `scale * (2 * shape - 1)`."""

    def __init__(self, feature_channels: int, scale: float = 4.0) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(1, feature_channels, 3, padding=1)
        nn.init.zeros_(self.embedding.weight)
        nn.init.zeros_(self.embedding.bias)
        self.scale = nn.Parameter(torch.tensor(scale))

    def features(self, mask_features: Tensor, shapes: Tensor) -> Tensor:
        """mask_features: FloatTensor[R, C, m, m]; shapes: FloatTensor[R, S, S]."""
        prior = F.adaptive_avg_pool2d(shapes[:, None], mask_features.shape[-2:])
        return mask_features + self.embedding(prior)

    def logits(self, shapes: Tensor) -> Tensor:
        """FloatTensor[R, 1, S, S] prior logits of the shapes."""
        return self.scale * (2 * shapes[:, None] - 1)


class ProposalRoIHeads(nn.Module):
    """Mask R-CNN's box and mask heads on segment proposals (torchvision's parameter names)."""

    def __init__(
        self,
        *,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: nn.Module,
        region_head: RegionHead,
        box_predictor: FastRCNNPredictor,
        mask_roi_pool: MultiScaleRoIAlign,
        mask_head: nn.Module,
        mask_prior: MaskPrior,
        mask_predictor: MaskRCNNPredictor,
    ) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.region_head = region_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_prior = mask_prior
        self.mask_predictor = mask_predictor
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))


class ProposalMaskRCNN(nn.Module):
    """Mask R-CNN with segment proposals as its RoIs.

    Evaluation: `model(images, proposals)` with images `list[FloatTensor[3, H, W]]` in [0, 1]
    and proposals `list[RegionProposals]` returns per image boxes `FloatTensor[D, 4]` (x0, y0,
    x1, y1 pixels), labels `Int64Tensor[D]` in 1..C, scores `FloatTensor[D]` and masks
    `FloatTensor[D, 1, H, W]` probabilities, best first, at most `detections_per_img`, the
    detections overlapping a better one, of any class, by mask IoU > `nms_threshold` removed.
    Training: `model(images, proposals, targets)` with one torchvision target per image (boxes,
    labels, masks `UInt8Tensor[N, H, W]`) returns the `loss_*` terms of
    `models.prediction_loss.pseudo_target_loss`, which also takes K targets per image.
    """

    def __init__(
        self,
        backbone: nn.Module,
        roi_heads: ProposalRoIHeads,
        transform: GeneralizedRCNNTransform,
        *,
        num_classes: int,
        detections_per_img: int = 100,
        score_floor: float = 0.05,
        nms_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.detections_per_img = detections_per_img
        self.score_floor = score_floor
        self.nms_threshold = nms_threshold

    def region_outputs(
        self, images: list[Tensor], proposals: list[RegionProposals]
    ) -> RegionOutputs:
        """Backbone, FPN and box branch on every proposal of every image."""
        if len(images) != len(proposals):
            raise ValueError(f"{len(images)} images but {len(proposals)} proposal sets")
        for image, regions in zip(images, proposals, strict=True):
            if regions.image_size != tuple(image.shape[-2:]):
                raise ValueError(
                    f"proposals of a {regions.image_size} image given for a "
                    f"{tuple(image.shape[-2:])} image"
                )
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = self.transform(images)
        rois = [
            _scale_boxes(regions.boxes, original, resized)
            for regions, original, resized in zip(
                proposals, original_sizes, image_list.image_sizes, strict=True
            )
        ]
        features = self.backbone(image_list.tensors)
        heads = self.roi_heads
        box_features = heads.box_roi_pool(features, rois, image_list.image_sizes)  # (R, C, 7, 7)
        shapes = torch.cat([regions.shapes for regions in proposals])
        descriptors = torch.cat([regions.descriptors for regions in proposals])
        representation = torch.cat(
            [heads.box_head(box_features), heads.region_head(shapes, descriptors)],
            dim=1,
        )
        class_logits, box_regression = heads.box_predictor(representation)
        return RegionOutputs(
            class_logits=class_logits,
            box_regression=box_regression,
            counts=[len(regions) for regions in proposals],
            features=features,
            rois=rois,
            image_sizes=list(image_list.image_sizes),
        )

    @torch.no_grad()
    def class_log_probs(self, image: Tensor, regions: RegionProposals) -> Tensor:
        """FloatTensor[P, C+1]: the log-probabilities of the classes (background 0) of each
        proposal of one image, FloatTensor[3, H, W] in [0, 1], as evaluation scores them."""
        was_training = self.training
        self.eval()
        try:
            return self.region_outputs([image], [regions]).class_logits.log_softmax(dim=1)
        finally:
            self.train(was_training)

    def mask_logits(
        self, outputs: RegionOutputs, proposals: list[RegionProposals], rows: list[Tensor]
    ) -> Tensor:
        """FloatTensor[M, C+1, S, S] mask logits of the proposals `rows[b]` (Int64Tensor) of
        each image b, image-major; the prior of each proposal's own mask included."""
        heads = self.roi_heads
        boxes = [r[i] for r, i in zip(outputs.rois, rows, strict=True)]
        shapes = torch.cat([p.shapes[i] for p, i in zip(proposals, rows, strict=True)])
        mask_features = heads.mask_roi_pool(outputs.features, boxes, outputs.image_sizes)
        mask_features = heads.mask_head(heads.mask_prior.features(mask_features, shapes))
        return heads.mask_predictor(mask_features) + heads.mask_prior.logits(shapes)

    def forward(
        self,
        images: list[Tensor],
        proposals: list[RegionProposals],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("in training mode the model needs targets")
            from models.prediction_loss import pseudo_target_loss

            return pseudo_target_loss(self, images, proposals, [[t] for t in targets], gamma=1.0)
        outputs = self.region_outputs(images, proposals)
        scores = outputs.class_logits.softmax(dim=1).split(outputs.counts)
        candidates = [self._candidates(s) for s in scores]
        logits = self.mask_logits(outputs, proposals, [rows for rows, _, _ in candidates])
        return [
            self._detections(regions, rows, labels, candidate_scores, image_logits)
            for regions, (rows, labels, candidate_scores), image_logits in zip(
                proposals, candidates, logits.split([len(c[0]) for c in candidates]), strict=True
            )
        ]

    def _candidates(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The (proposal, class) pairs of one image worth a mask, best first: proposal rows,
        labels and scores, from the class probabilities FloatTensor[P, C+1]."""
        flat = scores[:, 1:].flatten()  # (P * C,) proposal-major
        keep = (flat >= self.score_floor).nonzero().squeeze(1)
        keep = keep[flat[keep].argsort(descending=True)][: 3 * self.detections_per_img]
        return keep // self.num_classes, keep % self.num_classes + 1, flat[keep]

    def _detections(
        self,
        regions: RegionProposals,
        rows: Tensor,
        labels: Tensor,
        scores: Tensor,
        logits: Tensor,
    ) -> dict[str, Tensor]:
        """One image's detections; logits: FloatTensor[N, C+1, S, S] of its candidates."""
        logits = logits[torch.arange(len(rows), device=logits.device), labels][:, None]
        masks = paste_mask_logits(logits, regions, rows, self.roi_heads.mask_prior)
        kept = mask_nms(masks > 0.5, scores, self.nms_threshold)[: self.detections_per_img]
        return {
            "boxes": regions.boxes[rows[kept]],
            "labels": labels[kept],
            "scores": scores[kept],
            "masks": masks[kept, None],
        }


def paste_mask_logits(
    logits: Tensor, regions: RegionProposals, rows: Tensor, mask_prior: MaskPrior
) -> Tensor:
    """FloatTensor[N, H, W] mask probabilities at the image's resolution.

    The prior's part is the proposal's own mask at full resolution, so that its boundary is not
    blurred by the S x S grid; only the learned correction is resampled into the box (bilinear,
    on the grid RoIAlign sampled). logits: FloatTensor[N, 1, S, S] with the prior; rows: the
    proposal of each."""
    correction = logits - mask_prior.logits(regions.shapes[rows])  # (N, 1, S, S)
    full = mask_prior.scale * (2 * regions.masks[rows].float() - 1)  # (N, H, W)
    for i, (x0, y0, x1, y1) in enumerate(regions.boxes[rows].round().long().tolist()):
        full[i, y0:y1, x0:x1] += F.interpolate(
            correction[i : i + 1], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
        )[0, 0]
    return full.sigmoid()


def detected_instances(output: dict[str, Tensor], keep: Tensor) -> InstanceSet:
    """The kept detections (BoolTensor[D]) of one image's output as an InstanceSet on the CPU,
    masks binarised at 0.5; a detection whose mask is then empty is dropped."""
    masks = output["masks"][keep, 0] > 0.5
    nonempty = any_along(masks.flatten(1), 1)
    return InstanceSet.from_masks(
        masks[nonempty].cpu(),
        output["labels"][keep][nonempty].cpu(),
        output["scores"][keep][nonempty].cpu(),
    )


def mask_nms(masks: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Int64Tensor of the detections kept, best first: a detection is removed when its mask
    IoU with a better one exceeds `threshold`, whatever their classes. One region is one
    object: fully supervised on 100 synthetic images, suppressing across classes raised
    mAP_r@0.5 from 0.774 to 0.799 (`discoseg evaluate`, mean of 3 seeds), mostly by no longer
    reporting discs as squares too.

    masks: BoolTensor[N, H, W]; scores: FloatTensor[N]."""
    order = scores.argsort(descending=True)
    flat = masks[order].flatten(1).float()
    intersection = flat @ flat.T
    areas = flat.sum(dim=1)
    iou = intersection / (areas[:, None] + areas[None, :] - intersection).clamp(min=1.0)
    suppresses = iou > threshold
    kept = torch.ones(len(order), dtype=torch.bool, device=masks.device)
    for i in range(len(order)):
        if kept[i]:
            kept[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[kept]


def _scale_boxes(
    boxes: Tensor, original: tuple[int, int], resized: tuple[int, int]
) -> Tensor:
    ratio_h, ratio_w = resized[0] / original[0], resized[1] / original[1]
    return boxes * boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])


def build_prediction_net(
    *,
    preset: str,
    num_classes: int,
    backbone_weights: str | None = None,
    coco_weights: str | None = None,
    frozen_norm: bool = False,
) -> ProposalMaskRCNN:
    """Build the network of `preset` for `num_classes` foreground classes.

    Args:
        preset: a key of `PRESETS`.
        num_classes: number of foreground classes C; the model scores C + 1 with background 0.
        backbone_weights: ImageNet weights of the ResNet body (`models.backbones.resnet_body`).
        coco_weights: a start from torchvision's COCO Mask R-CNN, `coco` or a state_dict file
            (`models.pretrained`; the `paper` preset only).
        frozen_norm: the layout of a pretrained start (frozen batch norm, conv1 and layer1 not
            trained) without weights: for a checkpoint trained from one. Implied by weights.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = PRESETS[preset]
    if backbone_weights is not None and coco_weights is not None:
        raise ValueError("give ImageNet backbone weights or COCO weights, not both")
    frozen_norm = frozen_norm or backbone_weights is not None or coco_weights is not None
    body = resnet_body(p.backbone, backbone_weights, frozen_norm=frozen_norm)
    stage2_channels = body.inplanes // 8  # 64 for basic blocks, 256 for bottlenecks
    backbone = BackboneWithFPN(
        body,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[stage2_channels * 2**i for i in range(4)],
        out_channels=p.fpn_channels,
    )
    levels = ["0", "1", "2", "3"]
    roi_heads = ProposalRoIHeads(
        # torchvision's sampling ratio: at 1 tiny trained 1.4x faster but lost 0.03 mAP_r@0.5
        box_roi_pool=SparseMultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(p.fpn_channels * 7 * 7, p.box_representation),
        region_head=RegionHead(p.region_representation),
        box_predictor=FastRCNNPredictor(
            p.box_representation + p.region_representation, num_classes + 1
        ),
        mask_roi_pool=SparseMultiScaleRoIAlign(
            levels, output_size=SHAPE_SIZE // 2, sampling_ratio=2
        ),
        mask_head=MaskRCNNHeads(p.fpn_channels, list(p.mask_head_layers), dilation=1),
        mask_prior=MaskPrior(p.fpn_channels),
        mask_predictor=MaskRCNNPredictor(
            p.mask_head_layers[-1], p.mask_predictor_channels, num_classes + 1
        ),
    )
    transform = GeneralizedRCNNTransform(
        p.min_sizes, p.max_size, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    model = ProposalMaskRCNN(
        backbone,
        roi_heads,
        transform,
        num_classes=num_classes,
        detections_per_img=p.detections_per_img,
    )
    if coco_weights is not None:
        load_coco_weights(model, coco_state_dict(coco_weights))
    return model
