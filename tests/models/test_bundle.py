from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from models.annotations import BoxAnnotation, TagAnnotation
from models.bundle import (
    PREDICTION_EVIDENCE_WEIGHT,
    BundleError,
    build_bundle,
    file_digest,
    load_bundle,
    save_bundle,
)
from models.candidates import box_rectangles
from models.conditional import ConditionalConfig
from models.images import as_image_tensor
from models.proposals import ProposalSettings
from models.regions import describe_regions

CONFIG = ConditionalConfig(trunk_widths=(8, 16), hidden_channels=16)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    bundle = build_bundle(
        classes=["disc", "square"],
        preset="tiny",
        conditional_config=CONFIG,
        proposal_settings=ProposalSettings(max_proposals=50),
        metadata={"supervision": "tags", "rounds": 2},
    )
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    save_bundle(bundle, path)
    return path


def test_round_trip_keeps_weights_and_settings(bundle_file: Path) -> None:
    loaded = load_bundle(bundle_file)
    again = load_bundle(bundle_file)
    assert loaded.classes == ["disc", "square"]
    assert loaded.preset == "tiny"
    assert loaded.conditional.config == CONFIG
    assert loaded.proposal_settings == ProposalSettings(max_proposals=50)
    assert loaded.metadata == {
        "supervision": "tags",
        "rounds": 2,
        "prediction_trained": False,
        "initialisation": {"backbone_weights": None, "coco_weights": None},
    }
    assert not loaded.prediction.training and not loaded.conditional.training
    for a, b in zip(
        loaded.prediction.state_dict().values(), again.prediction.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    saved = torch.load(bundle_file, weights_only=True)["conditional_state"]
    for name, value in loaded.conditional.state_dict().items():
        torch.testing.assert_close(value, saved[name])


def test_truncated_file_names_the_problem(bundle_file: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bundle_file.read_bytes()[: bundle_file.stat().st_size // 2])
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(truncated)


def test_garbage_file_names_the_problem(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(garbage)


def test_other_checkpoint_is_not_a_bundle(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(BundleError, match="not a discoseg bundle"):
        load_bundle(other)


def _rewrite(bundle_file: Path, tmp_path: Path, **changes: object) -> Path:
    checkpoint = torch.load(bundle_file, weights_only=True)
    checkpoint.update(changes)
    path = tmp_path / "changed.pt"
    torch.save(checkpoint, path)
    return path


def test_newer_format_version_is_refused(bundle_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(_rewrite(bundle_file, tmp_path, format_version=99))


def test_weights_that_do_not_fit_the_architecture(bundle_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="prediction network's weights do not fit"):
        load_bundle(_rewrite(bundle_file, tmp_path, classes=["a", "b", "c"]))


def test_invalid_settings_are_named(bundle_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="invalid settings"):
        load_bundle(_rewrite(bundle_file, tmp_path, preset="huge"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "absent.pt")


def test_digest_changes_with_content(bundle_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    copy.write_bytes(bundle_file.read_bytes())
    assert file_digest(copy) == file_digest(bundle_file)
    copy.write_bytes(bundle_file.read_bytes() + b"\0")
    assert file_digest(copy) != file_digest(bundle_file)


def test_a_bundle_from_pretrained_weights_records_them_and_loads(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    bundle = build_bundle(
        classes=["disc"],
        preset="tiny",
        conditional_config=CONFIG,
        initialisation={"backbone_weights": str(weights)},
    )
    path = tmp_path / "pretrained.pt"
    save_bundle(bundle, path)
    loaded = load_bundle(path)
    assert loaded.metadata["initialisation"] == {
        "backbone_weights": str(weights),
        "coco_weights": None,
    }
    # the frozen layout of a pretrained start: frozen batch norm, stem and layer1 fixed
    body = loaded.prediction.backbone.body
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad
    trained = bundle.prediction.backbone.body
    torch.testing.assert_close(body.layer2[0].conv1.weight, trained.layer2[0].conv1.weight)


def test_segment_works_at_the_working_size_and_answers_at_the_image_size(
    bundle_file: Path,
) -> None:
    bundle = load_bundle(bundle_file)
    seen = []

    def proposer(image: np.ndarray) -> torch.Tensor:
        seen.append(image.shape)
        masks = torch.zeros((2, *image.shape[:2]), dtype=torch.bool)
        masks[0, 10:60, 20:90] = True
        masks[1, 100:200, 100:250] = True
        return masks

    image = np.random.default_rng(0).integers(0, 256, (300, 600, 3), dtype=np.uint8)
    instances = bundle.segment(image, score_threshold=0.0, proposer=proposer)
    assert seen == [(128, 256, 3)]  # the tiny preset works at 256 px on the longer side
    assert instances.masks.shape[1:] == (300, 600)
    assert len(instances) >= 1 and (instances.scores.diff() <= 0).all()
    assert len(bundle.segment(image, score_threshold=1.0, proposer=proposer)) == 0


def _two_squares(size: int = 96) -> tuple[np.ndarray, torch.Tensor]:
    """An image with two grey squares and three proposals: each square and the background."""
    image = np.full((size, size, 3), 40, dtype=np.uint8)
    masks = torch.zeros((3, size, size), dtype=torch.bool)
    masks[0, 10:40, 10:40] = True
    masks[1, 50:80, 50:80] = True
    masks[2] = ~(masks[0] | masks[1])
    image[masks[0].numpy()] = 200
    image[masks[1].numpy()] = 120
    return image, masks


def test_class_evidence_is_the_prediction_networks_weighted_log_probabilities(
    bundle_file: Path,
) -> None:
    bundle = load_bundle(bundle_file)
    bundle.prediction.train()
    image, masks = _two_squares()
    tensor = as_image_tensor(image)
    evidence = bundle.class_evidence(tensor, describe_regions(tensor, masks))
    assert evidence.shape == (3, bundle.num_classes + 1)
    total = (evidence / PREDICTION_EVIDENCE_WEIGHT).logsumexp(dim=1)
    torch.testing.assert_close(total, torch.zeros(3), atol=1e-5, rtol=0)
    assert bundle.prediction.training  # scored as in evaluation, its mode restored


@pytest.mark.parametrize("favoured", [0, 1])
def test_pseudo_labels_follow_the_prediction_networks_evidence(
    bundle_file: Path, favoured: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the prediction network is sure which object is the tagged class's, the draws that
    take its evidence (the first half) take that object, whatever the untrained conditional
    network prefers."""
    bundle = load_bundle(bundle_file)
    bundle.metadata["prediction_trained"] = True
    image, masks = _two_squares()
    log_probs = torch.full((3, bundle.num_classes + 1), -10.0)
    log_probs[:, 0] = 0.0
    log_probs[favoured] = torch.tensor([-10.0, 0.0, -10.0])
    monkeypatch.setattr(bundle.prediction, "class_log_probs", lambda image, regions: log_probs)
    samples = bundle.pseudo_labels(
        image, masks, TagAnnotation((1,)), 4, torch.Generator().manual_seed(0)
    )
    assert len(samples) == 4
    for sample in samples[:2]:
        assert sample.labels.tolist() == [1]
        assert sample.masks[0].bool().equal(masks[favoured])
    every_instance = replace(bundle.conditional.config.inference, max_instances_per_tag=None)
    alone = bundle.conditional.sample(
        image,
        masks,
        TagAnnotation((1,)),
        4,
        torch.Generator().manual_seed(0),
        inference=every_instance,
    )
    for sample, own in zip(samples[2:], alone[2:], strict=True):  # the other half: its own
        assert sample.masks.equal(own.masks)


@pytest.mark.parametrize("instances_per_tag", [None, 1])
def test_pseudo_labels_name_every_instance_of_a_tagged_class_unless_limited(
    bundle_file: Path, instances_per_tag: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the prediction network finds both squares of the tagged class, the draws that take
    its evidence label both, or one under a limit of one instance per tag."""
    bundle = load_bundle(bundle_file)
    bundle.metadata["prediction_trained"] = True
    image, masks = _two_squares()
    log_probs = torch.tensor([[-10.0, 0.0, -10.0], [-10.0, 0.0, -10.0], [0.0, -10.0, -10.0]])
    monkeypatch.setattr(bundle.prediction, "class_log_probs", lambda image, regions: log_probs)
    samples = bundle.pseudo_labels(
        image,
        masks,
        TagAnnotation((1,)),
        2,
        torch.Generator().manual_seed(0),
        instances_per_tag=instances_per_tag,
    )
    labelled = samples[0].masks.bool()
    if instances_per_tag is None:
        assert samples[0].labels.tolist() == [1, 1]
        assert {tuple(m.nonzero()[0].tolist()) for m in labelled} == {(10, 10), (50, 50)}
    else:
        assert samples[0].labels.tolist() == [1]
        assert labelled[0].equal(masks[0]) or labelled[0].equal(masks[1])


def test_an_untrained_prediction_network_adds_no_evidence(
    bundle_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(bundle_file)
    assert not bundle.prediction_trained

    def refuse(image: torch.Tensor, regions: object) -> torch.Tensor:
        raise AssertionError("an untrained prediction network was asked for evidence")

    monkeypatch.setattr(bundle.prediction, "class_log_probs", refuse)
    image, masks = _two_squares()
    assert len(bundle.pseudo_labels(image, masks, TagAnnotation((1,)), 2)) == 2


def test_pseudo_labels_given_boxes_score_the_proposals_that_fit_them(bundle_file: Path) -> None:
    bundle = load_bundle(bundle_file)
    image, masks = _two_squares()
    boxes = BoxAnnotation(torch.tensor([[5.0, 5.0, 45.0, 45.0]]), torch.tensor([2]))
    window = box_rectangles(boxes, image.shape[:2])[0]
    samples = bundle.pseudo_labels(image, masks[2:], boxes, 4, torch.Generator().manual_seed(0))
    for sample in samples:  # the background proposal does not fit the box: the rectangle joins
        assert sample.labels.tolist() == [2]
        assert not (sample.masks[0] & ~window).any()


def test_pseudo_labels_name_an_invalid_annotation(bundle_file: Path) -> None:
    bundle = load_bundle(bundle_file)
    image, masks = _two_squares()
    with pytest.raises(ValueError, match="class"):
        bundle.pseudo_labels(image, masks, TagAnnotation((7,)), 2)
    outside = BoxAnnotation(torch.tensor([[90.0, 90.0, 200.0, 200.0]]), torch.tensor([1]))
    with pytest.raises(ValueError):
        bundle.pseudo_labels(image, masks, outside, 2)
