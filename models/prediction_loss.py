"""The P-step loss (DESIGN section 5): DIV(Pr_p, Pr_c) - (1 - γ) DIV(Pr_p, Pr_p).

DIV(Pr_p, Pr_c) is Mask R-CNN's multi-task loss against each of K samples of the conditional
network as pseudo ground truth, averaged over the K samples. Nothing before target assignment
depends on the target, so the transform, backbone, RPN head, anchors and proposals are computed
once per image batch. Per target run only the anchor and proposal assignment, the sampling and
the loss functions; the RoI heads run once, on the union of the RoIs the K targets sampled
(they overlap: all are drawn from the same proposals). Samples that agree on every image (given
boxes they nearly always do) sample the same RoIs from the same random state and so have the
same loss: each distinct target is evaluated once and weighted by how many samples it stands for.

A target may name regions that are neither object nor background (`ignore_boxes`: instances the
annotation allows but the sample left out): anchors and RoIs that would be negatives but overlap
one as much as a positive may are discarded, the -1 label of torchvision's matchers.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

Target = dict[str, Tensor]


def pseudo_target_loss(
    model: MaskRCNN,
    images: list[Tensor],
    targets: list[list[Target]],
    *,
    gamma: float = 0.5,
) -> dict[str, Tensor]:
    """The P-step objective of `model` against K pseudo targets per image.

    Args:
        model: a torchvision MaskRCNN, normally in training mode (its RPN then uses the
            training proposal counts).
        images: B images, `FloatTensor[3, H_b, W_b]` in [0, 1].
        targets: `targets[b][k]` is sample k's pseudo ground truth for image b, with boxes
            `FloatTensor[N, 4]` (x0, y0, x1, y1 pixels of the image as given), labels
            `Int64Tensor[N]` in 1..C and masks `UInt8Tensor[N, H_b, W_b]`; N may be 0.
            Optionally `ignore_boxes` `FloatTensor[M, 4]`: no anchor or RoI overlapping one of
            them as much as a positive may is a negative. Every image has the same K >= 1.
        gamma: the γ of the dissimilarity coefficient; the self-diversity weight is 1 - γ.

    Returns:
        `loss_classifier`, `loss_box_reg`, `loss_mask`, `loss_objectness`, `loss_rpn_box_reg`:
        Mask R-CNN's terms averaged over the K targets; `loss_self_diversity` =
        -(1 - γ) DIV(Pr_p, Pr_p); and `div_pp`, DIV(Pr_p, Pr_p) detached. The objective is the
        sum of the `loss_*` terms. Sampling of anchors and RoIs uses the same random state for
        every k, so K copies of one target give the K = 1 loss.
    """
    num_images, num_targets = len(images), _check_targets(images, targets)
    distinct, multiplicity = _distinct_samples(targets)
    weights = torch.tensor(multiplicity, dtype=torch.float32) / num_targets  # (D,)
    original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
    image_list, _ = model.transform(images)
    resized = [
        _resize_targets(
            [targets[b][k] for k in distinct], original_sizes[b], image_list.image_sizes[b]
        )
        for b in range(num_images)
    ]
    targets_per_k = [[resized[b][d] for b in range(num_images)] for d in range(len(distinct))]
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])

    # target-independent RPN outputs, as in RegionProposalNetwork.forward
    rpn = model.rpn
    feature_maps = list(features.values())
    objectness, deltas = rpn.head(feature_maps)
    anchors = rpn.anchor_generator(image_list, feature_maps)
    anchors_per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (B*A, 1), (B*A, 4)
    # Faster R-CNN does not backpropagate through the proposals
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
    proposals, _ = rpn.filter_proposals(
        proposals, objectness, image_list.image_sizes, anchors_per_level
    )

    # per target: anchor and proposal assignment and sampling, all from one random state
    roi_heads = model.roi_heads
    seed = int(torch.randint(2**62, (), dtype=torch.int64))
    rpn_losses, samples = [], []
    gt_offsets = [0] * num_images  # where target k's gt boxes start among an image's candidates
    for targets_k in targets_per_k:
        with _common_random_numbers(seed, image_list.tensors.device):
            labels, matched_boxes = rpn.assign_targets_to_anchors(anchors, targets_k)
            labels = [
                _discard_negatives_near(lab, a, t, rpn.proposal_matcher.low_threshold)
                for lab, a, t in zip(labels, anchors, targets_k, strict=True)
            ]
            regression_targets = rpn.box_coder.encode(matched_boxes, anchors)
            rpn_losses.append(rpn.compute_loss(objectness, deltas, labels, regression_targets))
            samples.append(_sample_rois(roi_heads, proposals, targets_k, gt_offsets))
        gt_offsets = [o + len(t["boxes"]) for o, t in zip(gt_offsets, targets_k, strict=True)]

    # Targets sample overlapping RoIs from the same candidates (the proposals and every
    # target's gt boxes): the RoI heads run once on the union and each target gathers its rows.
    candidates = [
        torch.cat([proposals[b]] + [t[b]["boxes"].to(proposals[b]) for t in targets_per_k])
        for b in range(num_images)
    ]
    box_rows, box_gather = _union([[s.rows[b] for s in samples] for b in range(num_images)])
    box_features = roi_heads.box_roi_pool(
        features, [c[r] for c, r in zip(candidates, box_rows, strict=True)], image_list.image_sizes
    )
    class_logits, box_regression = roi_heads.box_predictor(roi_heads.box_head(box_features))
    positive = [[s.labels[b] > 0 for s in samples] for b in range(num_images)]
    mask_rows, mask_gather = _union(
        [[s.rows[b][positive[b][k]] for k, s in enumerate(samples)] for b in range(num_images)]
    )
    mask_features = roi_heads.mask_roi_pool(
        features, [c[r] for c, r in zip(candidates, mask_rows, strict=True)], image_list.image_sizes
    )
    mask_logits = roi_heads.mask_predictor(roi_heads.mask_head(mask_features))  # (U, C+1, S, S)

    terms: dict[str, list[Tensor]] = {
        "loss_classifier": [],
        "loss_box_reg": [],
        "loss_mask": [],
        "loss_objectness": [objectness_loss for objectness_loss, _ in rpn_losses],
        "loss_rpn_box_reg": [rpn_box_loss for _, rpn_box_loss in rpn_losses],
    }
    sampled_class_logits, positive_mask_logits, positive_labels = [], [], []
    for k, sample in enumerate(samples):
        class_logits_k = class_logits[box_gather[k]]  # (R_k, C+1) over the images
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits_k, box_regression[box_gather[k]], sample.labels, sample.regression_targets
        )
        terms["loss_classifier"].append(loss_classifier)
        terms["loss_box_reg"].append(loss_box_reg)
        positive_k = [pos[k] for pos in positive]
        mask_logits_k = mask_logits[mask_gather[k]]  # (M_k, C+1, S, S)
        terms["loss_mask"].append(
            maskrcnn_loss(
                mask_logits_k,
                [boxes[p] for boxes, p in zip(sample.boxes, positive_k, strict=True)],
                [t["masks"] for t in targets_per_k[k]],
                [t["labels"] for t in targets_per_k[k]],
                [idxs[p] for idxs, p in zip(sample.matched_idxs, positive_k, strict=True)],
            )
        )
        # the self-diversity averages over every sample's RoIs: a target counts as often as
        # the samples it stands for
        sampled_class_logits += [class_logits_k] * multiplicity[k]
        positive_mask_logits += [mask_logits_k] * multiplicity[k]
        positive_labels += [
            labels[p] for labels, p in zip(sample.labels, positive_k, strict=True)
        ] * multiplicity[k]
    losses = {
        name: torch.stack(values) @ weights.to(values[0].device) for name, values in terms.items()
    }

    div_pp = self_diversity(
        torch.cat(sampled_class_logits), torch.cat(positive_mask_logits), torch.cat(positive_labels)
    )
    losses["loss_self_diversity"] = -(1.0 - gamma) * div_pp
    losses["div_pp"] = div_pp.detach()
    return losses


def self_diversity(class_logits: Tensor, mask_logits: Tensor, mask_labels: Tensor) -> Tensor:
    """DIV_Δ(Pr_p, Pr_p) of the factorised Mask R-CNN output, exactly.

    Two independent draws from class distribution q disagree with probability 1 - sum_c q_c^2;
    two draws of a pixel with foreground probability p disagree with probability 2 p (1 - p).

    Args:
        class_logits: `FloatTensor[R, C+1]` scores of R sampled RoIs.
        mask_logits: `FloatTensor[M, C+1, S, S]` mask logits of the M positive RoIs.
        mask_labels: `Int64Tensor[M]` class of each positive RoI; its channel is used.

    Returns:
        A scalar: the class disagreement averaged over RoIs plus the pixel disagreement
        averaged over the M * S * S pixels (0, attached to the graph, when M = 0).
    """
    q = class_logits.softmax(dim=-1)
    class_div = (1.0 - (q * q).sum(dim=-1)).mean()
    if mask_logits.shape[0] == 0:
        return class_div + mask_logits.sum() * 0
    p = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), mask_labels]
    p = p.sigmoid()  # (M, S, S)
    return class_div + (2.0 * p * (1.0 - p)).mean()


def _discard_negatives_near(
    labels: Tensor, boxes: Tensor, target: Target, threshold: float
) -> Tensor:
    """`labels` (N,) of `boxes` (N, 4) with the negatives (0) whose IoU with one of the target's
    `ignore_boxes` reaches `threshold` set to -1, which the positive/negative samplers skip."""
    ignore_boxes = target.get("ignore_boxes")
    if ignore_boxes is None or len(ignore_boxes) == 0:
        return labels
    near = box_iou(boxes, ignore_boxes.to(boxes)).max(dim=1).values >= threshold
    return torch.where((labels == 0) & near, torch.full_like(labels, -1), labels)


def _check_targets(images: list[Tensor], targets: list[list[Target]]) -> int:
    """The common K of `targets`, after checking the contract of `pseudo_target_loss`."""
    if len(images) == 0 or len(targets) != len(images):
        raise ValueError(f"need one target list per image, got {len(targets)} for {len(images)}")
    counts = {len(per_image) for per_image in targets}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every image needs the same number K >= 1 of targets, got {counts}")
    for per_image, image in zip(targets, images, strict=True):
        for t in per_image:
            boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
            if not boxes.is_floating_point() or labels.dtype != torch.int64:
                raise ValueError(
                    f"boxes must be float and labels int64: {boxes.dtype}, {labels.dtype}"
                )
            if masks.shape[-2:] != image.shape[-2:] or not (
                len(boxes) == len(labels) == len(masks)
            ):
                raise ValueError(
                    f"boxes {tuple(boxes.shape)}, labels {tuple(labels.shape)} and masks "
                    f"{tuple(masks.shape)} do not fit an image of {tuple(image.shape)}"
                )
            if (boxes[:, 2:] <= boxes[:, :2]).any():
                raise ValueError(f"degenerate boxes (x1 <= x0 or y1 <= y0) in {boxes}")
            ignore_boxes = t.get("ignore_boxes", boxes.new_zeros((0, 4)))
            if not ignore_boxes.is_floating_point() or ignore_boxes.shape[1:] != (4,):
                raise ValueError(
                    f"ignore_boxes must be float (M, 4), got {ignore_boxes.dtype} "
                    f"{tuple(ignore_boxes.shape)}"
                )
    return counts.pop()


def _distinct_samples(targets: list[list[Target]]) -> tuple[list[int], list[int]]:
    """The samples k whose targets differ from every earlier sample's on some image, and how
    many samples (itself included) each of them stands for."""
    distinct: list[int] = []
    multiplicity: list[int] = []
    for k in range(len(targets[0])):
        for position, d in enumerate(distinct):
            if all(_same_target(per_image[k], per_image[d]) for per_image in targets):
                multiplicity[position] += 1
                break
        else:
            distinct.append(k)
            multiplicity.append(1)
    return distinct, multiplicity


def _same_target(a: Target, b: Target) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _resize_targets(
    targets: list[Target], original_size: tuple[int, int], new_size: tuple[int, int]
) -> list[Target]:
    """One image's targets resized the way GeneralizedRCNNTransform resizes them with it."""
    masks = [t["masks"] for t in targets]
    if tuple(original_size) != tuple(new_size):  # else nearest resampling is the identity
        resampled = F.interpolate(torch.cat(masks)[:, None].float(), size=new_size)[:, 0]
        masks = list(resampled.byte().split([len(m) for m in masks]))
    resized = []
    for t, m in zip(targets, masks, strict=True):
        boxes = {
            key: resize_boxes(t[key], list(original_size), list(new_size))
            for key in ("boxes", "ignore_boxes")
            if key in t
        }
        resized.append({**t, **boxes, "masks": m})
    return resized


@dataclasses.dataclass
class _RoiSample:
    """The RoIs sampled for one target; one tensor per image, R_b sampled RoIs in image b."""

    rows: list[Tensor]  # (R_b,) index among the image's candidates [proposals; gt of k=0; ...]
    boxes: list[Tensor]  # (R_b, 4)
    labels: list[Tensor]  # (R_b,) class, 0 for background
    matched_idxs: list[Tensor]  # (R_b,) the matched gt instance (0 for background)
    regression_targets: list[Tensor]  # (R_b, 4) box deltas to the matched gt box


def _sample_rois(
    roi_heads: RoIHeads, proposals: list[Tensor], targets: list[Target], gt_offsets: list[int]
) -> _RoiSample:
    """RoIHeads.select_training_samples, also saying which candidate each sampled RoI is."""
    gt_boxes = [t["boxes"].to(p) for t, p in zip(targets, proposals, strict=True)]
    candidates = roi_heads.add_gt_proposals(proposals, gt_boxes)
    matched_idxs, labels = roi_heads.assign_targets_to_proposals(
        candidates, gt_boxes, [t["labels"] for t in targets]
    )
    labels = [
        _discard_negatives_near(lab, c, t, roi_heads.proposal_matcher.low_threshold)
        for lab, c, t in zip(labels, candidates, targets, strict=True)
    ]
    sampled = roi_heads.subsample(labels)
    rows, matched_boxes = [], []
    for b, inds in enumerate(sampled):
        num_proposals = len(proposals[b])
        rows.append(torch.where(inds < num_proposals, inds, inds + gt_offsets[b]))
        # an image without instances regresses to a dummy box, as torchvision does
        gt = gt_boxes[b] if len(gt_boxes[b]) else gt_boxes[b].new_zeros((1, 4))
        matched_boxes.append(gt[matched_idxs[b][inds]])
    boxes = [c[inds] for c, inds in zip(candidates, sampled, strict=True)]
    return _RoiSample(
        rows=rows,
        boxes=boxes,
        labels=[lab[inds] for lab, inds in zip(labels, sampled, strict=True)],
        matched_idxs=[m[inds] for m, inds in zip(matched_idxs, sampled, strict=True)],
        regression_targets=list(roi_heads.box_coder.encode(matched_boxes, boxes)),
    )


def _union(rows: list[list[Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """Deduplicate the candidate rows that the K targets sampled.

    Args:
        rows: `rows[b][k]`, `Int64Tensor[R_bk]` candidate indices image b sampled for target k.

    Returns:
        Per image the distinct candidate indices `Int64Tensor[U_b]`, and per target k the
        `Int64Tensor[R_k]` positions of its samples (image-major) in the concatenation of
        those distinct rows over the images.
    """
    distinct, gather = [], [[] for _ in rows[0]]
    offset = 0
    for per_target in rows:
        unique, inverse = torch.unique(torch.cat(per_target), return_inverse=True)
        for k, part in enumerate(inverse.split([len(r) for r in per_target])):
            gather[k].append(part + offset)
        distinct.append(unique)
        offset += len(unique)
    return distinct, [torch.cat(g) for g in gather]


@contextmanager
def _common_random_numbers(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block from the random state `seed`, leaving the caller's state untouched."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
