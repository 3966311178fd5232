import dataclasses
import inspect
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.bundle import build_bundle, load_bundle, save_bundle
from models.conditional import ConditionalConfig
from models.inference import InferenceConfig
from models.proposal_files import load_proposal_file
from training.cli import app
from training.config import TrainConfig
from training.data.synthetic import CLASSES, generate_dataset
from training.run import conditional_config_for
from training.train_command import train_command
from training.trainer import log_path, state_path

runner = CliRunner()
SIZE = 48




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 training images (ids 1-3) and 2 validation images (ids 4, 5)."""
    root = tmp_path_factory.mktemp("data")
    train_json, val_json = generate_dataset(root, n=5, size=SIZE, seed=1, val_fraction=0.4)
    return root, train_json, val_json


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained bundle: its Mask R-CNN still outputs scored detections."""
    torch.manual_seed(0)
    bundle = build_bundle(
        classes=list(CLASSES),
        preset="tiny",
        conditional_config=ConditionalConfig(trunk_widths=(8, 16), hidden_channels=16),
    )
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_bundle(bundle, path)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def test_train_options_are_the_train_config_fields_with_its_defaults():
    parameters = inspect.signature(train_command).parameters
    for field in dataclasses.fields(TrainConfig):
        assert field.name in parameters, f"no option for TrainConfig.{field.name}"
        assert parameters[field.name].default == field.default, field.name
    for name, parameter in parameters.items():
        option = parameter.annotation.__metadata__[0]
        assert option.help and len(option.help) > 10, f"--{name} is not explained"
    help_text = ok("train", "--help").output
    assert "torchrun" in help_text
    for name in ("--warm-start-epochs", "--lr-prediction", "--backbone-weights", "--no-progress"):
        assert name in help_text


def test_the_conditional_settings_derive_from_the_train_config():
    assert conditional_config_for(TrainConfig()) == ConditionalConfig(), "tags: the defaults"
    derived = conditional_config_for(
        TrainConfig(supervision="boxes", noise_amplitude=3, max_instances_per_tag=0)
    )
    assert derived.border_prior_weight == 0 and derived.noise_amplitude == 3
    assert derived.inference == InferenceConfig(max_instances_per_tag=None)


def test_train_writes_a_bundle_log_and_state_and_refuses_a_changed_resume(data, tmp_path):
    root, train_json, _ = data
    out = tmp_path / "model.pt"
    log_path(out).write_text('{"event": "from an older run"}\n')
    args = [
        "train", "--data", train_json, "--images", root, "--out", out, "--supervision", "boxes",
        "--k", 2, "--rounds", 0, "--warm-start-epochs", 1, "--final-p-epochs", 1,
        "--image-size", SIZE, "--max-proposals", 20, "--device", "cpu", "--no-progress",
        "--cache-dir", tmp_path / "cache", "--max-instances-per-tag", 0,
        "--noise-amplitude", 20,
    ]
    assert str(out) in ok(*args).output

    bundle = load_bundle(out)
    assert bundle.classes == list(CLASSES)
    assert bundle.metadata["training"]["supervision"] == "boxes"
    assert bundle.metadata["training"]["k"] == 2
    assert bundle.conditional.config.inference.max_instances_per_tag is None
    assert bundle.conditional.config.border_prior_weight == 0, "boxes train without it"
    assert bundle.conditional.config.noise_amplitude == 20
    assert state_path(out).is_file()
    records = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert [r["phase"] for r in records if r["event"] == "phase_end"] == ["warm_start", "p_step"]
    assert all(r["event"] in ("step", "phase_end") for r in records), "the old log must go"

    result = invoke(*args, "--resume", "--gamma", 0.25)
    assert_usage_error(result, "cannot resume")
    result = invoke(*args, "--resume", "--max-instances-per-tag", 2)
    assert_usage_error(result, "cannot resume")
    result = invoke(*args, "--resume", "--noise-amplitude", 1)
    assert_usage_error(result, "cannot resume")


def test_predict_writes_coco_results_that_evaluate_accepts(data, model, tmp_path):
    root, _, val_json = data
    val_images = [root / "images/000004.png", root / "images/000005.png"]
    results_path = tmp_path / "results.json"
    ok("predict", "--model", model, *val_images, "--out", results_path, "--data", val_json,
       "--score-threshold", 0.1, "--device", "cpu", "--no-progress")
    results = json.loads(results_path.read_text())
    assert results, "an untrained Mask R-CNN still outputs detections above 0.1"
    for r in results:
        assert set(r) == {"image_id", "category_id", "score", "segmentation", "bbox"}
        assert r["image_id"] in (4, 5) and 1 <= r["category_id"] <= len(CLASSES)
        assert r["score"] >= 0.1
        assert r["segmentation"]["size"] == [SIZE, SIZE]
        assert isinstance(r["segmentation"]["counts"], str)
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE

    metrics_path = tmp_path / "metrics.json"
    result = ok("evaluate", "--data", val_json, "--results", results_path, "--out", metrics_path)
    assert "mean" in result.output and "AP@0.5" in result.output
    metrics = json.loads(metrics_path.read_text())
    expected = {"mAP_r@0.25", "mAP_r@0.5", "mAP_r@0.75", "ABO", "per_class",
                "coco_mask_AP", "coco_mask_AP50", "coco_mask_AP75"}
    assert expected <= set(metrics)
    assert 0 <= metrics["ABO"] <= 1 and set(metrics["per_class"]) <= set(CLASSES)


def test_predict_image_ids_and_file_names(data, model, tmp_path):
    """Without --data a COCO file of the images as given, ids 1..n in argument order, and the
    model's classes; with it, results whose ids are those of the image whose file_name the path
    ends with or, failing that, of the one with the same base name."""
    root, _, val_json = data
    elsewhere = tmp_path / "copies"
    elsewhere.mkdir()
    shutil.copy(root / "images/000005.png", elsewhere / "000005.png")
    common = ["--score-threshold", 0.1, "--device", "cpu", "--no-progress"]
    ok("predict", "--model", model, root / "images/000005.png", root / "images/000004.png",
       "--out", tmp_path / "plain.json", *common)
    ok("predict", "--model", model, elsewhere / "000005.png", root / "images/000004.png",
       "--out", tmp_path / "matched.json", "--data", val_json, *common)
    plain = json.loads((tmp_path / "plain.json").read_text())
    matched = json.loads((tmp_path / "matched.json").read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in plain["images"]] == [
        (1, str(root / "images/000005.png"), SIZE, SIZE),
        (2, str(root / "images/000004.png"), SIZE, SIZE),
    ]
    assert [c["name"] for c in plain["categories"]] == list(CLASSES)
    assert {a["image_id"] for a in plain["annotations"]} == {1, 2}
    renumbered = [{**r, "image_id": {5: 1, 4: 2}[r["image_id"]]} for r in matched]
    assert renumbered == [{key: a[key] for key in matched[0]} for a in plain["annotations"]]


def test_evaluate_with_model_equals_evaluate_of_its_predictions(data, model, tmp_path):
    root, _, val_json = data
    common = ["--score-threshold", 0.1, "--device", "cpu", "--no-progress"]
    ok("evaluate", "--data", val_json, "--images", root, "--model", model,
       "--out", tmp_path / "direct.json", *common)
    ok("predict", "--model", model, root / "images/000004.png", root / "images/000005.png",
       "--data", val_json, "--out", tmp_path / "results.json", *common)
    ok("evaluate", "--data", val_json, "--results", tmp_path / "results.json",
       "--out", tmp_path / "via_results.json")
    direct = json.loads((tmp_path / "direct.json").read_text())
    assert direct == json.loads((tmp_path / "via_results.json").read_text())
    assert set(direct["per_class"]) <= set(CLASSES)

    # A threshold given with --results leaves out the records under it, as the model would.
    scores = sorted(r["score"] for r in json.loads((tmp_path / "results.json").read_text()))
    higher = scores[len(scores) // 2]
    assert scores[0] < higher, "the test needs results on both sides of the threshold"
    ok("evaluate", "--data", val_json, "--results", tmp_path / "results.json",
       "--score-threshold", higher, "--out", tmp_path / "via_results_higher.json")
    ok("evaluate", "--data", val_json, "--images", root, "--model", model,
       "--score-threshold", higher, "--device", "cpu", "--no-progress",
       "--out", tmp_path / "direct_higher.json")
    higher_metrics = json.loads((tmp_path / "via_results_higher.json").read_text())
    assert higher_metrics == json.loads((tmp_path / "direct_higher.json").read_text())
    assert higher_metrics != direct


def test_proposals_writes_one_loadable_file_per_image(data, tmp_path):
    root, train_json, _ = data
    counts = {}
    for flag in ([], ["--boxes"]):
        out = tmp_path / ("boxes" if flag else "plain")
        ok("proposals", "--data", train_json, "--images", root, "--out", out,
           "--max-proposals", 8, "--no-progress", *flag)
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz"))
        assert files == ["images/000001.npz", "images/000002.npz", "images/000003.npz"]
        masks = [load_proposal_file(out / f, (SIZE, SIZE)) for f in files]
        assert all(m.dtype == torch.bool and m.flatten(1).any(1).all() for m in masks)
        counts[bool(flag)] = np.array([len(m) for m in masks])
    assert (counts[False] <= 8).all()
    assert (counts[True] > counts[False]).all(), "box-conditioned proposals come on top"


def assert_usage_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, data):
    root, _, val_json = data
    folder = tmp_path_factory.mktemp("bad")
    (folder / "list.json").write_text("[1, 2]")
    (folder / "text.json").write_text("not json at all")
    renamed = json.loads(val_json.read_text())
    renamed["categories"][0]["name"] = "hexagon"
    (folder / "renamed.json").write_text(json.dumps(renamed))
    (folder / "unknown_image.json").write_text(json.dumps(
        [{"image_id": 999, "category_id": 1, "score": 0.5,
          "segmentation": {"size": [SIZE, SIZE], "counts": "0"}}]
    ))
    (folder / "not_a_bundle.pt").write_bytes(b"\x00" * 64)
    return folder


ERRORS = {
    "missing data": (["train", "--data", "{bad}/none.json", "--images", "{root}",
                      "--out", "{tmp}/m.pt"], "not found"),
    "not coco": (["train", "--data", "{bad}/list.json", "--images", "{root}",
                  "--out", "{tmp}/m.pt"], "not a COCO annotation file"),
    "bad k": (["train", "--data", "{train}", "--images", "{root}", "--out", "{tmp}/m.pt",
               "--k", "0"], "k must be at least 1"),
    "bad instance limit": (["train", "--data", "{train}", "--images", "{root}",
                            "--out", "{tmp}/m.pt", "--max-instances-per-tag", "-1"],
                           "max_instances_per_tag must be 0 or more"),
    "bad noise amplitude": (["train", "--data", "{train}", "--images", "{root}",
                             "--out", "{tmp}/m.pt", "--noise-amplitude", "-1"],
                            "noise_amplitude must be 0 or more"),
    "bad seed ratio": (["train", "--data", "{train}", "--images", "{root}", "--out", "{tmp}/m.pt",
                        "--seed-ratio", "0"], "seed_ratio must be in (0, 1]"),
    "bad unclaimed": (["train", "--data", "{train}", "--images", "{root}", "--out", "{tmp}/m.pt",
                       "--unclaimed", "positive"], "--unclaimed must be one of ignore, background"),
    "bad supervision": (["train", "--data", "{train}", "--images", "{root}",
                         "--out", "{tmp}/m.pt", "--supervision", "points"], "--supervision"),
    "bad preset": (["train", "--data", "{train}", "--images", "{root}", "--out", "{tmp}/m.pt",
                    "--preset", "huge"], "--preset"),
    "missing model": (["predict", "--model", "{tmp}/none.pt", "{image}", "--out", "{tmp}/r.json"],
                      "no model bundle"),
    "not a bundle": (["predict", "--model", "{bad}/not_a_bundle.pt", "{image}",
                      "--out", "{tmp}/r.json"], "not a readable discoseg bundle"),
    "missing image": (["predict", "--model", "{model}", "{tmp}/none.png", "--out", "{tmp}/r.json"],
                      "not found"),
    "unknown class": (["predict", "--model", "{model}", "{image}", "--out", "{tmp}/r.json",
                       "--data", "{bad}/renamed.json"], "not categories"),
    "image not in data": (["predict", "--model", "{model}", "{bad}/list.json",
                           "--out", "{tmp}/r.json", "--data", "{val}"], "no image"),
    "bad threshold": (["predict", "--model", "{model}", "{image}", "--out", "{tmp}/r.json",
                       "--score-threshold", "1.5"], "--score-threshold"),
    "bad device": (["predict", "--model", "{model}", "{image}", "--out", "{tmp}/r.json",
                    "--device", "tpu"], "--device"),
    "model and results": (["evaluate", "--data", "{val}", "--images", "{root}",
                           "--model", "{model}", "--results", "{bad}/list.json"], "exactly one"),
    "neither": (["evaluate", "--data", "{val}"], "exactly one"),
    "bad evaluate threshold": (["evaluate", "--data", "{val}", "--results", "{bad}/list.json",
                                "--score-threshold", "-0.1"], "--score-threshold"),
    "results not json": (["evaluate", "--data", "{val}", "--results", "{bad}/text.json"],
                         "Expecting value"),
    "unknown image id": (["evaluate", "--data", "{val}", "--results", "{bad}/unknown_image.json"],
                         "unknown image_id 999"),
    "evaluate not coco": (["evaluate", "--data", "{bad}/text.json",
                           "--results", "{bad}/unknown_image.json"], "not a COCO"),
    "missing images": (["proposals", "--data", "{train}", "--images", "{tmp}/none",
                        "--out", "{tmp}/p"], "image folder not found"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_errors_are_one_line_and_exit_2(case, data, model, bad_files, tmp_path):
    root, train_json, val_json = data
    args, fragment = ERRORS[case]
    places = {"bad": bad_files, "root": root, "tmp": tmp_path, "train": train_json,
              "val": val_json, "model": model, "image": root / "images/000004.png"}
    result = runner.invoke(app, [a.format(**places) for a in args])
    assert_usage_error(result, fragment)
