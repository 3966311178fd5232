"""The conditional network learns from its losses (docs/design.md, C-step). A few dozen optimiser
steps on a handful of tiny synthetic images: the box warm start brings the picks closer to the
objects, the tag warm start's image-level scores come to tell the tagged classes from the
rest, and the C-step moves the samples towards the prediction network's output. Seeds are
fixed; each test gives the values measured over several network seeds, far from its
thresholds."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from models.annotations import Annotation, BoxAnnotation, TagAnnotation
from models.candidates import Candidates, annotation_candidates, with_box_rectangles
from models.conditional import (
    ConditionalConfig,
    ConditionalNet,
    ProposalContext,
    describe_proposals,
)
from models.conditional_loss import c_step_outputs, conditional_loss
from models.delta import delta
from models.images import as_image_tensor
from models.proposals import ProposalSettings, propose
from models.structures import InstanceSet, mask_boxes
from models.warm_start import (
    box_ranking_loss,
    box_seed_labels,
    detection_scores,
    multiple_instance_loss,
    self_training_loss,
    tag_self_training_labels,
)
from tests.models.cases import box_pick_ious, twin_discs
from training.data.synthetic import CLASSES, render_scene
from training.items import grabcut_agreement

SIZE = 64
IMAGES = 8
CONFIG = ConditionalConfig(trunk_widths=(8, 16), descriptor_size=32)
PROPOSALS = ProposalSettings(max_proposals=30, work_size=SIZE)
LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class Item:
    """One synthetic image with what the losses read; gt: BoolTensor[N, H, W] visible masks."""

    image: Tensor
    proposals: Tensor
    context: ProposalContext
    candidates: Candidates
    annotation: Annotation
    gt: Tensor
    gt_labels: Tensor
    box_labels: Tensor | None = None


def scene_items(supervision: str) -> list[Item]:
    """The first IMAGES synthetic scenes with their proposals, annotated by tags or boxes
    (boxes: the tight boxes of the visible masks, and the warm start's GrabCut-seeded labels,
    as training prepares them)."""
    items = []
    for index in range(IMAGES):
        scene = render_scene(np.random.default_rng(index), SIZE)
        gt, gt_labels = torch.from_numpy(scene.masks), torch.tensor(scene.labels)
        if supervision == "tags":
            annotation = TagAnnotation(tuple(sorted(set(scene.labels))))
            proposals = propose(scene.image, settings=PROPOSALS)
        else:
            annotation = BoxAnnotation(mask_boxes(gt), gt_labels)
            proposals = propose(scene.image, annotation.boxes.numpy(), settings=PROPOSALS)
            proposals = with_box_rectangles(proposals, annotation)
        image = as_image_tensor(scene.image)
        candidates = annotation_candidates(
            proposals, annotation, CONFIG.inference.box_iou_threshold
        )
        box_labels = None
        if supervision == "boxes":
            agreement = grabcut_agreement(scene.image, candidates, annotation)
            box_labels = box_seed_labels(
                candidates, annotation, len(proposals), mask_boxes(proposals), agreement
            )
        context = describe_proposals(image, proposals, CONFIG)
        items.append(
            Item(image, proposals, context, candidates, annotation, gt, gt_labels, box_labels)
        )
    return items


def tag_warm_start_loss(net: ConditionalNet, item: Item, scores: Tensor) -> Tensor:
    """The tag warm start's terms (multiple-instance and self-training) on one sample."""
    prior = net.objectness_prior(item.context)
    labels = tag_self_training_labels(scores, item.candidates, item.annotation, prior, 0.0, 1.0)
    mil = multiple_instance_loss(scores, item.annotation, prior, 0.0)
    return mil + self_training_loss(scores, labels)


def box_warm_start_loss(net: ConditionalNet, item: Item, scores: Tensor) -> Tensor:
    """The box warm start's terms (ranking and self-training) on one sample."""
    ranking = box_ranking_loss(scores, item.candidates, item.box_labels, item.annotation)
    return ranking + self_training_loss(scores, item.box_labels)


def warm_start(
    net: ConditionalNet,
    items: list[Item],
    loss: Callable[[ConditionalNet, Item, Tensor], Tensor],
    steps: int,
) -> None:
    """`steps` Adam steps on the mean loss over the items, one noise sample each."""
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(steps):
        total = sum(
            loss(net, item, net(item.image, item.context, 1, generator)[0]) for item in items
        )
        optimizer.zero_grad()
        (total / len(items)).backward()
        optimizer.step()
    net.eval()


def fresh_net(seed: int = 0, config: ConditionalConfig = CONFIG) -> ConditionalNet:
    torch.manual_seed(seed)
    return ConditionalNet(len(CLASSES), config).eval()


@pytest.fixture(scope="module")
def box_items() -> list[Item]:
    return scene_items("boxes")


@pytest.fixture(scope="module")
def tag_items() -> list[Item]:
    return scene_items("tags")


def box_picks_iou(net: ConditionalNet, items: list[Item]) -> float:
    """Mean IoU of each box's pick with the box's object."""
    ious = [
        box_pick_ious(net, item.image, item.proposals, item.annotation, item.gt) for item in items
    ]
    return float(np.mean(sum(ious, [])))


def test_box_warm_start_raises_the_iou_of_the_picks(box_items):
    # Over five network seeds: 0.67-0.71 untrained, 0.91-0.92 after 30 steps.
    # Training from boxes turns the boundary prior off (TrainConfig.border_prior_weight).
    net = fresh_net(config=dataclasses.replace(CONFIG, border_prior_weight=0.0))
    before = box_picks_iou(net, box_items)
    warm_start(net, box_items, box_warm_start_loss, steps=30)
    after = box_picks_iou(net, box_items)
    assert after >= before + 0.1, f"box picks' IoU {before:.3f} -> {after:.3f}"


def tag_score_gap(net: ConditionalNet, items: list[Item]) -> float:
    """Mean over images of the image-level scores (the multiple-instance loss's) of the tagged
    classes less those of the others."""
    gaps = []
    with torch.no_grad():
        for item in items:
            scores = net(item.image, item.context, 1, torch.Generator().manual_seed(0))[0]
            prior = net.objectness_prior(item.context)
            image_scores = detection_scores(scores, prior, 0.0).sum(dim=0)
            tagged = torch.zeros(len(CLASSES), dtype=torch.bool)
            tagged[torch.tensor(item.annotation.labels) - 1] = True
            gaps.append(float(image_scores[tagged].mean() - image_scores[~tagged].mean()))
    return float(np.mean(gaps))


def test_tag_warm_start_learns_which_classes_each_image_holds(tag_items):
    # The multiple-instance loss's image-level scores: untrained they do not tell the tagged
    # classes from the rest (gaps of -0.01 to 0.01 over five network seeds); after 30 steps
    # they do (0.19 to 0.61). The picks' IoU per tag is no test here: on a few dozen tiny
    # images the classes are not yet told apart by shape, and it stays near the untrained
    # network's 0.2-0.4 or falls.
    net = fresh_net()
    before = tag_score_gap(net, tag_items)
    warm_start(net, tag_items, tag_warm_start_loss, steps=30)
    after = tag_score_gap(net, tag_items)
    assert before < 0.05 and after > 0.1, f"tagged less untagged {before:.3f} -> {after:.3f}"


def mean_delta(samples: list[InstanceSet], reference: InstanceSet) -> float:
    return float(np.mean([float(delta(sample, reference)) for sample in samples]))


def test_c_step_moves_the_samples_towards_the_prediction():
    # Given the twins' tag the samples split between the two discs; y_p is the disc fewer of
    # them pick. Algorithm 1 rewards the samples that agree with y_p: after 30 steps on the
    # C-step loss (γ = 0.5) nearly every sample picks it. Over four network seeds and both
    # discs as y_p, the mean Δ to y_p fell from 0.56-2.44 to 0.00-0.19.
    image, proposals = twin_discs()
    tags, k = TagAnnotation((1,)), 16
    net = fresh_net()
    tensor = as_image_tensor(image)
    context = describe_proposals(tensor, proposals, CONFIG)
    candidates = annotation_candidates(proposals, tags, CONFIG.inference.box_iou_threshold)

    def samples() -> list[InstanceSet]:
        return net.eval().sample(image, proposals, tags, k, torch.Generator().manual_seed(0))

    before = samples()
    picks = [int(s.proposal_ids[0]) for s in before]
    target = min((0, 1), key=picks.count)
    y_p = InstanceSet.from_masks(proposals[target : target + 1], torch.tensor([1]))
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(1)
    net.train()
    agreement = []
    for _ in range(30):
        scores = net(tensor, context, k, generator)
        outputs = c_step_outputs(scores.detach(), candidates, tags, y_p, CONFIG.inference)
        terms = conditional_loss(scores, candidates, outputs, gamma=0.5)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
        agreement.append(float(terms["loss_agreement"].detach()))
    assert min(agreement) < 0, "Algorithm 1 found no output to move away from"
    start, end = mean_delta(before, y_p), mean_delta(samples(), y_p)
    assert start >= 1.0 and end < start / 2, f"mean Δ to y_p {start:.3f} -> {end:.3f}"
