"""The boundary-aware pairwise term (docs/design.md, Conditional network).

Neighbouring proposals (touching or overlapping) should take similar class scores unless an
image edge separates them: w_uv = exp(-I_uv / σ), I_uv the mean edge strength along their shared
boundary. Scores are refined by a few rounds of s_u <- s_u + λ mean_v w_uv (s_v - s_u) over the
neighbours v of u: a proposal moves towards its neighbours as far as no edge separates them
(w near 1), and keeps its score across a strong edge (w near 0) or without neighbours. Taking
differences keeps the scale of the scores.
"""

import torch
from torch import Tensor

from models.descriptors import WorkingCopy, dilate


@torch.no_grad()
def proposal_affinity(copy: WorkingCopy, edge_scale: float) -> Tensor:
    """FloatTensor[P, P]: w_uv / (number of neighbours of u); 0 for non-adjacent pairs."""
    inside = (copy.masks > 0).float()
    flat = inside.flatten(1)  # (P, N)
    ring = (dilate(inside) - inside).flatten(1)  # pixels just outside each proposal
    edges = copy.edges.flatten()
    touching = ring @ flat.T  # (P, P): ring pixels of u inside v
    edge_sum = ring @ (flat * edges).T
    overlapping = flat @ flat.T > 0
    # Nested or overlapping proposals share pixels: their boundary is the inner one's contour.
    shared = touching + touching.T
    strength = (edge_sum + edge_sum.T) / shared.clamp(min=1.0)
    adjacent = (shared > 0) | overlapping
    adjacent.fill_diagonal_(False)
    weights = torch.where(adjacent, torch.exp(-strength / edge_scale), torch.zeros(()))
    return weights / adjacent.sum(dim=1, keepdim=True).clamp(min=1)


def refine_scores(scores: Tensor, affinity: Tensor, weight: float, rounds: int) -> Tensor:
    """scores: FloatTensor[K, P, C+1]; affinity: FloatTensor[P, P] -> FloatTensor[K, P, C+1]."""
    pull = affinity.sum(dim=1)[None, :, None]  # (1, P, 1) total weight towards neighbours
    for _ in range(rounds):
        scores = scores + weight * (torch.matmul(affinity, scores) - pull * scores)
    return scores
