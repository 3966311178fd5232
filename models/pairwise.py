"""The boundary-aware pairwise term (DESIGN section 3).

Neighbouring proposals (touching or overlapping) should take similar class scores unless an
image edge separates them: w_uv = exp(-I_uv / σ), I_uv the mean edge strength along their shared
boundary. Scores are refined by a few rounds of s <- (1 - λ) s + λ W s with W the row-normalised
weights: the convex form keeps the scale of the scores, so λ reads as the share of a proposal's
score that comes from its neighbours. A proposal with no neighbour keeps its score.
"""

import torch
from torch import Tensor

from models.descriptors import WorkingCopy, dilate


@torch.no_grad()
def proposal_affinity(copy: WorkingCopy, edge_scale: float) -> Tensor:
    """FloatTensor[P, P]: row-normalised boundary-aware weights (rows of isolated proposals 0)."""
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
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def refine_scores(scores: Tensor, affinity: Tensor, weight: float, rounds: int) -> Tensor:
    """scores: FloatTensor[K, P, C+1]; affinity: FloatTensor[P, P] -> FloatTensor[K, P, C+1]."""
    has_neighbours = (affinity.sum(dim=1) > 0)[None, :, None]
    for _ in range(rounds):
        smoothed = torch.matmul(affinity, scores)  # (K, P, C+1)
        scores = torch.where(has_neighbours, (1 - weight) * scores + weight * smoothed, scores)
    return scores
