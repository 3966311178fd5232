import json
import logging

import numpy as np
import pytest
from PIL import ExifTags, Image

from training.data.coco import CocoDataset, coco_mask_fields, decode_segmentation
from training.data.synthetic import CLASSES, generate_dataset, render_scene


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    train, _ = generate_dataset(out, n=4, size=40, seed=5, val_fraction=0.0)
    return out, train


def test_masks_mode_round_trips_the_scenes(synthetic):
    root, train = synthetic
    dataset = CocoDataset(train, root, "masks")
    assert len(dataset) == 4 and dataset.skipped.total == 0
    assert dataset.classes == CLASSES
    assert dataset.category_to_label == {i: i for i in range(1, len(CLASSES) + 1)}
    for index in range(len(dataset)):
        sample = dataset[index]
        scene = render_scene(np.random.default_rng([5, sample.image_id - 1]), 40)
        assert sample.file_name == f"images/{sample.image_id:06d}.png"
        assert np.array_equal(sample.image, scene.image)
        assert sample.labels.tolist() == scene.labels
        assert np.array_equal(sample.masks, scene.masks)
        assert sample.boxes.shape == (len(scene.labels), 4) and sample.boxes.dtype == np.float32
        ys, xs = np.nonzero(scene.masks[0])
        assert sample.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert sample.tags == frozenset(scene.labels)


def test_supervision_modes_expose_only_what_they_may(synthetic):
    root, train = synthetic
    tags = CocoDataset(train, root, "tags")[0]
    boxes = CocoDataset(train, root, "boxes")[0]
    masks = CocoDataset(train, root, "masks")[0]
    assert tags.labels is None and tags.boxes is None and tags.masks is None
    assert tags.tags == masks.tags and tags.supervision == "tags"
    assert boxes.masks is None
    assert np.array_equal(boxes.boxes, masks.boxes)
    assert np.array_equal(boxes.labels, masks.labels)
    ground_truth = CocoDataset(train, root, "tags").ground_truth(0)
    assert np.array_equal(ground_truth.masks, masks.masks)
    assert np.array_equal(ground_truth.labels, masks.labels)


def test_unknown_supervision_is_rejected(synthetic):
    root, train = synthetic
    with pytest.raises(ValueError, match="supervision"):
        CocoDataset(train, root, "points")


def _png(path, width=20, height=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)


def _annotation(ann_id, image_id, category_id, bbox):
    x, y, w, h = bbox
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "segmentation": [polygon], "area": w * h, "iscrowd": 0}


@pytest.fixture
def messy(tmp_path):
    for name in ("good.png", "no_annotations.png", "unknown_category.png", "box_outside.png"):
        _png(tmp_path / "images" / name)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = [
        {"id": i, "file_name": f"images/{name}.png", "width": 20, "height": 10}
        for i, name in enumerate(
            ["good", "no_annotations", "unknown_category", "missing", "corrupt", "box_outside"],
            start=1,
        )
    ]
    annotations = [
        _annotation(1, 1, 3, [2, 2, 6, 4]),
        _annotation(2, 3, 99, [2, 2, 6, 4]),
        _annotation(3, 4, 3, [2, 2, 6, 4]),
        _annotation(4, 5, 3, [2, 2, 6, 4]),
        _annotation(5, 6, 3, [15, 2, 30, 4]),
        _annotation(6, 6, 7, [1, 1, 4, 4]),
    ]
    categories = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}
    ))
    return path, tmp_path


def test_bad_data_is_reported_and_skipped(messy, caplog):
    path, root = messy
    with caplog.at_level(logging.WARNING):
        dataset = CocoDataset(path, root, "masks")
    assert dataset.image_ids == [1, 6]
    assert dict(dataset.skipped.counts) == {
        "unknown_category": 1, "no_annotations": 2, "missing_image": 1,
        "unreadable_image": 1, "box_outside_image": 1,
    }
    assert dataset.skipped.examples["missing_image"] == ["image 4 (images/missing.png)"]
    assert "annotation 5" in dataset.skipped.examples["box_outside_image"][0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 6" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert dataset.classes == ["dog", "cat"]
    assert dataset.category_to_label == {3: 1, 7: 2}
    good, partly = dataset[0], dataset[1]
    assert good.labels.tolist() == [1]
    assert good.boxes.tolist() == [[2, 2, 8, 6]]
    assert good.masks.shape == (1, 10, 20)
    assert good.masks[0, 2:6, 2:8].all() and good.masks.sum() >= 24
    assert partly.labels.tolist() == [2]


def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """A camera stores a portrait photo as landscape pixels and EXIF orientation 6 (turn a
    quarter clockwise); the COCO entry, like the service and annotation tools, is upright."""
    stored = np.zeros((10, 20, 3), np.uint8)  # stored landscape: red left half, blue right
    stored[:, :10, 0] = stored[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    (tmp_path / "images").mkdir()
    Image.fromarray(stored).save(tmp_path / "images/photo.jpg", exif=exif, quality=95)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "images/photo.jpg", "width": 10, "height": 20}],
        "annotations": [_annotation(1, 1, 1, [2, 12, 6, 6])],
        "categories": [{"id": 1, "name": "dog"}],
    }))
    dataset = CocoDataset(path, tmp_path, "masks")
    assert dataset.skipped.total == 0, dataset.skipped.summary()
    image = dataset[0].image
    assert image.shape == (20, 10, 3)
    top, bottom = image[:10].mean(axis=(0, 1)), image[10:].mean(axis=(0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], "red on top, blue below"
    assert dataset[0].masks.shape == (1, 20, 10)


def test_a_clean_dataset_logs_nothing(synthetic, caplog):
    root, train = synthetic
    with caplog.at_level(logging.WARNING):
        CocoDataset(train, root, "boxes")
    assert not caplog.records


def test_segmentation_formats_decode_to_the_same_mask():
    mask = np.zeros((12, 9), bool)
    mask[3:8, 2:6] = True
    compressed = coco_mask_fields(mask)["segmentation"]
    assert isinstance(compressed["counts"], str)
    # column-major runs: 2 empty columns + 3 rows, then 4 columns of 5 ones and 7 zeros
    uncompressed = {"size": [12, 9], "counts": [27, 5, 7, 5, 7, 5, 7, 5, 40]}
    polygon = [[2, 3, 6, 3, 6, 8, 2, 8]]
    assert np.array_equal(decode_segmentation(compressed, 12, 9), mask)
    assert np.array_equal(decode_segmentation(uncompressed, 12, 9), mask)
    from_polygon = decode_segmentation(polygon, 12, 9)
    assert from_polygon[3:8, 2:6].all() and from_polygon.sum() <= 6 * 7
    with pytest.raises(ValueError, match="unsupported"):
        decode_segmentation("nonsense", 12, 9)


def test_coco_mask_fields_area_and_bbox():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 5:9] = True
    fields = coco_mask_fields(mask)
    assert fields["area"] == 12
    assert fields["bbox"] == [5, 1, 4, 3]


@pytest.mark.parametrize(("data", "missing"), [
    ({"images": [], "annotations": []}, "categories"),
    ({"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [], "categories": []},
     "file_name"),
    ({"images": [], "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}],
      "categories": []}, "category_id"),
    ([1, 2], "not an object"),
])
def test_malformed_json_names_what_is_missing(tmp_path, data, missing):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=missing):
        CocoDataset(path, tmp_path, "tags")


def test_missing_files_raise_file_not_found(tmp_path, synthetic):
    root, train = synthetic
    with pytest.raises(FileNotFoundError):
        CocoDataset(tmp_path / "absent.json", root, "tags")
    with pytest.raises(FileNotFoundError):
        CocoDataset(train, tmp_path / "absent", "tags")
