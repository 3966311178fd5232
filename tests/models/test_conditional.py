"""The conditional network (docs/design.md, Conditional network): its samples are consistent with
the annotation, reproducible for a seed, driven by the noise, and cost one trunk pass for K samples;
and the boundary-aware pairwise refinement."""

import collections
import dataclasses
import functools

import cv2
import numpy as np
import pytest
import torch
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from models.annotations import BoxAnnotation, TagAnnotation
from models.conditional import (
    ConditionalConfig,
    ConditionalNet,
    describe_proposals,
    pooling_grid,
)
from models.descriptors import (
    BORDER_COLOUR_COLUMN,
    border_colour_likeness,
    dilate,
    erode,
    objectness_prior,
    proposal_descriptors,
    working_copy,
)
from models.images import as_image_tensor
from models.pairwise import proposal_affinity, refine_scores
from tests.models.cases import twin_discs
from tests.models.strategies import (
    NUM_CLASSES,
    assert_box_consistent,
    assert_tag_consistent,
    box_annotations,
    disjoint_tiles,
    has_disjoint_subset,
    masks_near_boxes,
    proposal_masks,
    tag_output_exists,
    tag_sets,
    usually,
)

SIZE = (32, 32)
K = 3
CONFIG = ConditionalConfig(trunk_widths=(8, 16), descriptor_size=32)
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)


@functools.cache
def untrained_net() -> ConditionalNet:
    torch.manual_seed(0)
    return ConditionalNet(NUM_CLASSES, CONFIG).eval()


@pytest.fixture
def net() -> ConditionalNet:
    return untrained_net()


def random_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def tile_proposals() -> torch.Tensor:
    """Four horizontal strips and two larger blocks over them."""
    proposals = torch.zeros((6, *SIZE), dtype=torch.bool)
    for i in range(4):
        proposals[i, 8 * i : 8 * i + 8, 4:28] = True
    proposals[4, 0:16, 0:32] = True
    proposals[5, 12:30, 2:20] = True
    return proposals


@SETTINGS
@given(data=st.data())
def test_tag_samples_are_consistent(data):
    net = untrained_net()
    image = random_image(data.draw(st.integers(0, 2**16), label="image seed"))
    tags = data.draw(tag_sets())
    proposals = data.draw(proposal_masks(SIZE, min_size=1, max_size=6))
    if data.draw(usually, label="with tiles"):
        proposals = torch.cat([proposals, data.draw(disjoint_tiles(SIZE, len(tags.labels)))])
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    try:
        samples = net.sample(image, proposals, tags, K, generator=generator)
    except ValueError:
        assert not has_disjoint_subset(proposals, len(tags.labels)), (
            f"sampling failed although {len(tags.labels)} proposals are pairwise disjoint"
        )
        overlap_threshold = CONFIG.inference.overlap_threshold
        assert not tag_output_exists(proposals, len(tags.labels), overlap_threshold), (
            "sampling failed although a consistent output exists"
        )
        event("no consistent output (none exists)")
        return
    event("consistent output")
    assert len(samples) == K
    for sample in samples:
        assert_tag_consistent(sample, tags, CONFIG.inference.overlap_threshold)


@SETTINGS
@given(data=st.data())
def test_box_samples_are_consistent(data):
    net = untrained_net()
    image = random_image(data.draw(st.integers(0, 2**16), label="image seed"))
    boxes = data.draw(box_annotations(SIZE))
    proposals = data.draw(proposal_masks(SIZE, min_size=1, max_size=5))
    proposals = torch.cat([proposals, data.draw(masks_near_boxes(boxes, SIZE))])
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    samples = net.sample(image, proposals, boxes, K, generator=generator)
    assert len(samples) == K
    for sample in samples:
        assert_box_consistent(sample, boxes, CONFIG.inference.box_iou_threshold)


def test_samples_of_many_draws_are_the_most_frequent_distinct_outputs(net):
    (image, proposals), tags = twin_discs(), TagAnnotation((1,))
    draws = net.sample(image, proposals, tags, 40, generator=torch.Generator().manual_seed(3))
    samples = net.sample(
        image, proposals, tags, 4, generator=torch.Generator().manual_seed(3), draws=40
    )
    counts = collections.Counter(_output_key(s) for s in draws)
    assert len(counts) > 1, "the draws must differ for the ranking to be tested"
    assert [_output_key(s) for s in samples] == [key for key, _ in counts.most_common(4)]
    with pytest.raises(ValueError, match="draws"):
        net.sample(image, proposals, tags, 4, draws=3)


def _output_key(sample):
    return tuple(sorted(zip(sample.proposal_ids.tolist(), sample.labels.tolist(), strict=True)))


def test_same_seed_gives_the_same_samples(net):
    image, proposals, tags = random_image(1), tile_proposals(), TagAnnotation((1, 3))
    first = net.sample(image, proposals, tags, K, generator=torch.Generator().manual_seed(5))
    again = net.sample(image, proposals, tags, K, generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.masks, b.masks)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.proposal_ids, b.proposal_ids)
        assert torch.equal(a.scores, b.scores)


def test_noise_reaches_the_scores(net):
    image = as_image_tensor(random_image(2))
    context = describe_proposals(image, tile_proposals(), CONFIG)
    with torch.no_grad():
        scores = net(image, context, K, generator=torch.Generator().manual_seed(0))
        same = net(image, context, K, generator=torch.Generator().manual_seed(0))
        other = net(image, context, K, generator=torch.Generator().manual_seed(1))
    assert scores.shape == (K, len(tile_proposals()), NUM_CLASSES + 1)
    assert torch.equal(scores, same)
    assert not torch.allclose(scores, other)
    # Samples of one call differ from each other, for every proposal.
    for k in range(1, K):
        assert (scores[k] - scores[0]).abs().amax(dim=1).min() > 0


def test_noise_moves_the_picks_between_two_equally_right_answers(net):
    # Given the twins' tag, the default noise (the net's config keeps the default amplitude)
    # sends some samples to each disc: the samples differ in their picks, not only in their
    # scores. Each disc takes 8 to 24 of the 32 samples over six networks and three seeds.
    assert net.config.noise_amplitude == ConditionalConfig().noise_amplitude
    image, proposals = twin_discs()
    generator = torch.Generator().manual_seed(0)
    samples = net.sample(image, proposals, TagAnnotation((1,)), 32, generator=generator)
    picks = [int(sample.proposal_ids[0]) for sample in samples]
    assert picks.count(0) >= 4 and picks.count(1) >= 4, f"picks of the 32 samples: {picks}"


def test_noise_amplitude_scales_the_noise(net):
    image = as_image_tensor(random_image(2))
    context = describe_proposals(image, tile_proposals(), CONFIG)
    grid = (8, 8)
    unit = ConditionalNet(NUM_CLASSES, dataclasses.replace(CONFIG, noise_amplitude=1.0))
    louder = ConditionalNet(NUM_CLASSES, dataclasses.replace(CONFIG, noise_amplitude=30.0))
    unit_noise = unit.draw_noise(K, grid, torch.Generator().manual_seed(0))
    assert unit_noise.abs().max() <= 1
    louder_noise = louder.draw_noise(K, grid, torch.Generator().manual_seed(0))
    assert torch.allclose(louder_noise, unit_noise * 30)
    silent = ConditionalNet(NUM_CLASSES, dataclasses.replace(CONFIG, noise_amplitude=0.0))
    silent.load_state_dict(net.state_dict())
    with torch.no_grad():
        scores = silent.eval()(image, context, K, generator=torch.Generator().manual_seed(0))
    assert torch.equal(scores, scores[:1].expand_as(scores))


def test_k_samples_cost_one_trunk_pass(net):
    calls = []
    handle = net.trunk.register_forward_hook(lambda *_: calls.append(1))
    try:
        samples = net.sample(random_image(3), tile_proposals(), TagAnnotation((2,)), 5)
    finally:
        handle.remove()
    assert len(samples) == 5
    assert len(calls) == 1


def test_sample_rejects_bad_input(net):
    proposals = tile_proposals()
    with pytest.raises(ValueError, match="k must be at least 1"):
        net.sample(random_image(0), proposals, TagAnnotation((1,)), 0)
    with pytest.raises(ValueError, match="unknown class"):
        net.sample(random_image(0), proposals, TagAnnotation((NUM_CLASSES + 1,)), 1)
    outside = BoxAnnotation(torch.tensor([[0.0, 0.0, 40.0, 10.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="outside"):
        net.sample(random_image(0), proposals, outside, 1)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        net.sample(random_image(0)[..., :2], proposals, TagAnnotation((1,)), 1)
    evidence = torch.zeros((len(proposals) + 1, NUM_CLASSES + 1))
    with pytest.raises(ValueError, match="evidence must be"):
        net.sample(random_image(0), proposals, TagAnnotation((1,)), 1, evidence=evidence)


# The boundary prior.


def test_proposal_context_mirrors_with_the_image() -> None:
    config = ConditionalConfig()
    # not square, so that the pooling grid's sides cannot be swapped unnoticed
    image, proposals = as_image_tensor(random_image(3))[:, :, :24], tile_proposals()[:, :, :24]
    grid = pooling_grid((32, 24), config.pool_stride)
    mirrored = describe_proposals(image, proposals, config).hflip(grid)
    direct = describe_proposals(image.flip(-1), proposals.flip(-1), config)
    torch.testing.assert_close(mirrored.pooling, direct.pooling)
    torch.testing.assert_close(mirrored.descriptors, direct.descriptors, atol=1e-4, rtol=1e-4)


def test_border_colours_mark_background_and_lower_the_objectness_prior():
    # A grey background with a red square in the middle and a grey patch beside it: the patch
    # has the border's colour, the square does not.
    image = torch.full((3, 32, 32), 0.5)
    image[:, 12:20, 12:20] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    likeness = border_colour_likeness(image)
    assert likeness[16, 16] == 0 and likeness[0, 0] == 1 and likeness[16, 4] == 1
    proposals = torch.zeros((2, 32, 32), dtype=torch.bool)
    proposals[0, 12:20, 12:20] = True  # the square
    proposals[1, 12:20, 2:10] = True  # background beside it
    descriptors = proposal_descriptors(working_copy(image, proposals, work_size=32))
    assert descriptors[0, BORDER_COLOUR_COLUMN] == 0
    assert descriptors[1, BORDER_COLOUR_COLUMN] == 1
    assert objectness_prior(descriptors)[0] > objectness_prior(descriptors)[1]
    without_border = objectness_prior(descriptors, border_weight=0)
    assert without_border[1] - objectness_prior(descriptors)[1] == pytest.approx(1)
    assert without_border[0] == objectness_prior(descriptors)[0]


def test_border_colour_likeness_scales_with_the_colour_share_on_the_border():
    # Half of the border strip is black, half white; a rare third colour sits inside.
    image = torch.zeros((3, 64, 64))
    image[:, :, 32:] = 1.0
    image[:, 30:34, 30:34] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    likeness = border_colour_likeness(image)
    assert likeness[0, 0] == 1 and likeness[0, 63] == 1 and likeness[31, 31] == 0


# The pairwise term.


def affinity(image: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
    copy = working_copy(image, proposals, work_size=CONFIG.descriptor_size)
    return proposal_affinity(copy, CONFIG.edge_scale)


def columns(*bounds: tuple[int, int], size: int = 16) -> torch.Tensor:
    """BoolTensor[len(bounds), size, size]: proposals that are vertical bands of columns."""
    proposals = torch.zeros((len(bounds), size, size), dtype=torch.bool)
    for i, (x0, x1) in enumerate(bounds):
        proposals[i, :, x0:x1] = True
    return proposals


def test_refine_scores_keeps_shapes_and_leaves_isolated_proposals_alone():
    image = torch.full((3, 16, 16), 0.5)
    proposals = columns((0, 4), (4, 8), (12, 16))  # 0 and 1 touch; 2 has no neighbour
    weights = affinity(image, proposals)
    assert weights.shape == (3, 3)
    scores = torch.randn(K, 3, NUM_CLASSES + 1, generator=torch.Generator().manual_seed(0))
    refined = refine_scores(scores, weights, weight=0.5, rounds=2)
    assert refined.shape == scores.shape
    assert torch.equal(refined[:, 2], scores[:, 2])
    before = (scores[:, 0] - scores[:, 1]).abs()
    after = (refined[:, 0] - refined[:, 1]).abs()
    assert (after < before).all()
    assert torch.allclose(refined[:, :2].mean(dim=1), scores[:, :2].mean(dim=1), atol=1e-5)


def test_an_edge_between_proposals_weakens_their_weight_within_one_image():
    # Dark columns 0-10 and a bright band 11-15: proposal 1 touches 0 inside the dark region
    # and 2 across the edge.
    image = torch.zeros((3, 16, 16))
    image[:, :, 11:] = 1.0
    weights = affinity(image, columns((0, 6), (6, 11), (11, 16)))
    assert weights[1, 0] > weights[1, 2]
    scores = torch.zeros((1, 3, 2))
    scores[0, 0, 1], scores[0, 2, 1] = 1.0, -1.0
    refined = refine_scores(scores, weights, weight=0.5, rounds=1)
    assert refined[0, 1, 1] > 0, "proposal 1 should follow its neighbour without an edge"


def test_an_edge_between_two_proposals_weakens_their_weight():
    # The same two touching halves, in a uniform image and with a strong edge between them.
    proposals = columns((0, 8), (8, 16))
    uniform = torch.full((3, 16, 16), 0.5)
    edged = torch.zeros((3, 16, 16))
    edged[:, :, 8:] = 1.0
    without_edge = affinity(uniform, proposals)[0, 1]
    with_edge = affinity(edged, proposals)[0, 1]
    assert without_edge > with_edge


def test_a_config_from_before_the_noise_amplitude_keeps_its_noise():
    values = CONFIG.as_dict()
    del values["noise_amplitude"]
    assert ConditionalConfig.from_dict(values).noise_amplitude == 1.0
    assert ConditionalConfig.from_dict(CONFIG.as_dict()) == CONFIG


@pytest.mark.parametrize("radius", [1, 2])
def test_dilation_and_erosion_are_opencvs_with_a_square(radius):
    # OpenCV's erosion counts pixels beyond the border as set, as ours does
    masks = torch.rand((4, 19, 23)) < 0.2
    masks[0, :3] = True  # touching the border
    masks[1] = False
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    for mask, grown, shrunk in zip(
        masks, dilate(masks.float(), radius), erode(masks.float(), radius), strict=True
    ):
        plain = mask.numpy().astype(np.uint8)
        assert np.array_equal(grown.numpy(), cv2.dilate(plain, kernel))
        assert np.array_equal(shrunk.numpy(), cv2.erode(plain, kernel))
