"""The result store: files under settings.job_store, shared by the API and every worker.

    <job_store>/<job id>/spec.json          the job spec, written once at submission
    <job_store>/<job id>/inputs/            uploaded images (COCO jobs read from data_root)
    <job_store>/<job id>/results/<i>.json   image i's outcome: its COCO annotations or its error
    <job_store>/<job id>/categories.json    the model's classes as COCO categories

Every write is atomic (temporary file + rename), so a chunk that runs again after a worker was
lost overwrites its own outcomes whole and readers never see half a file. A chunk still running
when its job is deleted writes nothing more (outcomes go only to a job that has its spec).
Masks never go through Redis or the Celery result backend.
"""

import json
import shutil
from pathlib import Path
from typing import Any

from models.atomic import atomic_write
from service.jobs.record import ImageItem, JobSpec, is_job_id


def write_json_atomic(path: Path, value: Any) -> None:
    with atomic_write(path, "w") as file:
        json.dump(value, file)


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "inputs"

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_job_id(p.name))

    def write_spec(self, spec: JobSpec) -> None:
        write_json_atomic(self.job_dir(spec.job_id) / "spec.json", spec.as_dict())

    def read_spec(self, job_id: str) -> JobSpec | None:
        path = self.job_dir(job_id) / "spec.json"
        if not path.is_file():
            return None
        return JobSpec.from_dict(json.loads(path.read_text()))

    def write_categories(self, job_id: str, classes: list[str]) -> None:
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
        self._write_if_job_exists(job_id, self.job_dir(job_id) / "categories.json", categories)

    def write_labels(
        self, job_id: str, item: ImageItem, size: tuple[int, int], annotations: list[dict]
    ) -> None:
        """Image `item` was labeled; size is (height, width); annotations without ids."""
        height, width = size
        outcome = {
            "image": {"id": item.image_id, "file_name": item.file_name,
                      "height": height, "width": width},
            "annotations": annotations,
        }
        self._write_if_job_exists(job_id, self._outcome_path(job_id, item.index), outcome)

    def write_error(self, job_id: str, item: ImageItem, error: str) -> None:
        outcome = {"image": {"id": item.image_id, "file_name": item.file_name}, "error": error}
        self._write_if_job_exists(job_id, self._outcome_path(job_id, item.index), outcome)

    def outcomes(self, job_id: str) -> dict[int, dict]:
        """Image index -> its recorded outcome, for the images finished so far."""
        folder = self.job_dir(job_id) / "results"
        if not folder.is_dir():
            return {}
        return {
            int(path.stem): json.loads(path.read_text())
            for path in folder.glob("*.json")
            if path.stem.isdigit()
        }

    def coco_result(self, job_id: str) -> dict:
        """The job's labels as a COCO annotation file (RLE masks, a score per annotation);
        images that failed are listed under "errors" instead of "images"."""
        job_dir = self.job_dir(job_id)
        categories_path = job_dir / "categories.json"
        categories = json.loads(categories_path.read_text()) if categories_path.is_file() else []
        images, annotations, errors = [], [], []
        for _, outcome in sorted(self.outcomes(job_id).items()):
            if "error" in outcome:
                errors.append({"image_id": outcome["image"]["id"],
                               "file_name": outcome["image"]["file_name"],
                               "error": outcome["error"]})
                continue
            images.append(outcome["image"])
            for annotation in outcome["annotations"]:
                annotations.append({"id": len(annotations) + 1, **annotation})
        return {
            "info": {"description": "discoseg batch labeling job", "job_id": job_id},
            "images": images,
            "categories": categories,
            "annotations": annotations,
            "errors": errors,
        }

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def delete_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.input_dir(job_id), ignore_errors=True)

    def _write_if_job_exists(self, job_id: str, path: Path, value: Any) -> None:
        if (self.job_dir(job_id) / "spec.json").is_file():
            write_json_atomic(path, value)

    def _outcome_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / "results" / f"{index}.json"
