"""The loss of one training step of each phase, as named terms (`loss_*` sum to the objective).

Every step loss has the signature of `StepLoss`: a batch of training items, the bundle of both
networks, the settings and the device; it returns a dict of 0-dim tensors, `loss_*` terms and
logged measurements. The loop in `training.trainer` does backward and the optimiser step.
"""

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import ColorJitter

from models.annotations import TagAnnotation
from models.bundle import ModelBundle
from models.candidates import Candidates
from models.conditional import ConditionalNet, pooling_grid
from models.conditional_loss import c_step_outputs, conditional_loss
from models.inference import consistent_argmax, unclaimed_instances
from models.prediction import ProposalMaskRCNN, detected_instances
from models.prediction_loss import pseudo_target_loss
from models.structures import InstanceSet, mask_boxes
from models.warm_start import (
    box_ranking_loss,
    multiple_instance_loss,
    self_training_loss,
    tag_self_training_labels,
)
from training.config import TrainConfig
from training.items import PseudoLabel, TrainingItem

_COLOUR_JITTER = ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.02)

StepLoss = Callable[[list[TrainingItem], ModelBundle, TrainConfig, torch.device], dict[str, Tensor]]


def mean_terms(terms: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: sum(t[key] for t in terms) / len(terms) for key in terms[0]}


def annotation_loss(
    scores: Tensor, item: TrainingItem, candidates: Candidates, prior: Tensor, config: TrainConfig
) -> dict[str, Tensor]:
    """The warm start's terms (models.warm_start) for one item, averaged over its samples.

    scores: FloatTensor[K, P, C+1]; candidates: item.candidates(); prior: FloatTensor[P], the
    proposals' objectness prior (ConditionalNet.objectness_prior).
    """
    terms = []
    if isinstance(item.annotation, TagAnnotation):
        for s in scores:
            labels = tag_self_training_labels(
                s, candidates, item.annotation, prior, config.prior_weight, config.seed_ratio
            )
            mil = multiple_instance_loss(s, item.annotation, prior, config.prior_weight)
            terms.append({"loss_mil": mil, "loss_self_training": self_training_loss(s, labels)})
        return mean_terms(terms)
    labels = item.box_labels
    for s in scores:
        mil = box_ranking_loss(s, candidates, labels, item.annotation)
        terms.append({"loss_mil": mil, "loss_self_training": self_training_loss(s, labels)})
    return mean_terms(terms)


def warm_start_loss(
    batch: list[TrainingItem], bundle: ModelBundle, config: TrainConfig, device: torch.device
) -> dict[str, Tensor]:
    """The conditional network from the annotation alone (models.warm_start), each image
    mirrored with probability 1/2 (with its proposals' context) and its colours jittered."""
    conditional = bundle.conditional
    terms = []
    for item in batch:
        image, context = item.tensor, item.context
        if bool(torch.rand(()) < 0.5):
            grid = pooling_grid(tuple(image.shape[-2:]), conditional.config.pool_stride)
            image, context = image.flip(-1), context.hflip(grid)
        image = _COLOUR_JITTER(image)
        scores = conditional(image.to(device), context.to(device), 1).cpu()
        prior = conditional.objectness_prior(context)
        terms.append(annotation_loss(scores, item, item.candidates(), prior, config))
    return mean_terms(terms)


@torch.no_grad()
def draw_pseudo_labels(
    item: TrainingItem,
    conditional: ConditionalNet,
    k: int,
    ignore_unclaimed: bool,
    device: torch.device,
    evidence: Tensor | None = None,
) -> list[PseudoLabel]:
    """K samples of the conditional network for one item, consistent with its annotation,
    `evidence` FloatTensor[P, C+1] added to its scores. With `ignore_unclaimed` each names the
    instances it leaves out for the per-tag limit (models.inference.unclaimed_instances)."""
    scores = conditional(item.tensor.to(device), item.context.to(device), k).cpu()
    if evidence is not None:
        scores = scores + evidence
    candidates = item.candidates()
    inference = conditional.config.inference
    labels = []
    for s in scores:
        selection = consistent_argmax(s, candidates, item.annotation, inference)
        ignored = None
        if ignore_unclaimed:
            unclaimed = unclaimed_instances(s, candidates, item.annotation, inference, selection)
            ignored = unclaimed.candidate_ids
        labels.append(PseudoLabel(selection, ignored))
    return labels


def pseudo_target(
    label: PseudoLabel, candidates: Candidates, region_iou: Tensor | None = None
) -> dict[str, Tensor]:
    """A pseudo label as a torchvision detection target (CPU), with `ignore_masks` where it
    names ignored instances. region_iou: FloatTensor[P, Q], the mask IoU of the image's region
    proposals with every candidate where known; the target then carries its instances' columns
    (models.prediction_loss)."""
    ids = label.selection.candidate_ids
    target = {
        "boxes": candidates.boxes[ids],
        "labels": label.selection.labels,
        "masks": candidates.masks[ids].to(torch.uint8),
    }
    if label.ignored is not None:
        target["ignore_masks"] = candidates.masks[label.ignored]
    if region_iou is not None:
        target["region_iou"] = region_iou[:, ids]
        if label.ignored is not None:
            target["ignore_region_iou"] = region_iou[:, label.ignored]
    return target


def hflip_target(target: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detection target of the horizontally mirrored image."""
    flipped = {key: value.flip(-1) for key, value in target.items() if key.endswith("masks")}
    return {**target, **flipped, "boxes": mask_boxes(flipped["masks"].bool())}


def prediction_loss(
    batch: list[TrainingItem],
    targets: list[list[dict[str, Tensor]]],
    prediction: ProposalMaskRCNN,
    gamma: float,
    device: torch.device,
) -> dict[str, Tensor]:
    """The prediction network's loss against K targets per item, each image mirrored with
    probability 1/2 (its proposals mirror exactly) and its colours jittered for the backbone
    (the proposals' descriptors keep the image's own); the backbone's input scale varies too
    (the preset's min_sizes)."""
    images, proposals, mirrored = [], [], []
    for item, item_targets in zip(batch, targets, strict=True):
        image, regions = item.tensor, item.region_proposals()
        if bool(torch.rand(()) < 0.5):
            image, regions = image.flip(-1), regions.hflip()
            item_targets = [hflip_target(t) for t in item_targets]
        images.append(_COLOUR_JITTER(image).to(device))
        proposals.append(regions.to(device))
        mirrored.append([{key: value.to(device) for key, value in t.items()} for t in item_targets])
    return pseudo_target_loss(prediction, images, proposals, mirrored, gamma=gamma)


def p_step_loss(
    batch: list[TrainingItem], bundle: ModelBundle, config: TrainConfig, device: torch.device
) -> dict[str, Tensor]:
    """Mask R-CNN on K pseudo labels per image, with the self-diversity term. The conditional
    network does not change during a P-step, so each item's K samples are drawn once per phase
    (at its first step; the trainer clears them between phases): a fifth of a step's time.
    Given tags, once the prediction network has trained, they are drawn with its class
    evidence joined to the conditional network's scores (ModelBundle.class_evidence)."""
    ignore_unclaimed = config.unclaimed == "ignore"
    targets = []
    for item in batch:
        if item.pseudo_labels is None:
            evidence = None
            if isinstance(item.annotation, TagAnnotation) and bundle.prediction_trained:
                evidence = bundle.class_evidence(item.tensor, item.region_proposals())
            item.pseudo_labels = draw_pseudo_labels(
                item, bundle.conditional, config.k, ignore_unclaimed, device, evidence
            )
        candidates = item.candidates()
        # Where the candidates are the region proposals their IoUs are known: the product of the
        # masks took 8% of a step.
        region_iou = candidates.iou if item.candidates_are_regions else None
        targets.append(
            [pseudo_target(label, candidates, region_iou) for label in item.pseudo_labels]
        )
    return prediction_loss(batch, targets, bundle.prediction, config.gamma, device)


def supervised_loss(
    batch: list[TrainingItem], bundle: ModelBundle, config: TrainConfig, device: torch.device
) -> dict[str, Tensor]:
    """The prediction network alone on each item's target (the ground truth: the upper bound;
    or a baseline's pseudo masks): a single target, γ = 1."""
    targets = [[item.target] for item in batch]
    return prediction_loss(batch, targets, bundle.prediction, 1.0, device)


@torch.no_grad()
def sample_prediction(
    prediction: ProposalMaskRCNN, item: TrainingItem, min_score: float, device: torch.device
) -> InstanceSet:
    """A sample y_p ~ Pr_p of the prediction network's output on an item (the paper's eq. 13
    takes the expectation over such samples): each detection scoring at least min_score is an
    instance with probability its score, independently of the others."""
    output = prediction([item.tensor.to(device)], [item.region_proposals().to(device)])[0]
    scores = output["scores"]
    draws = torch.rand(scores.shape).to(scores.device)
    return detected_instances(output, (scores >= min_score) & (draws < scores))


def c_step_terms(
    item: TrainingItem,
    y_p: InstanceSet,
    conditional: ConditionalNet,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Tensor]:
    """The paper's Algorithm 1 against y_p, plus the warm start's annotation loss on every
    sample, for one item.

    Where y_p is empty the annotation loss is the only term: Algorithm 1's agreement term is
    then 0 and its diversity term, unopposed, flattens the scores until every sample leaves its
    best consistent output (given boxes, top-1 IoU fell from 0.90 to 0.46 in two C-steps).
    """
    scores = conditional(item.tensor.to(device), item.context.to(device), config.k).cpu()
    candidates = item.candidates()
    prior = conditional.objectness_prior(item.context)
    anchor = annotation_loss(scores, item, candidates, prior, config)
    if len(y_p) == 0:
        zero = scores.sum() * 0
        return {"loss_agreement": zero, "loss_diversity": zero, **anchor}
    outputs = c_step_outputs(
        scores.detach(), candidates, item.annotation, y_p, conditional.config.inference
    )
    return {**conditional_loss(scores, candidates, outputs, config.gamma), **anchor}


def c_step_loss(
    batch: list[TrainingItem], bundle: ModelBundle, config: TrainConfig, device: torch.device
) -> dict[str, Tensor]:
    """The C-step against a sample y_p of the prediction network's output per item; logs the
    share of items whose y_p is not empty (`y_p_nonempty`) and its mean size (`y_p_instances`)."""
    terms = []
    for item in batch:
        y_p = sample_prediction(bundle.prediction, item, config.prediction_threshold, device)
        terms.append(
            {
                **c_step_terms(item, y_p, bundle.conditional, config, device),
                "y_p_nonempty": torch.tensor(float(len(y_p) > 0)),
                "y_p_instances": torch.tensor(float(len(y_p))),
            }
        )
    return mean_terms(terms)


STEP_LOSSES: dict[str, StepLoss] = {
    "warm_start": warm_start_loss,
    "p_step": p_step_loss,
    "c_step": c_step_loss,
    "supervised": supervised_loss,
}
