"""The conditional network Pr_c(y | x, a; θc) (docs/design.md, Conditional network).

A U-Net trunk runs once per image. For sample k a noise channel z_k joins the trunk features
and a 1x1 conv + ReLU maps them to G_k; every proposal pools G_k by its area-normalised mask,
all K samples in one matmul; the pooled features, concatenated with the proposal's own
descriptors, are scored for C+1 classes by a small MLP (applied after pooling, where the
paper's 1x1 conv to classes commutes with it) and refined by the boundary-aware pairwise term.
Annotation-consistent inference turns each sample's scores into an instance segmentation.

Three choices of ours, for cost and diversity on a CPU: the trunk runs on the image scaled by
`trunk_scale` (features are pooled on a coarser grid anyway), its features are pooled on a grid
of stride `pool_stride` (masks weigh each cell by the share of it they cover), and z_k is
drawn uniform in [-a, a] (a = `noise_amplitude`) on a coarse `noise_grid` and upsampled
bilinearly, so it varies smoothly: i.i.d. per-pixel noise would average out inside any large
proposal.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.annotations import Annotation, BoxAnnotation, TagAnnotation
from models.candidates import Candidates, annotation_candidates, with_box_rectangles
from models.descriptors import (
    DESCRIPTOR_SIZE,
    flip_descriptors,
    objectness_prior,
    proposal_descriptors,
    working_copy,
)
from models.images import as_image_tensor
from models.inference import (
    InferenceConfig,
    consistent_argmax,
    most_frequent,
    tags_respected,
    to_instances,
)
from models.pairwise import proposal_affinity, refine_scores
from models.structures import InstanceSet, any_along
from models.unet import UNet

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ConditionalConfig:
    """Architecture and inference settings of the conditional network."""

    trunk_widths: tuple[int, ...] = (16, 32, 64, 128)
    trunk_scale: float = 0.5
    feature_channels: int = 32
    hidden_channels: int = 128
    pool_stride: int = 4
    noise_grid: int = 8
    # At 1 the trained network's noise moved no pick given tags; at 30 the K samples differ and
    # DISCO from tags trains better (docs/results.md).
    noise_amplitude: float = 30.0
    descriptor_size: int = 64
    objectness_weight: float = 5.0
    # Weight of the boundary prior inside the objectness prior (models.descriptors). Given
    # boxes the box already separates object from background, and objects coloured like the
    # image border lost to background corners of their box: training from boxes sets it to 0.
    border_prior_weight: float = 1.0
    pairwise_weight: float = 0.5
    pairwise_rounds: int = 2
    edge_scale: float = 0.25
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ConditionalConfig":
        values = dict(values)
        values["trunk_widths"] = tuple(values["trunk_widths"])
        values["inference"] = InferenceConfig(**values["inference"])
        values.setdefault("noise_amplitude", 1.0)  # a bundle without the setting drew [-1, 1]
        return cls(**values)


@dataclass(frozen=True)
class ProposalContext:
    """What the network needs of an image's proposals; no parameters involved, so it can be
    computed once per image and cached.

    pooling: FloatTensor[P, h * w], each row a proposal's coverage of the pooling grid, summing
        to 1 (h, w = the image size divided by pool_stride, rounded up).
    descriptors: FloatTensor[P, DESCRIPTOR_SIZE].
    affinity: FloatTensor[P, P] row-normalised pairwise weights.
    """

    pooling: Tensor
    descriptors: Tensor
    affinity: Tensor

    def to(self, device: torch.device | str) -> "ProposalContext":
        return ProposalContext(
            self.pooling.to(device), self.descriptors.to(device), self.affinity.to(device)
        )

    def __len__(self) -> int:
        return int(self.pooling.shape[0])

    def hflip(self, grid: tuple[int, int]) -> "ProposalContext":
        """The context of the same proposals in the horizontally mirrored image; grid: the
        pooling grid (h, w) of the image (pooling_grid)."""
        pooling = self.pooling.reshape(-1, *grid).flip(-1).flatten(1)
        return ProposalContext(pooling, flip_descriptors(self.descriptors), self.affinity)


def pooling_grid(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-image_size[0] // stride), -(-image_size[1] // stride))


@torch.no_grad()
def describe_proposals(
    image: Tensor, proposals: Tensor, config: ConditionalConfig
) -> ProposalContext:
    """image: FloatTensor[3, H, W] in [0, 1]; proposals: BoolTensor[P, H, W]."""
    if proposals.ndim != 3 or proposals.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"proposals must be (P, H, W) with the image's size {tuple(image.shape[-2:])}, "
            f"got {tuple(proposals.shape)}"
        )
    if proposals.shape[0] == 0 or not any_along(proposals.flatten(1), 1).all():
        raise ValueError("proposals must be non-empty masks, at least one")
    grid = pooling_grid(tuple(image.shape[-2:]), config.pool_stride)
    copy = working_copy(image, proposals, work_size=config.descriptor_size)
    # Where the working copy has the pooling grid's size (a 256 px image by default) its masks
    # are the coverage: a second float copy of the proposals took 5% of preparing an image.
    if tuple(copy.masks.shape[-2:]) == grid:
        coverage = copy.masks.flatten(1)
    else:
        coverage = F.interpolate(proposals[:, None].float(), size=grid, mode="area").flatten(1)
    return ProposalContext(
        pooling=coverage / coverage.sum(dim=1, keepdim=True),
        descriptors=proposal_descriptors(copy),
        affinity=proposal_affinity(copy, config.edge_scale),
    )


class ConditionalNet(nn.Module):
    """Scores K noise samples of (proposal, class) pairs; samples consistent outputs."""

    def __init__(self, num_classes: int, config: ConditionalConfig | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config or ConditionalConfig()
        c = self.config
        self.trunk = UNet(3, c.trunk_widths)
        self.noise_projection = nn.Conv2d(c.trunk_widths[0] + 1, c.feature_channels, 1)
        self.descriptor_norm = nn.LayerNorm(DESCRIPTOR_SIZE)
        self.head = nn.Sequential(
            nn.Linear(c.feature_channels + DESCRIPTOR_SIZE, c.hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(c.hidden_channels, c.hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(c.hidden_channels, num_classes + 1),
        )
        # Initial weight of the objectness prior added to every foreground score (learned).
        self.objectness_weight = nn.Parameter(torch.tensor(self.config.objectness_weight))
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN)[:, None, None])
        self.register_buffer("image_std", torch.tensor(IMAGE_STD)[:, None, None])

    def objectness_prior(self, context: ProposalContext) -> Tensor:
        """FloatTensor[P]: the unweighted objectness prior of the proposals."""
        return objectness_prior(context.descriptors, self.config.border_prior_weight)

    def trunk_features(self, image: Tensor, grid: tuple[int, int]) -> Tensor:
        """image: FloatTensor[3, H, W] in [0, 1] -> FloatTensor[C_t, h, w] on the pooling grid."""
        normalised = ((image - self.image_mean) / self.image_std)[None]
        if self.config.trunk_scale != 1:
            normalised = F.interpolate(
                normalised, scale_factor=self.config.trunk_scale, mode="area"
            )
        features = self.trunk(normalised)
        return F.interpolate(features, size=grid, mode="area")[0]

    def draw_noise(
        self, k: int, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        """FloatTensor[K, 1, h, w]: uniform [-a, a] on a coarse grid, upsampled bilinearly."""
        c = self.config
        coarse = torch.rand((k, 1, c.noise_grid, c.noise_grid), generator=generator)
        coarse = (coarse.to(self.image_mean.device) * 2 - 1) * c.noise_amplitude
        return F.interpolate(coarse, size=grid, mode="bilinear", align_corners=True)

    def score(self, features: Tensor, context: ProposalContext, noise: Tensor) -> Tensor:
        """Scores of every proposal and class under each noise sample.

        features: FloatTensor[C_t, h, w]; noise: FloatTensor[K, 1, h, w].
        Returns FloatTensor[K, P, C+1].
        """
        k = noise.shape[0]
        # The 1x1 conv over [features, z_k] is linear: its feature part runs once for all K.
        weight, bias = self.noise_projection.weight, self.noise_projection.bias
        trunk_channels = features.shape[0]
        shared = F.conv2d(features[None], weight[:, :trunk_channels], bias)  # (1, F, h, w)
        sampled = F.relu(shared + F.conv2d(noise, weight[:, trunk_channels:]))  # (K, F, h, w)
        channels = sampled.shape[1]
        pooled = context.pooling @ sampled.flatten(2).permute(2, 0, 1).reshape(-1, k * channels)
        pooled = pooled.reshape(-1, k, channels).transpose(0, 1)  # (K, P, F)
        descriptors = self.descriptor_norm(context.descriptors).expand(k, -1, -1)
        scores = self.head(torch.cat([pooled, descriptors], dim=2))  # (K, P, C+1)
        # An untrained scorer has no notion of a whole object; the prior says which proposals
        # look like one (foreground columns only).
        prior = self.objectness_weight * self.objectness_prior(context)  # (P,)
        foreground = torch.arange(self.num_classes + 1, device=prior.device) > 0
        scores = scores + prior[None, :, None] * foreground  # (K, P, C+1)
        c = self.config
        return refine_scores(scores, context.affinity, c.pairwise_weight, c.pairwise_rounds)

    def forward(
        self,
        image: Tensor,
        context: ProposalContext,
        k: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """image: FloatTensor[3, H, W] in [0, 1] -> FloatTensor[K, P, C+1] scores."""
        grid = pooling_grid(tuple(image.shape[-2:]), self.config.pool_stride)
        features = self.trunk_features(image, grid)
        return self.score(features, context, self.draw_noise(k, grid, generator))

    def candidates(self, proposals: Tensor, annotation: Annotation) -> Candidates:
        return annotation_candidates(proposals, annotation, self.config.inference.box_iou_threshold)

    def consistent_proposals(
        self, proposals: Tensor, annotation: Annotation, image_size: tuple[int, int]
    ) -> Tensor:
        """The proposals `sample` chooses among: given boxes, each box's filled rectangle joins
        them when missing, so that a consistent output always exists. proposals: BoolTensor[P,
        H, W]. Raises ValueError for an annotation invalid for this network or image size."""
        if isinstance(annotation, BoxAnnotation):
            annotation.validate(self.num_classes, image_size)
            return with_box_rectangles(proposals, annotation)
        annotation.validate(self.num_classes)
        return proposals

    @torch.no_grad()
    def sample(
        self,
        image: np.ndarray | Tensor,
        proposals: Tensor,
        annotation: Annotation,
        k: int,
        generator: torch.Generator | None = None,
        draws: int | None = None,
        evidence: Tensor | None = None,
        leading: int = 0,
        inference: InferenceConfig | None = None,
    ) -> list[InstanceSet]:
        """K instance segmentations of the image, each consistent with the annotation: K
        independent draws, or with `draws` (>= k) that many draws and of them the k most
        frequent distinct outputs, the most frequent first (`most_frequent`; fewer when fewer
        differ).

        image: HxWx3 uint8 array or FloatTensor[3, H, W] in [0, 1]; proposals: BoolTensor[P, H,
        W], completed by `consistent_proposals`; evidence: FloatTensor[P', C+1] added to every
        draw's scores, or FloatTensor[D, P', C+1] one per draw, a row per proposal of
        `consistent_proposals` (ModelBundle.pseudo_labels gives the prediction network's);
        leading: with `draws`, the outputs of the first `leading` draws rank first
        (`most_frequent`); inference: the consistent argmax's settings (default: the
        network's). Raises ValueError for an invalid annotation, and for tags that no output
        over the proposals can respect (fewer non-overlapping proposals than tags).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if draws is not None and draws < k:
            raise ValueError(f"draws must be at least k ({k}), got {draws}")
        image = as_image_tensor(image).to(self.image_mean.device)
        proposals = self.consistent_proposals(proposals, annotation, tuple(image.shape[-2:]))
        context = describe_proposals(image.cpu(), proposals.cpu(), self.config)
        scores = self(image, context.to(image.device), draws or k, generator).cpu()
        if evidence is not None:
            if evidence.shape not in (scores.shape, scores.shape[1:]):
                raise ValueError(
                    f"evidence must be {tuple(scores.shape[1:])} (proposals, classes + 1) or "
                    f"{tuple(scores.shape)} (one per draw), got {tuple(evidence.shape)}"
                )
            scores = scores + evidence.cpu()
        candidates = self.candidates(proposals.cpu(), annotation)
        inference = inference or self.config.inference
        selections = [consistent_argmax(s, candidates, annotation, inference) for s in scores]
        if isinstance(annotation, TagAnnotation) and not all(
            tags_respected(s, candidates, annotation, inference.overlap_threshold)
            for s in selections
        ):
            raise ValueError(
                f"the proposals hold no {len(annotation.labels)} regions free of overlap for "
                "the tags"
            )
        kept = most_frequent(selections, k, leading) if draws is not None else range(k)
        return [to_instances(selections[i], candidates, scores[i]) for i in kept]
