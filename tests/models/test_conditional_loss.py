import torch

from models.annotations import TagAnnotation
from models.candidates import tag_candidates
from models.conditional_loss import CStepOutputs, c_step_outputs, conditional_loss
from models.inference import InferenceConfig, Selection
from models.structures import InstanceSet


def _disjoint_proposals(count: int, size: int = 16) -> torch.Tensor:
    proposals = torch.zeros((count, size, size * count), dtype=torch.bool)
    for i in range(count):
        proposals[i, :, i * size : (i + 1) * size] = True
    return proposals


def _selection(proposal: int, label: int = 1) -> Selection:
    return Selection(torch.tensor([proposal]), torch.tensor([label]))


def test_surrogate_gradient_moves_scores_as_the_seed_describes() -> None:
    k, gamma = 2, 0.5
    candidates = tag_candidates(_disjoint_proposals(3))
    scores = torch.zeros((k, 3, 2), requires_grad=True)  # (K, P, C+1), one class
    outputs = CStepOutputs(
        samples=[_selection(0)] * k,  # ŷ_c: proposal 0
        augmented=[_selection(1)] * k,  # ŷ_a: proposal 1, far from y_p
        pair_augmented={(0, 1): _selection(2), (1, 0): _selection(2)},  # ŷ_b: proposal 2
    )
    losses = conditional_loss(scores, candidates, outputs, gamma)
    sum(losses.values()).backward()
    grad = scores.grad
    # Descent goes towards ŷ_c (its class score rises), away from ŷ_a (falls) and, through the
    # diversity term, towards ŷ_b (rises): the paper's reading of eq. 12-14.
    torch.testing.assert_close(grad[:, 0, 1], torch.full((k,), -(1 - gamma) / k))
    torch.testing.assert_close(grad[:, 1, 1], torch.full((k,), 1 / k))
    torch.testing.assert_close(grad[:, 2, 1], torch.full((k,), -gamma / k))
    # Scores enter as margins over background, so background moves the opposite way.
    torch.testing.assert_close(grad[:, :, 0], -grad[:, :, 1])


def test_diversity_term_vanishes_with_gamma_zero_and_for_one_sample() -> None:
    candidates = tag_candidates(_disjoint_proposals(3))
    scores = torch.randn((1, 3, 2), requires_grad=True)
    outputs = CStepOutputs([_selection(0)], [_selection(1)], {})
    losses = conditional_loss(scores, candidates, outputs, gamma=0.5)
    assert losses["loss_diversity"].item() == 0
    assert losses["loss_diversity"].grad_fn is not None


def test_outputs_are_consistent_and_loss_vanishes_when_scores_dominate_delta() -> None:
    proposals = _disjoint_proposals(4)
    candidates = tag_candidates(proposals)
    annotation = TagAnnotation((1, 2))
    # Proposal 0 is clearly class 1, proposal 1 clearly class 2, the rest clearly background.
    scores = torch.full((3, 4, 3), -100.0)
    scores[:, :, 0] = 100.0
    scores[:, 0, 1] = scores[:, 1, 2] = 200.0
    scores[:, 0, 0] = scores[:, 1, 0] = 0.0
    prediction = InstanceSet.from_masks(proposals[2:3], torch.tensor([1]))
    outputs = c_step_outputs(scores, candidates, annotation, prediction, InferenceConfig())
    for selection in [*outputs.samples, *outputs.augmented, *outputs.pair_augmented.values()]:
        assert sorted(selection.labels.tolist()) == [1, 2]
        assert sorted(selection.candidate_ids.tolist()) == [0, 1]
    losses = conditional_loss(scores.requires_grad_(), candidates, outputs, gamma=0.5)
    assert all(value.item() == 0 for value in losses.values())
    assert outputs.pair_augmented == {}, "equal samples make no diversity pairs"


def test_only_samples_that_differ_make_diversity_pairs() -> None:
    proposals = _disjoint_proposals(3)
    candidates = tag_candidates(proposals)
    scores = torch.zeros((3, 3, 2))
    scores[:, :, 0] = 1.0
    scores[0, 0, 1] = scores[1, 0, 1] = 3.0  # samples 0 and 1 pick proposal 0
    scores[2, 1, 1] = 3.0  # sample 2 picks proposal 1
    prediction = InstanceSet.from_masks(proposals[0:1], torch.tensor([1]))
    outputs = c_step_outputs(
        scores, candidates, TagAnnotation((1,)), prediction, InferenceConfig()
    )
    assert set(outputs.pair_augmented) == {(0, 2), (2, 0), (1, 2), (2, 1)}


def test_loss_augmentation_moves_towards_high_loss_outputs() -> None:
    proposals = _disjoint_proposals(3)
    candidates = tag_candidates(proposals)
    annotation = TagAnnotation((1,))
    scores = torch.zeros((1, 3, 2))
    scores[0, 0, 1] = 1.0  # proposal 0 is the best class-1 proposal
    scores[0, 1, 1] = 0.5
    scores[0, 2, 1] = -0.5
    scores[0, 1, 0] = scores[0, 2, 0] = 1.0  # and 1, 2 are background
    prediction = InstanceSet.from_masks(proposals[0:1], torch.tensor([1]))
    greedy = InferenceConfig(max_instances_per_tag=None)
    outputs = c_step_outputs(scores, candidates, annotation, prediction, greedy)
    assert outputs.samples[0].candidate_ids.tolist() == [0]
    # Against y_p = proposal 0, choosing anything else costs Δ; loss augmentation adds them.
    assert set(outputs.augmented[0].candidate_ids.tolist()) > {0}
    # With one instance per tag it swaps proposal 0 for the best of the costly ones.
    outputs = c_step_outputs(scores, candidates, annotation, prediction, InferenceConfig())
    assert outputs.samples[0].candidate_ids.tolist() == [0]
    assert outputs.augmented[0].candidate_ids.tolist() == [1]
