import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from training.cli import app
from training.data.glyph_scenes import GLYPH_CLASSES, glyph_mask
from training.data.synthetic import CLASSES, generate_dataset, render_scene
from training.make_data_command import FAMILIES

SIZE = 64


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def scenes(family):
    return [render_scene(np.random.default_rng(seed), SIZE, family) for seed in range(120)]


def test_render_is_deterministic_for_a_seed():
    a = render_scene(np.random.default_rng(7), SIZE)
    b = render_scene(np.random.default_rng(7), SIZE)
    c = render_scene(np.random.default_rng(8), SIZE)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert a.labels == b.labels
    assert not np.array_equal(a.image, c.image)


def test_scene_contract(family, scenes):
    assert len(set(family.classes)) >= 5
    for scene in scenes:
        n = len(scene.labels)
        assert n >= 1
        assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
        assert scene.masks.shape == (n, SIZE, SIZE) and scene.masks.dtype == bool
        assert scene.full_masks.shape == scene.masks.shape
        assert all(1 <= label <= len(family.classes) for label in scene.labels)
        assert scene.masks.reshape(n, -1).any(axis=1).all(), "every instance must be visible"
        assert not (scene.masks & ~scene.full_masks).any()
        assert scene.masks.sum(axis=0).max() <= 1, "visible parts must not overlap"


def test_every_class_appears_and_objects_vary_in_scale(family, scenes):
    labels = {label for scene in scenes for label in scene.labels}
    assert labels == set(range(1, len(family.classes) + 1))
    extents = []
    for scene in scenes:
        for full in scene.full_masks:
            ys, xs = np.nonzero(full)
            extents.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
    assert min(extents) <= SIZE * 0.15
    assert max(extents) >= SIZE * 0.4


def test_occlusion_happens(scenes):
    occluded = sum(
        int((scene.masks.sum(axis=(1, 2)) < scene.full_masks.sum(axis=(1, 2))).sum())
        for scene in scenes
    )
    total = sum(len(scene.labels) for scene in scenes)
    assert occluded >= 0.1 * total


def test_colour_does_not_identify_the_class(family, scenes):
    features, labels = [], []
    for scene in scenes:
        for mask, label in zip(scene.masks, scene.labels, strict=True):
            features.append(scene.image[mask].astype(np.float64).mean(axis=0))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    half = len(labels) // 2
    classes = np.unique(labels[:half])
    centroids = np.stack([features[:half][labels[:half] == c].mean(axis=0) for c in classes])
    distances = np.linalg.norm(features[half:, None] - centroids[None], axis=2)
    accuracy = (classes[distances.argmin(axis=1)] == labels[half:]).mean()
    chance = 1 / len(family.classes)
    assert accuracy < chance + 0.12, f"colour alone gives {accuracy:.2f} accuracy"


def test_generate_dataset_writes_loadable_coco(tmp_path):
    train, val = generate_dataset(tmp_path / "data", n=10, size=48, seed=3, val_fraction=0.2)
    assert train == tmp_path / "data" / "train.json" and val == tmp_path / "data" / "val.json"
    coco_train, coco_val = COCO(str(train)), COCO(str(val))
    assert len(coco_train.getImgIds()) == 8 and len(coco_val.getImgIds()) == 2
    assert [c["id"] for c in coco_train.loadCats(coco_train.getCatIds())] == list(
        range(1, len(CLASSES) + 1)
    )
    assert [c["name"] for c in coco_train.loadCats(coco_train.getCatIds())] == CLASSES
    for coco in (coco_train, coco_val):
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            assert (tmp_path / "data" / info["file_name"]).is_file()
            scene = render_scene(np.random.default_rng([3, image_id - 1]), 48)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert [a["category_id"] for a in annotations] == scene.labels
            for annotation, mask in zip(annotations, scene.masks, strict=True):
                assert isinstance(annotation["segmentation"]["counts"], str)
                assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
                assert annotation["area"] == mask.sum()
                x, y, w, h = annotation["bbox"]
                ys, xs = np.nonzero(mask)
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    ids = [a["id"] for c in (coco_train, coco_val) for a in c.dataset["annotations"]]
    assert len(ids) == len(set(ids))


def test_generate_dataset_is_deterministic(tmp_path):
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, n=3, size=32, seed=11, val_fraction=0.0)
    assert json.loads((tmp_path / "a" / "train.json").read_text()) == json.loads(
        (tmp_path / "b" / "train.json").read_text()
    )
    assert json.loads((tmp_path / "a" / "val.json").read_text())["images"] == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n must be"), ({"n": 2, "val_fraction": 1.0}, "val_fraction"),
])
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, size=32, seed=0, **kwargs)


def test_make_data_cli(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["make-data", str(out), "--n", "4", "--size", "32", "--seed", "1",
              "--val-fraction", "0.25"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((out / "images").glob("*.png"))) == 4
    assert len(json.loads((out / "val.json").read_text())["images"]) == 1
    assert len(json.loads((out / "train.json").read_text())["images"]) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--n", "0"], "--n must be at least 1"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),
    (["--size", "4"], "--size must be at least 16"),
])
def test_make_data_cli_rejects_bad_arguments(tmp_path, args, message):
    result = CliRunner().invoke(app, ["make-data", str(tmp_path / "demo"), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "demo").exists()


def test_make_data_cli_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(app, ["make-data", str(target), "--n", "1"])
    assert result.exit_code == 2
    assert "not a folder" in result.stderr


def test_make_data_help_explains_every_option():
    result = CliRunner().invoke(app, ["make-data", "--help"])
    assert result.exit_code == 0
    for option in ("--n", "--size", "--seed", "--val-fraction"):
        assert option in result.output


def test_make_data_cli_writes_the_family_s_classes(tmp_path):
    result = CliRunner().invoke(
        app, ["make-data", str(tmp_path), "--n", "2", "--size", "48", "--family", "glyphs"]
    )
    assert result.exit_code == 0, result.output
    categories = json.loads((tmp_path / "train.json").read_text())["categories"]
    assert [c["name"] for c in categories] == GLYPH_CLASSES


def test_glyphs_are_non_convex_outlines_except_the_diamond_and_half_disc():
    rng = np.random.default_rng(0)
    for name in GLYPH_CLASSES:
        for _ in range(20):
            mask = glyph_mask(rng, name, 128, 64.0, 64.0, 40.0)
            contours = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )[0]
            assert len(contours) == 1, name
            solidity = mask.sum() / cv2.contourArea(cv2.convexHull(contours[0]))
            assert (solidity < 0.87) == (name in ("arrow", "ell", "tee")), (name, solidity)
