"""Training items, and the C-step on them: Algorithm 1 runs against a sample of the prediction
network's output; without one an image keeps only the annotation loss."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor

import training.steps
from models.bundle import build_bundle
from models.conditional import ConditionalConfig, ConditionalNet
from models.conditional_loss import c_step_outputs, conditional_loss
from models.delta import mask_iou
from models.inference import consistent_argmax, to_instances, unclaimed_instances
from models.proposals import ProposalSettings
from models.structures import InstanceSet
from training.config import TrainConfig
from training.data.coco import CocoDataset
from training.data.synthetic import generate_dataset
from training.proposal_cache import DiskProposalCache
from training.run import prepare_items
from training.steps import (
    annotation_loss,
    c_step_loss,
    c_step_terms,
    draw_pseudo_labels,
    p_step_loss,
    pseudo_target,
    sample_prediction,
)

CONDITIONAL = ConditionalConfig(trunk_widths=(8, 16), hidden_channels=16)
CONFIG = TrainConfig(k=3, image_size=48, max_proposals=30, device="cpu")


@pytest.fixture(scope="module", params=["tags", "boxes"])
def setting(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_json, _ = generate_dataset(root, n=3, size=48, seed=1, val_fraction=0.34)
    dataset = CocoDataset(train_json, root, request.param)
    settings = ProposalSettings(max_proposals=CONFIG.max_proposals)
    cache = DiskProposalCache(Path(tmp_path_factory.mktemp("proposals")), settings)
    items = prepare_items(dataset, [0, 1], cache, CONDITIONAL, CONFIG.image_size, False)
    torch.manual_seed(0)
    bundle = build_bundle(
        classes=dataset.classes,
        preset="tiny",
        conditional_config=CONDITIONAL,
        proposal_settings=settings,
        metadata={},
    )
    bundle.prediction.eval()
    return items, bundle, dataset, cache


def test_items_prepared_in_worker_processes_are_the_ones_prepared_inline(setting):
    items, _, dataset, cache = setting
    parallel = prepare_items(
        dataset, [0, 1], cache, CONDITIONAL, CONFIG.image_size, False, workers=2
    )
    for inline, worker in zip(items, parallel, strict=True):
        assert inline.index == worker.index
        annotations = [dataclasses.asdict(item.annotation) for item in (inline, worker)]
        torch.testing.assert_close(*annotations)
        assert (inline.region_masks.bits == worker.region_masks.bits).all()
        assert torch.equal(inline.proposals(), worker.proposals())
        torch.testing.assert_close(inline.regions, worker.regions)
        torch.testing.assert_close(inline.context, worker.context)
        torch.testing.assert_close(inline.geometry, worker.geometry)
        torch.testing.assert_close(inline.box_labels, worker.box_labels)


def test_without_prediction_output_only_the_annotation_loss_remains(setting):
    items, bundle, *_ = setting
    nothing_reaches = dataclasses.replace(CONFIG, prediction_threshold=1.01)
    terms = c_step_loss(items, bundle, nothing_reaches, torch.device("cpu"))
    assert terms["loss_agreement"] == 0 and terms["loss_diversity"] == 0
    assert terms["y_p_nonempty"] == 0 and terms["y_p_instances"] == 0
    assert terms["loss_self_training"] > 0
    objective = sum(v for k, v in terms.items() if k.startswith("loss_"))
    objective.backward()
    gradients = [p.grad for p in bundle.conditional.head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in gradients)
    bundle.conditional.zero_grad(set_to_none=True)


def current_picks(items, conditional: ConditionalNet) -> list[InstanceSet]:
    """Each item's consistent argmax under one noise sample. As y_p it makes every other
    output cost Δ, so Algorithm 1's loss-augmented argmax leaves the pick: a non-zero agreement
    term (the noise hardly moves these picks)."""
    picks = []
    for item in items:
        with torch.no_grad():
            scores = conditional(item.tensor, item.context, 1, torch.Generator().manual_seed(0))
        candidates = item.candidates()
        inference = conditional.config.inference
        selection = consistent_argmax(scores[0], candidates, item.annotation, inference)
        picks.append(to_instances(selection, candidates, scores[0]))
    return picks


def test_c_step_runs_algorithm_1_against_a_non_empty_y_p(setting):
    items, bundle, *_ = setting
    conditional, cpu = bundle.conditional, torch.device("cpu")
    y_ps = current_picks(items, conditional)
    assert all(len(y_p) for y_p in y_ps)
    for item, y_p in zip(items, y_ps, strict=True):
        torch.manual_seed(0)
        terms = c_step_terms(item, y_p, conditional, CONFIG, cpu)
        assert set(terms) == {"loss_agreement", "loss_diversity", "loss_mil", "loss_self_training"}
        assert terms["loss_agreement"] < 0, "the loss-augmented outputs must leave y_p"

        # The same terms from their pieces: Algorithm 1's outputs for the K samples against
        # y_p (the same noise: the same seed) and the annotation loss.
        torch.manual_seed(0)
        scores = conditional(item.tensor, item.context, CONFIG.k)
        candidates = item.candidates()
        outputs = c_step_outputs(
            scores.detach(), candidates, item.annotation, y_p, conditional.config.inference
        )
        prior = conditional.objectness_prior(item.context)
        expected = conditional_loss(scores, candidates, outputs, CONFIG.gamma) | annotation_loss(
            scores, item, candidates, prior, CONFIG
        )
        for key, value in terms.items():
            torch.testing.assert_close(value, expected[key])

        terms["loss_agreement"].backward()
        gradients = [p.grad for p in conditional.head.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in gradients)
        conditional.zero_grad(set_to_none=True)


def test_pseudo_targets_name_the_unclaimed_instances_only_when_asked(setting):
    items, bundle, dataset, _ = setting
    conditional = copy.deepcopy(bundle.conditional)
    with torch.no_grad():  # every candidate's margin positive: tags leave instances out
        conditional.head[-1].bias[1:] += 10
    cpu = torch.device("cpu")
    left_out_boxes = 0
    for item in items:
        candidates, inference = item.candidates(), conditional.config.inference
        torch.manual_seed(0)
        plain = [
            pseudo_target(p, candidates)
            for p in draw_pseudo_labels(item, conditional, 2, False, cpu)
        ]
        torch.manual_seed(0)
        ignoring = [
            pseudo_target(p, candidates)
            for p in draw_pseudo_labels(item, conditional, 2, True, cpu)
        ]
        assert len(plain) == len(ignoring) == 2
        assert all("ignore_masks" not in t for t in plain)
        torch.manual_seed(0)
        scores = conditional(item.tensor, item.context, 2)
        for target, ignoring_target, s in zip(plain, ignoring, scores, strict=True):
            for key in ("boxes", "labels", "masks"):
                assert torch.equal(target[key], ignoring_target[key])
            selection = consistent_argmax(s, candidates, item.annotation, inference)
            left_out = unclaimed_instances(s, candidates, item.annotation, inference, selection)
            expected = candidates.masks[left_out.candidate_ids]
            assert torch.equal(ignoring_target["ignore_masks"], expected)
            left_out_boxes += len(expected)
    assert (left_out_boxes > 0) == (dataset.supervision == "tags")


def test_a_p_step_draws_each_items_samples_once(setting):
    items, bundle, *_ = setting
    items = [dataclasses.replace(item, pseudo_labels=None) for item in items]
    conditional = copy.deepcopy(bundle.conditional)
    calls = []
    conditional.register_forward_hook(lambda *args: calls.append(1))
    networks = dataclasses.replace(bundle, conditional=conditional)
    cpu = torch.device("cpu")
    first = p_step_loss(items, networks, CONFIG, cpu)
    drawn = [item.pseudo_labels for item in items]
    assert len(calls) == len(items) and all(len(d) == CONFIG.k for d in drawn)
    second = p_step_loss(items, networks, CONFIG, cpu)
    assert len(calls) == len(items)
    assert [item.pseudo_labels for item in items] == drawn
    assert all(torch.isfinite(terms["loss_classifier"]) for terms in (first, second))


def test_given_tags_the_p_steps_targets_carry_their_ious_with_the_regions(setting, monkeypatch):
    """Given tags the candidates are the region proposals: each target carries their IoUs with
    its instances, those of the masks, and the loss is the one computed from the masks."""
    items, bundle, dataset, _ = setting
    targets = []
    loss_of = training.steps.prediction_loss

    def recording(batch, batch_targets, *args):
        targets.append(batch_targets)
        return loss_of(batch, batch_targets, *args)

    monkeypatch.setattr(training.steps, "prediction_loss", recording)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    undrawn = [dataclasses.replace(item, pseudo_labels=None) for item in items]
    known = p_step_loss(undrawn, bundle, CONFIG, cpu)
    tags = dataset.supervision == "tags"
    for item, item_targets in zip(items, targets[0], strict=True):
        regions = item.region_proposals()
        for target in item_targets:
            assert ("region_iou" in target) == tags
            if tags:
                iou = mask_iou(regions.masks, target["masks"], regions.areas)
                ignore_iou = mask_iou(regions.masks, target["ignore_masks"], regions.areas)
                assert torch.equal(target["region_iou"], iou)
                assert torch.equal(target["ignore_region_iou"], ignore_iou)
    monkeypatch.setattr(
        training.steps,
        "pseudo_target",
        lambda label, candidates, region_iou=None: pseudo_target(label, candidates),
    )
    torch.manual_seed(0)
    undrawn = [dataclasses.replace(item, pseudo_labels=None) for item in items]
    from_masks = p_step_loss(undrawn, bundle, CONFIG, cpu)
    assert all(torch.equal(known[name], from_masks[name]) for name in known)


def picks(labels) -> list[tuple[list[int], list[int]]]:
    return [(p.selection.candidate_ids.tolist(), p.selection.labels.tolist()) for p in labels]


@pytest.mark.parametrize("trained", [False, True])
def test_a_p_step_draws_with_the_trained_prediction_networks_evidence_given_tags(
    setting, trained: bool
):
    items, bundle, dataset, _ = setting
    items = [dataclasses.replace(item, pseudo_labels=None) for item in items]
    networks = dataclasses.replace(bundle, metadata={"prediction_trained": trained})
    generator = torch.Generator().manual_seed(0)
    evidence = [
        50 * torch.randn((len(item.regions), bundle.num_classes + 1), generator=generator)
        for item in items
    ]
    asked = []

    def class_evidence(image, regions):
        asked.append(len(regions))
        return evidence[len(asked) - 1]

    networks.class_evidence = class_evidence
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    p_step_loss(items, networks, CONFIG, cpu)
    uses_evidence = trained and dataset.supervision == "tags"
    assert asked == ([len(item.regions) for item in items] if uses_evidence else [])
    torch.manual_seed(0)
    for item, item_evidence in zip(items, evidence, strict=True):
        added = item_evidence if uses_evidence else None
        expected = draw_pseudo_labels(item, bundle.conditional, CONFIG.k, True, cpu, added)
        assert picks(item.pseudo_labels) == picks(expected)
    if uses_evidence:  # the evidence decides: without it the samples differ
        torch.manual_seed(0)
        plain = [draw_pseudo_labels(i, bundle.conditional, CONFIG.k, True, cpu) for i in items]
        assert [picks(i.pseudo_labels) for i in items] != [picks(labels) for labels in plain]


def test_y_p_is_a_sample_of_the_prediction_keeping_each_detection_with_its_score(setting):
    items, *_ = setting
    item = items[0]
    scores = torch.tensor([1.0, 0.7, 0.3, 0.08])
    masks = torch.zeros((4, 1, *item.image.shape[:2]))
    for i in range(4):
        masks[i, 0, i : i + 2, i : i + 2] = 0.9

    def prediction(images, proposals):
        assert len(images) == len(proposals) == 1
        assert proposals[0].image_size == tuple(images[0].shape[-2:])
        return [{"scores": scores, "labels": torch.tensor([1, 2, 3, 1]), "masks": masks}]

    torch.manual_seed(0)
    draws = 2000
    kept = torch.zeros(4)
    cpu = torch.device("cpu")
    for _ in range(draws):
        y_p = sample_prediction(prediction, item, 0.1, cpu)
        for label, score in zip(y_p.labels, y_p.scores, strict=True):
            kept[int((scores == score).nonzero())] += 1
            assert int(label) == [1, 2, 3, 1][int((scores == score).nonzero())]
    frequency = kept / draws
    assert frequency[0] == 1 and frequency[3] == 0, "always at score 1, never below min_score"
    assert frequency[1:3].tolist() == pytest.approx([0.7, 0.3], abs=0.04)


def test_the_boundary_prior_is_off_for_boxes_only():
    assert TrainConfig(supervision="boxes").border_prior_weight == 0
    assert TrainConfig(supervision="tags").border_prior_weight == 1


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def test_an_item_keeps_no_more_memory_than_its_own_tensors(setting):
    """A view keeps all of its storage alive: an empty view of the unpacked proposals kept
    their 20 MB in every item."""
    items, *_ = setting
    for item in items:
        tensors = _tensors(item)
        assert tensors
        for tensor in tensors:
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
