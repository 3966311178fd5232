from pathlib import Path

import pytest
import torch

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
    assert loaded.metadata == {"supervision": "tags", "rounds": 2}
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
