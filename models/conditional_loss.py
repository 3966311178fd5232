"""The C-step surrogate loss (docs/design.md, C-step): the paper's Algorithm 1, ε = +1.

For each sample k: ŷ_c^k = argmax S^k, ŷ_a^k = the loss-augmented argmax of S^k against the
prediction network's output y_p, and for every other sample k' ŷ_b^{k,k'} = the loss-augmented
argmax of S^k against ŷ_c^{k'}. The surrogate

    L_c = 1/K Σ_k [S^k(ŷ_a^k) - S^k(ŷ_c^k)]
          - γ/(K(K-1)) Σ_{k != k'} [S^k(ŷ_b^{k,k'}) - S^k(ŷ_c^k)]

has the direct loss minimisation gradient of the paper's eq. 12-14: descending it moves sample k
towards ŷ_c^k and away from ŷ_a^k (agreement with the prediction network), and towards ŷ_b^{k,k'}
(diversity between samples). Only the scores carry gradients; the outputs are constants.

One departure: a pair of samples that agree (ŷ_c^k = ŷ_c^{k'}) adds nothing to the diversity
term. A network whose noise moves no pick gives K equal samples, and their pair terms all step
away from the common output alike: that flattens the scores without making the samples differ
(given tags, top-1 IoU on val fell from 0.63 to 0.45 in two C-steps; bench/noise_effect.py).
Pairs that differ keep the paper's term, so diversity the noise does produce is rewarded.
"""

from dataclasses import dataclass

from torch import Tensor

from models.annotations import Annotation
from models.candidates import Candidates
from models.inference import (
    InferenceConfig,
    Selection,
    candidate_margins,
    consistent_argmax,
    delta_augmentation,
    selection_score,
)
from models.structures import InstanceSet


@dataclass(frozen=True)
class CStepOutputs:
    """The discrete outputs of Algorithm 1 for one image.

    samples[k] = ŷ_c^k; augmented[k] = ŷ_a^k; pair_augmented[(k, k')] = ŷ_b^{k,k'}, for the
    ordered pairs whose samples differ.
    """

    samples: list[Selection]
    augmented: list[Selection]
    pair_augmented: dict[tuple[int, int], Selection]


def c_step_outputs(
    scores: Tensor,
    candidates: Candidates,
    annotation: Annotation,
    prediction: InstanceSet,
    config: InferenceConfig,
) -> CStepOutputs:
    """Statements 1-7 of Algorithm 1. scores: FloatTensor[K, P, C+1]; prediction: y_p."""
    num_classes = scores.shape[-1] - 1

    def argmax(k: int, augmentation: Tensor | None = None) -> Selection:
        return consistent_argmax(scores[k], candidates, annotation, config, augmentation)

    k_range = range(scores.shape[0])
    samples = [argmax(k) for k in k_range]
    towards_prediction = delta_augmentation(candidates, prediction, num_classes)
    towards_sample = [delta_augmentation(candidates, y, num_classes) for y in samples]
    return CStepOutputs(
        samples=samples,
        augmented=[argmax(k, towards_prediction) for k in k_range],
        pair_augmented={
            (k, other): argmax(k, towards_sample[other])
            for k in k_range
            for other in k_range
            if other != k and not same_output(samples[k], samples[other])
        },
    )


def same_output(a: Selection, b: Selection) -> bool:
    """Whether two selections are the same set of (candidate, class) pairs."""
    pairs = [set(zip(s.candidate_ids.tolist(), s.labels.tolist(), strict=True)) for s in (a, b)]
    return pairs[0] == pairs[1]


def conditional_loss(
    scores: Tensor, candidates: Candidates, outputs: CStepOutputs, gamma: float
) -> dict[str, Tensor]:
    """The C-step surrogate as named terms; their sum is L_c.

    scores: FloatTensor[K, P, C+1] with gradients. Returns `loss_agreement` (the DIV(Pr_p, Pr_c)
    term) and `loss_diversity` (-γ times the DIV(Pr_c, Pr_c) term; 0 for K = 1).
    """
    k = scores.shape[0]
    margins = [candidate_margins(scores[i], candidates) for i in range(k)]
    sample_scores = [selection_score(margins[i], outputs.samples[i]) for i in range(k)]
    agreement = sum(
        selection_score(margins[i], outputs.augmented[i]) - sample_scores[i] for i in range(k)
    ) / k
    # The paper's eq. 6 averages over ordered pairs with 1/(K(K-1)); its Algorithm 1 writes
    # 2/(K(K-1)), the same average over unordered pairs, each of which the ordered sum counts
    # twice (Δ is symmetric). Pairs of equal samples are absent and count as 0.
    pair_sum = sum(
        (
            selection_score(margins[i], selection) - sample_scores[i]
            for (i, _), selection in outputs.pair_augmented.items()
        ),
        scores.sum() * 0,
    )
    diversity = -gamma * pair_sum / (k * (k - 1)) if k > 1 else scores.sum() * 0
    return {"loss_agreement": agreement, "loss_diversity": diversity}
