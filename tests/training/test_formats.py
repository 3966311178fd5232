"""Exports read back by reference readers (pycocotools for COCO, Label Studio's own brush
decoder, datumaro for CVAT XML and VOC PNGs), imports of CSV tables, Label Studio and CVAT
exports and tags-only COCO, and the `export` / `import` commands.

Masks must come back equal; through polygons (which fill holes) with IoU >= 0.95 against the
filled mask. The datumaro checks run with the Python of `.venv-formats` (datumaro's pins
conflict with ours: `make test-integrations` creates it) and skip without it.
"""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage
from typer.testing import CliRunner

from models.proposals import ProposalSettings, propose
from training.cli import app
from training.data.coco import CocoDataset
from training.data.synthetic import CLASSES, render_scene
from training.formats import export_files, import_labels, parse_labels, read_coco, to_coco
from training.formats.cvat import mask_runs, runs_mask, serverless_mask, serverless_mask_pixels
from training.formats.labels import ImageLabels, Instance, LabelSet
from training.formats.labelstudio import decode_brush, encode_brush
from training.formats.polygons import mask_polygons, polygons_mask

ROOT = Path(__file__).resolve().parents[2]
DATUMARO_PYTHON = ROOT / ".venv-formats" / "bin" / "python"
SIZE = 64
runner = CliRunner()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def scene_labels(count: int = 3) -> LabelSet:
    """Synthetic scenes as labels: masks with scores, one box-only instance, one tag."""
    images = []
    for index in range(count):
        scene = render_scene(np.random.default_rng(index), SIZE)
        instances = [
            Instance.from_mask(CLASSES[label - 1], mask, score=round(0.9 - 0.1 * i, 3))
            for i, (mask, label) in enumerate(zip(scene.masks, scene.labels, strict=True))
        ]
        if index == 0:
            instances.append(Instance(CLASSES[0], bbox=(2.0, 3.0, 20.0, 30.0)))
        images.append(ImageLabels(index + 1, f"scene-{index}.png", SIZE, SIZE,
                                  tuple(instances), (CLASSES[1],) if index == 1 else ()))
    return LabelSet(classes=tuple(CLASSES), images=tuple(images))


@pytest.fixture(scope="module")
def labels() -> LabelSet:
    return scene_labels()


def masked(image: ImageLabels) -> list[Instance]:
    return [i for i in image.instances if i.rle is not None]


def write(files: dict[str, bytes], root: Path) -> Path:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


# ---- polygons and mask encodings ----


def test_polygons_give_back_the_filled_mask() -> None:
    worst = 1.0
    for index in range(20):
        for mask in render_scene(np.random.default_rng(index), 96).masks:
            back = polygons_mask(mask_polygons(mask), *mask.shape)
            worst = min(worst, iou(back, ndimage.binary_fill_holes(mask)))
    assert worst >= 0.95


@pytest.mark.parametrize("shape", [(5, 7), (64, 64), (120, 333)])
def test_brush_rle_round_trips_through_label_studio_sdk(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    rectangle = np.zeros(shape, dtype=bool)
    rectangle[shape[0] // 4 :, 1 : shape[1] - 1] = True
    for mask in (rng.random(shape) > 0.5, rectangle, np.zeros(shape, bool), np.ones(shape, bool)):
        pixels = decode_rle(encode_brush(mask)).reshape(*shape, 4)
        assert np.array_equal(pixels, np.repeat(mask[..., None], 4, axis=2) * 255)
        ours = decode_brush(mask2rle(mask.astype(np.uint8) * 255), *shape)
        assert np.array_equal(ours, mask)


def test_cvat_mask_encodings_round_trip() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:10] = True
    mask[12, 25] = True
    runs, box = mask_runs(mask)
    assert box == (4, 3, 22, 10)
    assert np.array_equal(runs_mask(runs, box, 20, 30), mask)
    values = serverless_mask(mask)
    assert values[-4:] == [4, 3, 25, 12] and set(values[:-4]) == {0, 255}
    assert np.array_equal(serverless_mask_pixels(values, 20, 30), mask)


# ---- exports read back ----


def test_coco_export_is_read_back_by_pycocotools(labels: LabelSet, tmp_path: Path) -> None:
    for name, polygons in (("coco", False), ("coco-polygons", True)):
        path = tmp_path / f"{name}.json"
        path.write_bytes(export_files(labels, name)["annotations.json"])
        coco = COCO(str(path))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for image in labels.images:
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image.image_id]))
            shapes = [a for a in annotations if "segmentation" in a]
            assert len(shapes) == len(masked(image))
            for annotation, instance in zip(shapes, masked(image), strict=True):
                assert coco.cats[annotation["category_id"]]["name"] == instance.label
                assert annotation["score"] == instance.score
                back = coco.annToMask(annotation).astype(bool)
                if polygons:
                    assert iou(back, ndimage.binary_fill_holes(instance.mask())) >= 0.95
                else:
                    assert np.array_equal(back, instance.mask())
        tags = [a for a in coco.dataset["annotations"] if "bbox" not in a]
        assert [(a["image_id"], coco.cats[a["category_id"]]["name"]) for a in tags] == [
            (2, CLASSES[1])
        ]


def test_labelstudio_export_decodes_with_label_studio_sdk(labels: LabelSet) -> None:
    tasks = json.loads(export_files(labels, "labelstudio")["tasks.json"])
    assert [t["data"]["image"] for t in tasks] == [i.file_name for i in labels.images]
    for task, image in zip(tasks, labels.images, strict=True):
        (prediction,) = task["predictions"]
        results = prediction["result"]
        assert len(results) == len(masked(image))
        for result, instance in zip(results, masked(image), strict=True):
            assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
            assert result["value"]["brushlabels"] == [instance.label]
            assert (result["original_width"], result["original_height"]) == (SIZE, SIZE)
            pixels = decode_rle(result["value"]["rle"]).reshape(SIZE, SIZE, 4)
            assert np.array_equal(pixels[:, :, 3] > 0, instance.mask())


def datumaro_read(format_name: str, path: Path, tmp_path: Path) -> dict:
    if not DATUMARO_PYTHON.exists():
        pytest.skip("no .venv-formats (make test-integrations creates it): datumaro not here")
    out = tmp_path / f"{format_name}-read.json"
    subprocess.run(
        [str(DATUMARO_PYTHON), str(ROOT / "tests/integrations/datumaro_masks.py"), format_name,
         str(path), str(out)], check=True, timeout=300,
    )
    return json.loads(out.read_text())


def datumaro_mask(entry: dict) -> np.ndarray:
    height, width = entry["shape"]
    flat = np.zeros(height * width, dtype=bool)
    position, inside = 0, False
    for run in entry["rle"]:
        flat[position : position + run] = inside
        position, inside = position + run, not inside
    return flat.reshape(height, width)


def test_cvat_export_is_read_back_by_datumaro(labels: LabelSet, tmp_path: Path) -> None:
    root = write(export_files(labels, "cvat"), tmp_path / "cvat")
    for image in labels.images:  # datumaro's CVAT reader wants the images beside the XML
        (root / "images").mkdir(exist_ok=True)
        Image.new("RGB", (SIZE, SIZE)).save(root / "images" / image.file_name)
    read = datumaro_read("cvat", tmp_path / "cvat" / "annotations.xml", tmp_path)
    assert read["labels"] == list(CLASSES)
    for image in labels.images:
        found = read["items"][Path(image.file_name).stem]["annotations"]
        masks = [a for a in found if a["type"] == "mask"]
        assert [a["label"] for a in masks] == [i.label for i in masked(image)]
        for entry, instance in zip(masks, masked(image), strict=True):
            assert np.array_equal(datumaro_mask(entry), instance.mask())
        boxes = [a["bbox"] for a in found if a["type"] == "bbox"]
        assert boxes == ([[2.0, 3.0, 18.0, 27.0]] if image.image_id == 1 else [])
        assert [a["label"] for a in found if a["type"] == "label"] == list(image.tags)


def test_voc_export_is_read_back_by_datumaro(labels: LabelSet, tmp_path: Path) -> None:
    root = write(export_files(labels, "voc-png"), tmp_path / "voc")
    for image in labels.images:  # datumaro's VOC reader wants the images beside the labels
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (SIZE, SIZE)).save(root / "JPEGImages" / f"{image.stem}.png")
    read = datumaro_read("voc_instance_segmentation", root, tmp_path)
    for image in labels.images:
        found = [a for a in read["items"][image.stem]["annotations"] if a["type"] == "mask"]
        # A VOC pixel holds one instance: compare with each instance's visible part, best on top.
        visible = {}
        taken = np.zeros((SIZE, SIZE), dtype=bool)
        for instance in sorted(masked(image), key=lambda i: -i.score):
            visible[instance.label, instance.score] = instance.mask() & ~taken
            taken |= instance.mask()
        expected = [(label, m) for (label, _), m in visible.items() if m.any()]
        assert sorted((e["label"], int(datumaro_mask(e).sum())) for e in found) == sorted(
            (label, int(m.sum())) for label, m in expected
        )
        for entry in found:
            assert any(np.array_equal(datumaro_mask(entry), m) for _, m in expected)


def test_yolo_segmentation_export_rasterises_back(labels: LabelSet, tmp_path: Path) -> None:
    # datumaro 1.13 reads YOLO detection lines only: the outlines are rasterised here by
    # pycocotools, in the pixel-corner frame that Ultralytics' COCO converter writes them in.
    files = export_files(labels, "yolo-seg")
    assert "names:\n  0: 'disc'" in files["data.yaml"].decode()
    for image in labels.images:
        lines = files[f"labels/{image.stem}.txt"].decode().splitlines()
        assert len(lines) == len(masked(image))
        for line, instance in zip(lines, masked(image), strict=True):
            values = line.split()
            assert CLASSES[int(values[0])] == instance.label
            points = np.array(values[1:], dtype=float).reshape(-1, 2) * [SIZE, SIZE]
            back = polygons_mask([points], SIZE, SIZE)
            assert iou(back, ndimage.binary_fill_holes(instance.mask())) >= 0.95


# ---- imports ----


def test_labelstudio_and_cvat_exports_import_back(labels: LabelSet) -> None:
    tasks = json.loads(export_files(labels, "labelstudio")["tasks.json"])
    for task in tasks:  # an annotator accepted each prediction
        task["annotations"] = [{"result": task.pop("predictions")[0]["result"]}]
    for imported in (parse_labels(json.dumps(tasks).encode(), "labelstudio"),
                     parse_labels(export_files(labels, "cvat")["annotations.xml"], "cvat")):
        for image, back in zip(labels.images, imported.images, strict=True):
            assert back.file_name == image.file_name and (back.width, back.height) == (SIZE, SIZE)
            pairs = zip(masked(back), masked(image), strict=True)
            assert all(np.array_equal(a.mask(), b.mask()) and a.label == b.label for a, b in pairs)


def test_a_csv_of_tags_trains_through_a_tags_only_coco_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rows = ["file,tags"]
    for index in range(3):
        scene = render_scene(np.random.default_rng(index), 48)
        Image.fromarray(scene.image).save(images / f"{index}.png")
        rows.append(f"{index}.png,{';'.join(sorted({CLASSES[i - 1] for i in scene.labels}))}")
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    coco_path = tmp_path / "tags.json"
    result = runner.invoke(app, ["import", str(tmp_path / "tags.csv"), "--from", "csv",
                                 "--images", str(images), "--out", str(coco_path)])
    assert result.exit_code == 0, result.output
    coco = json.loads(coco_path.read_text())
    assert all(set(a) == {"id", "image_id", "category_id", "iscrowd"} for a in coco["annotations"])
    dataset = CocoDataset(coco_path, images, "tags")
    assert len(dataset) == 3 and dataset.skipped.total == 0
    assert dataset[0].tags == {coco["categories"].index(c) + 1 for c in [
        next(c for c in coco["categories"] if c["id"] == a["category_id"])
        for a in coco["annotations"] if a["image_id"] == 1
    ]}
    boxes = CocoDataset(coco_path, images, "boxes")
    assert len(boxes) == 0 and boxes.skipped.counts["missing_box"] == len(coco["annotations"])

    out = tmp_path / "model.pt"
    result = runner.invoke(app, [
        "train", "--data", str(coco_path), "--images", str(images), "--out", str(out),
        "--supervision", "tags", "--k", "2", "--rounds", "0", "--warm-start-epochs", "1",
        "--final-p-epochs", "1", "--image-size", "48", "--max-proposals", "20",
        "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_a_csv_of_boxes_imports_as_boxes(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "boxes.csv").write_text(
        "file,label,x0,y0,x1,y1\na.png,disc,1,2,11,12\na.png,square,5,5,30,25\n"
    )
    imported = import_labels(tmp_path / "boxes.csv", "csv", tmp_path)
    assert imported.classes == ("disc", "square")
    (image,) = imported.images
    assert (image.width, image.height) == (40, 30)
    assert [(i.label, i.bbox) for i in image.instances] == [
        ("disc", (1.0, 2.0, 11.0, 12.0)), ("square", (5.0, 5.0, 30.0, 25.0))
    ]
    assert to_coco(imported)["annotations"][1]["bbox"] == [5.0, 5.0, 25.0, 20.0]


@pytest.mark.parametrize(
    ("content", "source", "message"),
    [
        ("name,tags\na.png,disc\n", "csv", "the CSV header must be"),
        ("file,label,x0,y0,x1,y1\na.png,disc,1,2,x,4\n", "csv", "line 2: x0, y0, x1, y1"),
        ("file,label,x0,y0,x1,y1\na.png,disc,5,2,1,4\n", "csv", "line 2: needs a label"),
        ("file,tags\nmissing.png,disc\n", "csv", "'missing.png' is not in the images folder"),
        ("file,tags\n../a.png,disc\n", "csv", "'../a.png' is not inside the images folder"),
        ("file,tags\nb.txt,disc\n", "csv", "'b.txt' cannot be read as an image"),
        ("file,label,x0,y0,x1,y1\na.png,disc,1,2,nan,4\n", "csv", "line 2: .* must be finite"),
        ("file,label,x0,y0,x1,y1\na.png,disc,1,2,1e999,4\n", "csv", "must be finite"),
        ("{}", "labelstudio", "a JSON list of tasks"),
        ('[{"data": {"image": "a.png"}, "annotations": [{"result": []}]}]', "labelstudio",
         "no result gives the image size"),
        ("<notcvat/>", "cvat", "the root is <notcvat>"),
        ("<annotations", "cvat", "not CVAT XML"),
        ('<annotations><image id="0" name="a.png" width="100000" height="100000"/></annotations>',
         "cvat", r"image a.png: the image is 100000x100000 pixels, more than the 1000000"),
        ('<annotations><image id="0" name="a.png" width="0" height="5"/></annotations>',
         "cvat", "image a.png: the image size 0x5 is not positive"),
        ('[{"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "choices", '
         '"original_width": 5000, "original_height": 5000, "value": {"choices": ["a"]}}]}]}]',
         "labelstudio", "task 0: the image is 5000x5000 pixels"),
        ("[1]", "coco", "a COCO annotation file is a JSON object"),
    ],
)
def test_bad_imports_say_what_is_wrong(tmp_path: Path, content: str, source: str,
                                       message: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("not an image")
    with pytest.raises(ValueError, match=message):
        parse_labels(content.encode(), source, tmp_path, max_pixels=1_000_000)


# ---- the commands ----


def test_export_converts_a_predict_output_with_its_coco_file(
    labels: LabelSet, tmp_path: Path
) -> None:
    coco = to_coco(labels)
    (tmp_path / "data.json").write_text(json.dumps({**coco, "annotations": []}))
    results = [{k: a[k] for k in ("image_id", "category_id", "score", "segmentation", "bbox")}
               for a in coco["annotations"] if "segmentation" in a]
    (tmp_path / "results.json").write_text(json.dumps(results))
    result = runner.invoke(app, ["export", str(tmp_path / "results.json"), "--to", "voc-png",
                                 "--out", str(tmp_path / "voc")])
    assert result.exit_code == 2 and "give the COCO file its ids refer to" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "results.json"), "--to", "voc-png",
                                 "--data", str(tmp_path / "data.json"),
                                 "--out", str(tmp_path / "voc")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "voc/SegmentationObject").iterdir()) == [
        "scene-0.png", "scene-1.png", "scene-2.png"
    ]
    result = runner.invoke(app, ["export", str(tmp_path / "results.json"), "--to", "cvat",
                                 "--data", str(tmp_path / "data.json"),
                                 "--out", str(tmp_path / "out.xml")])
    assert result.exit_code == 0, result.output
    back = parse_labels((tmp_path / "out.xml").read_bytes(), "cvat")
    assert sum(len(i.instances) for i in back.images) == len(results)
    assert read_coco(tmp_path / "results.json", tmp_path / "data.json").classes == tuple(CLASSES)


def test_export_refuses_an_unknown_format_or_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("not json")
    result = runner.invoke(app, ["export", str(tmp_path / "x.json"), "--to", "tiff",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--to must be one of coco, coco-polygons" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "x.json"), "--to", "coco",
                                 "--out", str(tmp_path / "o.json")])
    assert result.exit_code == 2 and "is not JSON" in result.output


# ---- beside Label Studio's SDK ----


def test_proposals_work_beside_label_studio_sdk() -> None:
    """The SDK brings plain OpenCV (opencv-python), whose cv2 replaces the headless one's:
    proposals need nothing that either lacks."""
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert {"label-studio-sdk", "opencv-python", "opencv-python-headless"} <= installed
    assert "label_studio_sdk" in sys.modules
    image = render_scene(np.random.default_rng(0), 64).image
    proposals = propose(image, np.array([[4.0, 4.0, 40.0, 40.0]]),
                        settings=ProposalSettings(max_proposals=20, work_size=64))
    assert proposals.shape[1:] == (64, 64) and len(proposals) > 5
