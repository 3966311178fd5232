"""`discoseg proposals`: segment proposals of a dataset's images, one `.npz` file per image."""

from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from training.config import TrainConfig
from training.errors import fail, user_errors


def proposals(
    data: Annotated[Path, typer.Option("--data", help="COCO annotation JSON of the images.")],
    images: Annotated[
        Path,
        typer.Option("--images", help="Folder the JSON's image file_name entries are relative to."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write into: OUT/<file_name with .npz> per image (COCO RLE masks, "
            "read back by models.proposal_files.load_proposal_file).",
        ),
    ],
    max_proposals: Annotated[
        int,
        typer.Option(
            "--max-proposals",
            help="Hierarchical proposals per image (box-conditioned ones come on top); the "
            "default is training's.",
        ),
    ] = TrainConfig.max_proposals,
    boxes: Annotated[
        bool,
        typer.Option(
            "--boxes",
            help="Add box-conditioned proposals (rectangle, GrabCut, clipped regions) for the "
            "annotated boxes, as training under boxes supervision uses.",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Write the segment proposals of a dataset's images, one .npz file per image.

    Proposals are computed at each image's full size. Images without a usable
    annotation are skipped (and reported).
    """
    if max_proposals < 0:
        fail(f"--max-proposals must be >= 0, got {max_proposals}")
    if out.exists() and not out.is_dir():
        fail(f"--out must be a folder, {out} is a file")
    from tqdm import tqdm

    from models.proposal_files import save_proposal_file
    from models.proposals import ProposalSettings, propose
    from training.data.coco import CocoDataset

    settings = ProposalSettings(max_proposals=max_proposals)
    with user_errors():
        dataset = CocoDataset(data, images, "boxes" if boxes else "tags")
        for i in tqdm(range(len(dataset)), desc="proposals", unit="image", disable=not progress):
            sample = dataset[i]
            masks = propose(sample.image, sample.boxes, settings=settings)
            path = out / _relative(sample.file_name).with_suffix(".npz")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_proposal_file(path, masks)
    typer.echo(f"wrote proposals of {len(dataset)} images to {out}")


def _relative(file_name: str) -> Path:
    """file_name without a root or `..`, so that every file lands inside OUT."""
    parts = [part for part in PurePosixPath(file_name).parts if part not in ("/", "..")]
    return Path(*parts)
