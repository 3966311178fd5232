"""The P-step loss (docs/design.md, P-step): DIV(Pr_p, Pr_c) - (1 - γ) DIV(Pr_p, Pr_p).

DIV(Pr_p, Pr_c) is Mask R-CNN's multi-task loss against each of K samples of the conditional
network as pseudo ground truth, averaged over the K samples. The RoIs are the image's segment
proposals, the same for every target, so the backbone and the box branch run once per batch;
per target only the matching of proposals to its instances and the loss functions run, and the
mask head runs once, on the union of the proposals that some target makes positive. Samples
that agree on every image (given boxes they nearly always do) have the same loss: each distinct
target is evaluated once and weighted by how many samples it stands for.

Every proposal takes part (no RoI sampling): a proposal is a positive of the instance it
overlaps most when their mask IoU reaches FOREGROUND_IOU, background below BACKGROUND_IOU and
ignored in between, so that pieces of an object are taught as background and near misses are
not. A target may name regions that are neither object nor background (`ignore_masks`:
instances the annotation allows but the sample left out): a proposal that would be background
but overlaps one of them by BACKGROUND_IOU or more is ignored. A caller that knows the mask IoUs
of the proposals with a target's instances (given tags the instances are proposals, whose IoUs
are computed once per image) passes them as `region_iou` (and `ignore_region_iou`) instead of
having them computed from the masks at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from models.delta import mask_iou
from models.regions import RegionProposals, mask_shapes

if TYPE_CHECKING:
    from models.prediction import ProposalMaskRCNN

Target = dict[str, Tensor]

# A proposal is an instance's positive at mask IoU >= 0.8: a filled disc over a ring (IoU 0.64 to
# 0.8 with it) is then no ring. Fully supervised on 100 synthetic images, mAP_r@0.5 rose from
# 0.73 to 0.78 (all detections ranked) against 0.7.
FOREGROUND_IOU = 0.8
BACKGROUND_IOU = 0.3
IGNORE = -1


@dataclass(frozen=True)
class Assignment:
    """The proposals of one image matched to one target's instances.

    labels: Int64Tensor[P], the class of the matched instance, 0 for background, IGNORE;
    matched: Int64Tensor[P], the instance each proposal overlaps most (0 without instances).
    """

    labels: Tensor
    matched: Tensor


def assign_proposals(regions: RegionProposals, targets: list[Target]) -> list[Assignment]:
    """Match every proposal to the instance of each target it overlaps most (mask IoU): the
    targets' `region_iou` where every target has them, else computed from the masks."""
    given = [_given_overlaps(target) for target in targets]
    overlaps = given if all(g is not None for g in given) else _mask_overlaps(regions, targets)
    return [
        _assignment(target["labels"], iou, ignore_iou)
        for target, (iou, ignore_iou) in zip(targets, overlaps, strict=True)
    ]


def _given_overlaps(target: Target) -> tuple[Tensor, Tensor] | None:
    """The target's `region_iou` and `ignore_region_iou` (empty without ignore masks), or None
    where it lacks one of them."""
    iou = target.get("region_iou")
    if iou is None:
        return None
    if "ignore_masks" not in target:
        return iou, iou[:, :0]
    ignore_iou = target.get("ignore_region_iou")
    return None if ignore_iou is None else (iou, ignore_iou)


def _mask_overlaps(regions: RegionProposals, targets: list[Target]) -> list[tuple[Tensor, Tensor]]:
    """Per target, the proposals' mask IoU with its instances, FloatTensor[P, N], and with its
    ignore masks, FloatTensor[P, M].

    The overlaps with every target's instances come from one matrix product: the proposals'
    masks are the large operand, and with one product per target they took half of a K = 10
    training step."""
    masks = [target["masks"] for target in targets]
    ignore_masks = [target.get("ignore_masks") for target in targets]
    ignore_masks = [m if m is not None else masks[0][:0] for m in ignore_masks]
    groups = masks + ignore_masks
    instances = torch.cat([m.to(regions.masks.dtype) for m in groups])
    iou = mask_iou(regions.masks, instances, regions.areas)
    per_group = iou.split([len(m) for m in groups], dim=1)
    return list(zip(per_group[: len(targets)], per_group[len(targets) :], strict=True))


def _assignment(instance_labels: Tensor, iou: Tensor, ignore_iou: Tensor) -> Assignment:
    """iou: FloatTensor[P, N] with the target's instances; ignore_iou: [P, M] with its
    ignore masks."""
    labels = torch.zeros(iou.shape[0], dtype=torch.int64, device=iou.device)
    matched = torch.zeros_like(labels)
    if iou.shape[1]:
        best, matched = iou.max(dim=1)
        labels = torch.where(best >= FOREGROUND_IOU, instance_labels[matched], labels)
        labels[(best >= BACKGROUND_IOU) & (best < FOREGROUND_IOU)] = IGNORE
    if ignore_iou.shape[1]:
        near = ignore_iou.max(dim=1).values >= BACKGROUND_IOU
        labels[(labels == 0) & near] = IGNORE
    return Assignment(labels=labels, matched=matched)


def pseudo_target_loss(
    model: ProposalMaskRCNN,
    images: list[Tensor],
    proposals: list[RegionProposals],
    targets: list[list[Target]],
    *,
    gamma: float = 0.5,
) -> dict[str, Tensor]:
    """The P-step objective of `model` against K pseudo targets per image.

    Args:
        model: the prediction network, normally in training mode.
        images: B images, `FloatTensor[3, H_b, W_b]` in [0, 1].
        proposals: the images' segment proposals.
        targets: `targets[b][k]` is sample k's pseudo ground truth for image b, with boxes
            `FloatTensor[N, 4]` (x0, y0, x1, y1 pixels), labels `Int64Tensor[N]` in 1..C and
            masks `UInt8Tensor[N, H_b, W_b]`; N may be 0. Optionally `ignore_masks`
            `BoolTensor[M, H_b, W_b]`, and the known mask IoUs of the image's P proposals with
            the instances, `region_iou` `FloatTensor[P, N]`, and with the ignore masks,
            `ignore_region_iou` `FloatTensor[P, M]` (see the module's docstring). Every image
            has the same K >= 1.
        gamma: the γ of the dissimilarity coefficient; the self-diversity weight is 1 - γ.

    Returns:
        `loss_classifier`, `loss_box_reg`, `loss_mask`: Mask R-CNN's terms averaged over the K
        targets; `loss_self_diversity` = -(1 - γ) DIV(Pr_p, Pr_p); and `div_pp`,
        DIV(Pr_p, Pr_p) detached. The objective is the sum of the `loss_*` terms.
    """
    num_targets = _check_targets(images, proposals, targets)
    distinct, multiplicity = _distinct_samples(targets)
    outputs = model.region_outputs(images, proposals)
    per_image_assignments = [
        assign_proposals(regions, [per_image[k] for k in distinct])
        for regions, per_image in zip(proposals, targets, strict=True)
    ]
    assignments = list(zip(*per_image_assignments, strict=True))  # assignments[d][b]
    positive_rows = [
        torch.unique(torch.cat([a[b].labels.gt(0).nonzero().squeeze(1) for a in assignments]))
        for b in range(len(images))
    ]
    mask_logits = model.mask_logits(outputs, proposals, positive_rows)  # (U, C+1, S, S)
    union_offsets = torch.tensor([0, *[len(r) for r in positive_rows]]).cumsum(0).tolist()

    terms: dict[str, list[Tensor]] = {"loss_classifier": [], "loss_box_reg": [], "loss_mask": []}
    positive_logits, positive_labels = [], []
    for d, k in enumerate(distinct):
        per_image = assignments[d]
        labels = torch.cat([a.labels for a in per_image])  # (R,)
        terms["loss_classifier"].append(_classifier_loss(outputs.class_logits, labels))
        terms["loss_box_reg"].append(
            _box_loss(model, outputs.box_regression, proposals, targets, k, per_image, labels)
        )
        logits_k, labels_k, mask_targets = [], [], []
        for b, assignment in enumerate(per_image):
            rows = assignment.labels.gt(0).nonzero().squeeze(1)
            union_positions = torch.searchsorted(positive_rows[b], rows) + union_offsets[b]
            logits_k.append(mask_logits[union_positions])
            labels_k.append(assignment.labels[rows])
            instances = targets[b][k]["masks"][assignment.matched[rows]]
            mask_targets.append(mask_shapes(instances, proposals[b].boxes[rows]))
        logits_k, labels_k = torch.cat(logits_k), torch.cat(labels_k)
        terms["loss_mask"].append(_mask_loss(logits_k, labels_k, torch.cat(mask_targets)))
        positive_logits += [logits_k] * multiplicity[d]
        positive_labels += [labels_k] * multiplicity[d]

    weights = torch.tensor(multiplicity, dtype=torch.float32) / num_targets  # (D,)
    losses = {
        name: torch.stack(values) @ weights.to(values[0].device) for name, values in terms.items()
    }
    div_pp = self_diversity(
        outputs.class_logits, torch.cat(positive_logits), torch.cat(positive_labels)
    )
    losses["loss_self_diversity"] = -(1.0 - gamma) * div_pp
    losses["div_pp"] = div_pp.detach()
    return losses


def self_diversity(class_logits: Tensor, mask_logits: Tensor, mask_labels: Tensor) -> Tensor:
    """DIV_Δ(Pr_p, Pr_p) of the factorised Mask R-CNN output, exactly.

    Two independent draws from class distribution q disagree with probability 1 - sum_c q_c^2;
    two draws of a pixel with foreground probability p disagree with probability 2 p (1 - p).

    Args:
        class_logits: `FloatTensor[R, C+1]` scores of R proposals.
        mask_logits: `FloatTensor[M, C+1, S, S]` mask logits of the M positive proposals.
        mask_labels: `Int64Tensor[M]` class of each positive proposal; its channel is used.

    Returns:
        A scalar: the class disagreement averaged over proposals plus the pixel disagreement
        averaged over the M * S * S pixels (0, attached to the graph, when M = 0).
    """
    q = class_logits.softmax(dim=-1)
    class_div = (1.0 - (q * q).sum(dim=-1)).mean()
    if mask_logits.shape[0] == 0:
        return class_div + mask_logits.sum() * 0
    p = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), mask_labels]
    p = p.sigmoid()  # (M, S, S)
    return class_div + (2.0 * p * (1.0 - p)).mean()


def _classifier_loss(class_logits: Tensor, labels: Tensor) -> Tensor:
    if not labels.ne(IGNORE).any():
        return class_logits.sum() * 0
    return F.cross_entropy(class_logits, labels, ignore_index=IGNORE)


def _box_loss(
    model: ProposalMaskRCNN,
    box_regression: Tensor,
    proposals: list[RegionProposals],
    targets: list[list[Target]],
    k: int,
    assignments: list[Assignment],
    labels: Tensor,
) -> Tensor:
    """Fast R-CNN's smooth L1 box loss of the positives, over the labelled proposals. Box
    deltas do not change when an image is resized, so they are encoded at its own size."""
    positive = labels.gt(0).nonzero().squeeze(1)
    if len(positive) == 0:
        return box_regression.sum() * 0
    proposal_boxes = torch.cat([regions.boxes for regions in proposals])[positive]
    matched_boxes = torch.cat(
        [
            per_image[k]["boxes"][a.matched] if len(per_image[k]["boxes"]) else regions.boxes
            for per_image, a, regions in zip(targets, assignments, proposals, strict=True)
        ]
    )[positive]
    regression_targets = model.roi_heads.box_coder.encode_single(matched_boxes, proposal_boxes)
    deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
    loss = F.smooth_l1_loss(deltas, regression_targets, beta=1 / 9, reduction="sum")
    return loss / labels.ne(IGNORE).sum().clamp(min=1)


def _mask_loss(logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
    """Binary cross-entropy of each positive's mask logits in its class's channel.
    logits: FloatTensor[M, C+1, S, S]; mask_targets: FloatTensor[M, S, S] in [0, 1]."""
    if len(labels) == 0:
        return logits.sum() * 0
    chosen = logits[torch.arange(len(labels), device=logits.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, mask_targets)


def _check_targets(
    images: list[Tensor], proposals: list[RegionProposals], targets: list[list[Target]]
) -> int:
    """The common K of `targets`, after checking the contract of `pseudo_target_loss`."""
    if len(images) == 0 or len(targets) != len(images) or len(proposals) != len(images):
        raise ValueError(
            f"need one proposal set and one target list per image, got {len(proposals)} and "
            f"{len(targets)} for {len(images)} images"
        )
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
            ignore_masks = t.get("ignore_masks")
            if ignore_masks is not None and ignore_masks.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"ignore_masks {tuple(ignore_masks.shape)} do not fit an image of "
                    f"{tuple(image.shape)}"
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
