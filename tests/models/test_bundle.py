from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from models.bundle import (
    BundleError,
    build_bundle,
    file_digest,
    load_bundle,
    save_bundle,
)
from models.conditional import ConditionalConfig
from models.proposals import ProposalSettings

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
