"""The loss of one training step of each phase, as named terms (`loss_*` sum to the objective).

Each function takes a batch of training items and the networks, and returns a dict of 0-dim
tensors; the loop in `training.trainer` does backward and the optimiser step.
"""

import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN

from models.annotations import TagAnnotation
from models.candidates import Candidates
from models.conditional import ConditionalNet
from models.conditional_loss import c_step_outputs, conditional_loss
from models.inference import consistent_argmax, to_instances, unclaimed_instances
from models.prediction_loss import pseudo_target_loss
from models.structures import InstanceSet, mask_boxes
from models.warm_start import (
    box_ranking_loss,
    multiple_instance_loss,
    self_training_loss,
    tag_self_training_labels,
)
from training.config import TrainConfig
from training.items import TrainingItem


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
    batch: list[TrainingItem],
    conditional: ConditionalNet,
    device: torch.device,
    config: TrainConfig,
) -> dict[str, Tensor]:
    """The conditional network from the annotation alone (models.warm_start)."""
    terms = []
    for item in batch:
        scores = conditional(item.tensor.to(device), item.context.to(device), 1).cpu()
        prior = conditional.objectness_prior(item.context)
        terms.append(annotation_loss(scores, item, item.candidates(), prior, config))
    return mean_terms(terms)


def instance_target(instances: InstanceSet) -> dict[str, Tensor]:
    """An instance set as a torchvision detection target."""
    return {
        "boxes": mask_boxes(instances.masks),
        "labels": instances.labels,
        "masks": instances.masks.to(torch.uint8),
    }


@torch.no_grad()
def pseudo_targets(
    item: TrainingItem,
    conditional: ConditionalNet,
    k: int,
    ignore_unclaimed: bool,
    device: torch.device,
) -> list[dict[str, Tensor]]:
    """K samples of the conditional network for one item, consistent with its annotation, as
    detection targets (CPU). With `ignore_unclaimed` each also has `ignore_boxes`, the boxes of
    the instances it leaves out for the per-tag limit (models.inference.unclaimed_instances)."""
    scores = conditional(item.tensor.to(device), item.context.to(device), k).cpu()
    candidates = item.candidates()
    inference = conditional.config.inference
    targets = []
    for s in scores:
        selection = consistent_argmax(s, candidates, item.annotation, inference)
        target = instance_target(to_instances(selection, candidates, s))
        if ignore_unclaimed:
            unclaimed = unclaimed_instances(s, candidates, item.annotation, inference, selection)
            target["ignore_boxes"] = mask_boxes(candidates.masks[unclaimed.candidate_ids])
        targets.append(target)
    return targets


def p_step_loss(
    batch: list[TrainingItem],
    prediction: MaskRCNN,
    conditional: ConditionalNet,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Tensor]:
    """Mask R-CNN on K pseudo labels per image, with the self-diversity term."""
    ignore_unclaimed = config.unclaimed == "ignore"
    targets = [
        [
            _to_device(t, device)
            for t in pseudo_targets(item, conditional, config.k, ignore_unclaimed, device)
        ]
        for item in batch
    ]
    images = [item.tensor.to(device) for item in batch]
    return pseudo_target_loss(prediction, images, targets, gamma=config.gamma)


def supervised_loss(
    batch: list[TrainingItem], prediction: MaskRCNN, device: torch.device
) -> dict[str, Tensor]:
    """Full supervision (the upper bound): the ground truth is the single target, γ = 1."""
    targets = [[_to_device(item.target, device)] for item in batch]
    images = [item.tensor.to(device) for item in batch]
    return pseudo_target_loss(prediction, images, targets, gamma=1.0)


@torch.no_grad()
def predict_instances(prediction: MaskRCNN, image: Tensor, score_threshold: float) -> InstanceSet:
    """The prediction network's detections scoring at least score_threshold, with their masks
    binarised at 0.5. image: FloatTensor[3, H, W] in [0, 1]."""
    output = prediction([image])[0]
    return _detected_instances(output, output["scores"] >= score_threshold)


@torch.no_grad()
def sample_prediction(prediction: MaskRCNN, image: Tensor, min_score: float) -> InstanceSet:
    """A sample y_p ~ Pr_p of the prediction network's output (the seed's eq. 13 takes the
    expectation over such samples): each detection scoring at least min_score is an instance
    with probability its score, independently of the others. Sampling instead of thresholding
    keeps y_p meaningful while the prediction network is unsure: trained for minutes from
    scratch its detections score 0.1-0.3, and a threshold of 0.5 left y_p empty on nearly every
    image. image: FloatTensor[3, H, W] in [0, 1]."""
    output = prediction([image])[0]
    scores = output["scores"]
    draws = torch.rand(scores.shape).to(scores.device)
    return _detected_instances(output, (scores >= min_score) & (draws < scores))


def _detected_instances(output: dict[str, Tensor], keep: Tensor) -> InstanceSet:
    """The kept detections of a torchvision Mask R-CNN output as an InstanceSet (CPU)."""
    masks = output["masks"][keep, 0] > 0.5
    nonempty = masks.flatten(1).any(1)
    return InstanceSet.from_masks(
        masks[nonempty].cpu(),
        output["labels"][keep][nonempty].cpu(),
        output["scores"][keep][nonempty].cpu(),
    )


def c_step_loss(
    batch: list[TrainingItem],
    prediction: MaskRCNN,
    conditional: ConditionalNet,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Tensor]:
    """Algorithm 1 of the seed against a sample y_p of the prediction network's output, plus
    the warm start's annotation loss on every sample.

    An image where y_p is empty (no detection was sampled) gets the annotation loss alone:
    Algorithm 1's agreement term is then 0 and its diversity term, unopposed, flattens the
    scores until every sample leaves its best consistent output (given boxes, top-1 IoU fell
    from 0.90 to 0.46 in two C-steps).
    """
    inference = conditional.config.inference
    terms = []
    for item in batch:
        image = item.tensor.to(device)
        y_p = sample_prediction(prediction, image, config.prediction_threshold)
        scores = conditional(image, item.context.to(device), config.k).cpu()
        candidates = item.candidates()
        prior = conditional.objectness_prior(item.context)
        anchor = annotation_loss(scores, item, candidates, prior, config)
        if len(y_p) == 0:
            zero = scores.sum() * 0
            terms.append({"loss_agreement": zero, "loss_diversity": zero, **anchor})
            continue
        outputs = c_step_outputs(scores.detach(), candidates, item.annotation, y_p, inference)
        terms.append({**conditional_loss(scores, candidates, outputs, config.gamma), **anchor})
    return mean_terms(terms)


def _to_device(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in target.items()}
