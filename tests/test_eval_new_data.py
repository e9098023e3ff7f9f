"""eval.py on new images, as a user tries it first, on a tiny refined (coarse-to-fine, data.refine_scale=0.5)
landmark checkpoint trained here on CSV files with a renamed spacing column:

- ``data.test_csv=<other.csv>`` alone changes that key of the checkpoint's own data (the command line too);
- a data group given whole (``data=landmarks_csv data.csv=... data.test_csv=...``) takes the input size,
  ``refine_scale`` and the spacing column from the checkpoint;
- what still conflicts (another input size or refine_scale, a key the data does not have, other landmarks) is a
  ConfigError naming both values;
- no data given scores the checkpoint's own test split as before; ensembles and split=val keep working.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hrexp.errors import ConfigError, user_error
from hrexp.jobs.eval_data import eval_data
from hrexp.jobs.eval_run import evaluate
from hrexp.training.build import build_datamodule
from tests.conftest import compose_for
from tests.fit_helpers import fit
from tests.helpers import run_script, write_image

NAMES = ("p1", "p2", "p3")
SIZE = (128, 64)  # original images (height, width)


def write_csv(folder: Path, name: str, count: int, seed: int, names=NAMES) -> Path:
    """``count`` noise images with a bright dot at each landmark, listed in ``folder/name`` (spacing column
    ``spacing_mm``: 0.5 mm per pixel)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        image = rng.integers(0, 60, SIZE, dtype=np.uint8)
        points = [(int(rng.integers(8, SIZE[1] - 8)), int(rng.integers(8, SIZE[0] - 8))) for _ in names]
        for x, y in points:
            image[y - 2:y + 3, x - 2:x + 3] = 255
        file = write_image(folder / f"{Path(name).stem}_{i}.png", image)
        rows.append([file.name, *[v for p in points for v in p], 0.5])
    path = folder / name
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", *[f"{n}_{a}" for n in names for a in "xy"], "spacing_mm"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(module_tmp, cache_dir):
    """The training files (8 train, 2 val, 4 test images) and ``other.csv``: 3 images it never saw."""
    data = module_tmp / "data"
    return {"train": write_csv(data, "train.csv", 8, 0), "val": write_csv(data, "val.csv", 2, 1),
            "test": write_csv(data, "test.csv", 4, 2), "other": write_csv(data, "other.csv", 3, 3)}


@pytest.fixture(scope="module")
def refined(module_tmp, files):
    """A refined W18 checkpoint (stage 2 on 32-px patches of the original at half size), one short epoch at 64x32."""
    cfg = compose_for([
        "model=hrnet_w18", "data=landmarks_csv", f"data.csv={files['train']}", f"data.val_csv={files['val']}",
        f"data.test_csv={files['test']}", "data.spacing_column=spacing_mm", "data.image_size=[64,32]",
        "data.batch_size=4", "data.num_workers=0", "refine=native", "task.refine.scale=0.5",
        "task.refine.patch_size=32", "task.refine.train_patches=4", "task.refine.jitter_px=4",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null", "test=false", "seed=0",
    ], module_tmp / "train", "train")
    assert cfg.data.refine_scale == 0.5
    trainer, _ = fit(cfg)
    path = module_tmp / "refined.ckpt"
    trainer.save_checkpoint(path)
    return path


def run_eval(out: Path, overrides: list[str]) -> tuple[dict, Path]:
    """``evaluate`` on the eval config composed as eval.py composes it (no report: summary and tables suffice)."""
    cfg = compose_for([*overrides, "report.enabled=false"], out, "eval")
    return evaluate(cfg), out / "run"


def test_no_data_given_scores_the_checkpoints_own_test_split(refined, tmp_path):
    summary, _ = run_eval(tmp_path, [f"ckpt_path={refined}"])
    assert summary["split"] == "test" and summary["choices"]["data"] == "landmarks_csv"
    assert summary["data"] == {"samples": 4, "input_size": [64, 32], "given": {}, "from_checkpoint": {}}


def test_data_test_csv_alone_scores_other_images_with_the_checkpoints_data(refined, files, tmp_path, cache_dir):
    """The issue's first command, through eval.py: it failed with OmegaConf's `Key 'data' is not in struct`."""
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={refined}", f"data.test_csv={files['other']}", "report.gallery=1",
                           f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["data"]["samples"] == 3
    with open(out / "per_image.csv", newline="") as fh:
        assert sorted(Path(row["image"]).name for row in csv.DictReader(fh)) == [f"other_{i}.png" for i in range(3)]
    assert summary["data"]["input_size"] == [64, 32]  # the checkpoint's, not landmarks_csv's [256, 128]
    assert summary["data"]["given"] == {"test_csv": str(files["other"])}
    assert summary["choices"]["data"] == "landmarks_csv" and summary["metrics"]["test/mre"] > 0
    # predictions.csv: each stage's point and error, and the gated point is the stage the gate names
    with open(out / "predictions.csv", newline="") as fh:
        predictions = list(csv.DictReader(fh))
    for r in predictions:
        truth = np.array([float(r["x_true"]), float(r["y_true"])])
        for stage in ("coarse", "refined"):
            point = np.array([float(r[f"x_{stage}"]), float(r[f"y_{stage}"])])
            assert float(r[f"error_{stage}_px"]) == pytest.approx(np.linalg.norm(point - truth), rel=1e-5, abs=1e-5)
        chosen = "refined" if int(r["refined_used"]) else "coarse"
        assert (float(r["x"]), float(r["y"])) == pytest.approx((float(r[f"x_{chosen}"]), float(r[f"y_{chosen}"])))
    # the checkpoint's spacing column was kept: errors in mm too (0.5 mm per pixel)
    with open(out / "per_landmark.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["mre_mm"]) == pytest.approx(0.5 * float(row["mre"]), rel=1e-4)


def test_a_whole_data_group_takes_what_the_model_depends_on_from_the_checkpoint(refined, files, tmp_path):
    """The issue's second command without data.image_size / data.refine_scale / data.spacing_column: it stopped
    with a RuntimeError (no originals in the batch) under a traceback."""
    summary, run = run_eval(tmp_path, [f"ckpt_path={refined}", "data=landmarks_csv", f"data.csv={files['train']}",
                                       f"data.test_csv={files['other']}"])
    assert summary["data"]["samples"] == 3 and summary["choices"]["data"] == "landmarks_csv"
    assert summary["data"]["input_size"] == [64, 32]
    assert summary["data"]["from_checkpoint"] == {"image_size": [64, 32], "refine_scale": 0.5,
                                                  "spacing_column": "spacing_mm"}
    assert summary["data"]["given"] == {"csv": str(files["train"]), "test_csv": str(files["other"])}
    with open(run / "per_landmark.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["mre_mm"]) == pytest.approx(0.5 * float(row["mre"]), rel=1e-4)
    # the same values given explicitly are no conflict (and the spacing column given wins)
    summary, run = run_eval(tmp_path / "explicit", [
        f"ckpt_path={refined}", "data=landmarks_csv", f"data.csv={files['train']}", f"data.test_csv={files['other']}",
        "data.image_size=[64,32]", "data.refine_scale=0.5", "data.spacing_column=null"])
    assert summary["data"]["samples"] == 3 and summary["data"]["from_checkpoint"] == {}
    with open(run / "per_landmark.csv", newline="") as fh:
        assert next(csv.DictReader(fh))["mre_mm"] == ""  # no spacing column: no millimetres


def test_an_ensemble_on_the_val_split_of_other_images(refined, files, tmp_path):
    summary, run = run_eval(tmp_path, [f"ckpt_path=[{refined},{refined}]", "split=val",
                                       f"data.val_csv={files['other']}"])
    assert summary["split"] == "val" and len(summary["ensemble"]["members"]) == 2
    # the mean of two equal members is each member
    assert summary["metrics"]["val/mre"] == pytest.approx(summary["ensemble"]["members"][0]["metrics"]["val/mre"])
    assert summary["data"]["given"] == {"val_csv": str(files["other"])}


@pytest.mark.parametrize("overrides, message", [
    (["data=landmarks_csv", "data.csv={train}", "data.image_size=[128,64]"],
     r"data\.image_size=\[128,64\]: the checkpoint .* was trained with data\.image_size=\[64,32\], which its network "
     r"depends on \(its input size\); leave data\.image_size out"),
    (["data.refine_scale=0.25"], r"data\.refine_scale=0\.25: .* trained with data\.refine_scale=0\.5"),
    (["data.refine_scale=null"], r"data\.refine_scale=null: .* trained with data\.refine_scale=0\.5"),
    (["data.image_size=[32,16]"], r"data\.image_size=\[32,16\]: .* trained with data\.image_size=\[64,32\]"),
    (["data.test_cvs={other}"], r"data\.test_cvs: the checkpoint's data \(data=landmarks_csv, CsvLandmarkDataModule\) "
                                r"has no such option; its options are .*test_csv"),
    (["data=landmarks_csv"], r"data\.csv: data=landmarks_csv needs it"),
], ids=["group_image_size", "refine_scale", "refine_off", "image_size", "typo", "required"])
def test_conflicts_are_refused_naming_both_values(refined, files, tmp_path, overrides, message):
    given = [o.format(train=files["train"], other=files["other"]) for o in overrides]
    with pytest.raises(ConfigError, match=message):
        run_eval(tmp_path, [f"ckpt_path={refined}", *given])


def test_other_landmarks_name_both_counts(refined, files, tmp_path):
    two = write_csv(tmp_path, "two.csv", 6, 4, names=("a", "b"))
    both = r"\(num_keypoints=3\); the data now is data=landmarks_csv \(num_keypoints=2\)"
    with pytest.raises(ConfigError, match=both):
        run_eval(tmp_path, [f"ckpt_path={refined}", "data=landmarks_csv", f"data.csv={two}"])


def test_keys_the_checkpoints_data_does_not_have_point_to_a_whole_group(tmp_path):
    """A synthetic-spine checkpoint (the default job's) has no test_csv: the message says how to score other
    images; its class accepts one, but gives its own to the CSV reader."""
    stored = {"_target_": "hrexp.data.landmarks.datamodule.SyntheticSpineDataModule", "num_train": 20,
              "image_size": [64, 32]}
    given = compose_for(["ckpt_path=x", "data.test_csv=other.csv"], tmp_path, "eval").data
    with pytest.raises(ConfigError, match=r"data\.test_csv: the checkpoint's data \(data=synthetic_spine, "
                                          r"SyntheticSpineDataModule\) has no such option.*data=landmarks_csv"):
        eval_data(stored, given, ckpt_path="x", stored_choice="synthetic_spine")
    # an older checkpoint's config, stored before refine_scale existed: its class default (off) is what it was
    # trained with, taken by a whole group and compared with one given
    group = compose_for(["ckpt_path=x", "data=landmarks_csv", "data.csv=a.csv"], tmp_path, "eval").data
    taken = eval_data(stored, group, ckpt_path="x", stored_choice="synthetic_spine", choice="landmarks_csv",
                      command_keys={"csv"})
    assert taken.config["refine_scale"] is None and taken.config["image_size"] == [64, 32]
    assert taken.from_checkpoint == {"image_size": [64, 32]} and taken.given == {"csv": "a.csv"}
    group = compose_for(["ckpt_path=x", "data=landmarks_csv", "data.csv=a.csv", "data.refine_scale=0.5"],
                        tmp_path, "eval").data
    with pytest.raises(ConfigError, match=r"data\.refine_scale=0\.5: .* trained with data\.refine_scale=null"):
        eval_data(stored, group, ckpt_path="x", stored_choice="synthetic_spine", choice="landmarks_csv",
                  command_keys={"csv", "refine_scale"})


def test_data_checkpoint_is_evals_alone(tmp_path, cache_dir):
    cfg = compose_for(["data=checkpoint"], tmp_path, "train")
    with pytest.raises(Exception) as caught:
        build_datamodule(cfg.data)
    assert "data=checkpoint is eval.py's default" in str(user_error(caught.value))
