"""One checkpoint file holding both networks, the class list, the preset, the proposal settings,
a format version and training metadata.

Loading names what is wrong with a bad file: unreadable (corrupt or truncated), not a discoseg
bundle, a format version this code does not read, or weights that do not fit the recorded
architecture.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from models.atomic import atomic_write
from models.conditional import ConditionalConfig, ConditionalNet
from models.prediction import build_prediction_net
from models.proposals import ProposalSettings

FORMAT = "discoseg-bundle"
FORMAT_VERSION = 2
_REQUIRED_KEYS = (
    "format",
    "format_version",
    "classes",
    "preset",
    "conditional_config",
    "proposal_settings",
    "metadata",
    "prediction_state",
    "conditional_state",
)


class BundleError(ValueError):
    """A checkpoint bundle that cannot be loaded; the message says why."""


@dataclass
class ModelBundle:
    """Both networks of a discoseg model and what is needed to use them."""

    classes: list[str]
    preset: str
    prediction: MaskRCNN
    conditional: ConditionalNet
    proposal_settings: ProposalSettings = field(default_factory=ProposalSettings)
    metadata: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "ModelBundle":
        self.prediction.to(device)
        self.conditional.to(device)
        return self


def build_bundle(
    *,
    classes: list[str],
    preset: str,
    conditional_config: ConditionalConfig | None = None,
    proposal_settings: ProposalSettings | None = None,
    backbone_weights: Path | str | None = None,
    metadata: dict | None = None,
) -> ModelBundle:
    """Freshly initialised networks for `classes` (names, class id = position + 1)."""
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be a non-empty list of unique names, got {classes}")
    return ModelBundle(
        classes=list(classes),
        preset=preset,
        prediction=build_prediction_net(
            preset=preset, num_classes=len(classes), backbone_weights=backbone_weights
        ),
        conditional=ConditionalNet(len(classes), conditional_config),
        proposal_settings=proposal_settings or ProposalSettings(),
        metadata=dict(metadata or {}),
    )


def save_bundle(bundle: ModelBundle, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated bundle at `path`."""
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(bundle.classes),
        "preset": bundle.preset,
        "conditional_config": bundle.conditional.config.as_dict(),
        "proposal_settings": bundle.proposal_settings.as_dict(),
        "metadata": bundle.metadata,
        "prediction_state": bundle.prediction.state_dict(),
        "conditional_state": bundle.conditional.state_dict(),
    }
    with atomic_write(path) as file:
        torch.save(checkpoint, file)


def load_bundle(path: Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Read a bundle written by `save_bundle`; networks are returned in eval mode.

    Raises FileNotFoundError for a missing file and BundleError for anything else wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise BundleError(
            f"{path} is not a readable discoseg bundle (corrupt or truncated file): {error}"
        ) from error
    _check_header(checkpoint, path)
    try:
        bundle = build_bundle(
            classes=list(checkpoint["classes"]),
            preset=checkpoint["preset"],
            conditional_config=ConditionalConfig.from_dict(checkpoint["conditional_config"]),
            proposal_settings=ProposalSettings.from_dict(checkpoint["proposal_settings"]),
            metadata=checkpoint["metadata"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{path} has invalid settings: {error}") from error
    _load_state(bundle.prediction, checkpoint["prediction_state"], "prediction", path)
    _load_state(bundle.conditional, checkpoint["conditional_state"], "conditional", path)
    bundle.prediction.eval()
    bundle.conditional.eval()
    return bundle.to(map_location)


def _check_header(checkpoint: object, path: Path) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise BundleError(f"{path} is not a discoseg bundle (no '{FORMAT}' header)")
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {version}; this discoseg reads version "
            f"{FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise BundleError(f"{path} is incomplete: missing {', '.join(missing)}")


def _load_state(module: nn.Module, state: dict, name: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise BundleError(
            f"{path}: the {name} network's weights do not fit its recorded architecture "
            f"({first_line})"
        ) from error


def file_digest(path: Path, length: int = 12) -> str:
    """The first `length` hex digits of the file's SHA-256: a model version for responses."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
