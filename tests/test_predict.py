"""predict.py / hrexp-predict: tiny checkpoints trained here, predictions on new files compared with what the
datamodule's own evaluation sample and the task give (independently of the predict code), unreadable files
skipped and named, bad options refused before any work."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hrexp.data.pose.datamodule import TopDownCrops
from hrexp.data.pose.dataset import PoseDataset
from hrexp.data.pose.reader import PoseInstance
from hrexp.data.pose.topdown import TopDownTransform
from hrexp.data.segmentation.transforms import pad_collate
from hrexp.prediction.boxes import PersonBox, read_boxes
from hrexp.prediction.writers import unique_names
from hrexp.errors import ConfigError
from tests.conftest import compose_for
from tests.fit_helpers import TINY_W18, fit
from tests.helpers import ROOT, write_image


def _train(overrides: list[str], out: Path, name: str, adjust=None) -> tuple[Path, object, torch.nn.Module]:
    """A few training steps of ``overrides`` (then ``adjust(module, datamodule)``); returns the checkpoint, the
    datamodule and the module (CPU, eval)."""
    cfg = compose_for([*overrides, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false",
                       "callbacks.progress_bar=null"], out, "train")
    trainer, module = fit(cfg)
    if adjust is not None:
        adjust(module.cpu().eval(), trainer.datamodule)
    path = out / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path, trainer.datamodule, module.cpu().eval()


@pytest.fixture(scope="module")
def landmarks(module_tmp, cache_dir):
    # image_cache=null: the dataset decodes the original as predict does (the cache stores uint16 pixels)
    return _train([*TINY_W18, "data.image_cache=null"], module_tmp / "landmarks", "landmarks")


def balance_classes(module, datamodule) -> None:
    """Shift the classifier's foreground bias so that about half the validation pixels are foreground: two steps of
    training predict background everywhere, and an all-zero mask would equal almost any computation."""
    dataset = datamodule.datasets["val"]
    differences = []
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = pad_collate([dataset[i]], size_divisor=datamodule.size_divisor)
            logits = module.task.eval_outputs(module, batch)[0]
            differences.append((logits[1] - logits[0]).flatten())
        module.task.head.final.bias[1] -= torch.cat(differences).median()


@pytest.fixture(scope="module")
def segmentation(module_tmp, cache_dir):
    """Images of three sizes (none a multiple of 32), evaluated down-sized to a long side of 48 (logits resized back)."""
    root = module_tmp / "seg_data"
    rng = np.random.default_rng(0)
    sizes = [(40, 72), (64, 50), (56, 56)]
    for i in range(12):
        h, w = sizes[i % 3]
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y:y + h // 3, x:x + w // 3] += 150
        mask[y:y + h // 3, x:x + w // 3] = 255
        write_image(root / "images" / f"{i:02d}.png", image)
        write_image(root / "masks" / f"{i:02d}.png", mask)
    return _train(["model=hrnet_w18", "task=segmentation", "data=seg_folder", f"data.root={root}", "data.num_classes=2",
                   "data.value_map={0:0,255:1}", "data.val_fraction=0.25", "data.test_fraction=0",
                   "data.crop_size=[32,32]", "data.eval_max_size=48", "data.batch_size=4", "data.num_workers=0",
                   "trainer.num_sanity_val_steps=0", "seed=0"], module_tmp / "segmentation", "segmentation", balance_classes)


def run_predict(ckpt: Path, inputs, out: Path, *extra: str) -> dict:
    """``predict.py`` in this process (composed as the script composes it)."""
    from hrexp.jobs.predict_run import predict

    value = inputs if isinstance(inputs, str) else "[" + ",".join(str(i) for i in inputs) + "]"
    cfg = compose_for([f"ckpt_path={ckpt}", f"input={value}", f"output={out}", *extra], out.parent, "predict")
    return predict(cfg)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def expected_landmarks(datamodule, module, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (original px) and scores of validation sample ``index``, from the datamodule's own evaluation
    sample and the task (no predict code involved)."""
    sample = datamodule.datasets["val"][index]
    batch = {k: v[None] for k, v in sample.items()}
    with torch.no_grad():
        preds = module.task.predict(module(batch["image"]), batch)
    return preds["keypoints"][0].double().numpy(), preds["scores"][0].double().numpy()


def keypoints_of(rows: list[dict[str, str]], file: str) -> tuple[np.ndarray, np.ndarray]:
    mine = [r for r in rows if Path(r["file"]).name == file]
    return (np.array([[float(r["x"]), float(r["y"])] for r in mine]), np.array([float(r["score"]) for r in mine]))


def landmark_folder(datamodule, folder: Path, n: int = 3) -> list[str]:
    """Copies of the first ``n`` validation images, a text file named x.png and a truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        source = Path(datamodule.splits["val"].records[i].image_path)
        names.append(f"val{i}{source.suffix}")
        shutil.copy(source, folder / names[-1])
    (folder / "x.png").write_text("not an image\n")
    ok, jpeg = cv2.imencode(".jpg", np.full((40, 30, 3), 90, np.uint8))
    (folder / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    return names


def test_landmarks_in_original_pixels_equal_the_eval_sample_and_bad_files_are_skipped(landmarks, tmp_path):
    ckpt, datamodule, module = landmarks
    names = landmark_folder(datamodule, tmp_path / "images")
    # batch_size=1 as the expectation's: batched convolutions sum in another order (1e-5 in the maps), which
    # the sub-pixel refinement of a barely trained model's flat peaks can turn into ~1e-3 px
    summary = run_predict(ckpt, str(tmp_path / "images"), tmp_path / "out", "batch_size=1")

    rows = read_csv(tmp_path / "out" / "predictions.csv")
    k = module.task.num_keypoints
    assert len(rows) == 3 * k and [r["keypoint"] for r in rows[:k]] == module.task.keypoint_names
    for i, name in enumerate(names):
        points, scores = keypoints_of(rows, name)
        want_points, want_scores = expected_landmarks(datamodule, module, i)
        assert np.abs(points - want_points).max() <= 1e-3, name
        assert np.abs(scores - want_scores).max() <= 1e-5, name
        # in ORIGINAL pixels: the 128x64 images, not the 64x32 network input
        record = datamodule.splits["val"].records[i]
        assert np.nanmean(np.linalg.norm(points - record.keypoints, axis=1)) < 64

    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [Path(r["file_name"]).name for r in results] == names
    for entry in results:
        points, scores = keypoints_of(rows, Path(entry["file_name"]).name)
        flat = np.array(entry["keypoints"]).reshape(k, 3)
        # COCO keypoints are pixel indices, hrexp's convention: the same numbers as the CSV
        assert np.allclose(flat[:, :2], points, atol=1e-9) and np.allclose(flat[:, 2], scores, atol=1e-9)
        assert entry["category_id"] == 1 and entry["score"] == pytest.approx(scores.mean())

    skipped = {Path(r["file"]).name: r["reason"] for r in read_csv(tmp_path / "out" / "skipped.csv")}
    assert set(skipped) == {"x.png", "cut.jpg"}
    assert skipped["x.png"].startswith("not an image") and skipped["cut.jpg"].startswith("truncated")
    assert summary["counts"] == {"files": 5, "predicted": 3, "skipped": 2, "instances": 3}
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["counts"]["skipped"] == 2
    assert "(0.0, 0.0)" in (tmp_path / "out" / "README.txt").read_text()


def test_a_glob_a_single_file_and_a_list_with_a_missing_file(landmarks, tmp_path):
    ckpt, datamodule, module = landmarks
    names = landmark_folder(datamodule, tmp_path / "images")
    run_predict(ckpt, f"{tmp_path / 'images'}/val*", tmp_path / "glob")
    assert sorted({Path(r["file"]).name for r in read_csv(tmp_path / "glob" / "predictions.csv")}) == names
    assert read_csv(tmp_path / "glob" / "skipped.csv") == []

    run_predict(ckpt, str(tmp_path / "images" / names[1]), tmp_path / "one")
    points, _ = keypoints_of(read_csv(tmp_path / "one" / "predictions.csv"), names[1])
    assert np.abs(points - expected_landmarks(datamodule, module, 1)[0]).max() <= 1e-3

    summary = run_predict(ckpt, [tmp_path / "images" / names[0], tmp_path / "gone.png"], tmp_path / "list")
    assert summary["counts"]["predicted"] == 1
    assert read_csv(tmp_path / "list" / "skipped.csv") == [{"file": str(tmp_path / "gone.png"),
                                                             "reason": "missing: no such file or folder"}]


@pytest.mark.parametrize("option, message", [
    ("input=/no/such/folder", "input='/no/such/folder': no such file or folder"),
    ("input=/no/such/*.png", "matches no image file"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt': no such checkpoint file"),
    ("batch_size=0", "batch_size=0: expected a whole number >= 1"),
    ("overlays=maybe", "overlays='maybe': expected true or false"),
    ("device=tpu", "device='tpu': expected auto, cpu"),
    ("boxes=/no/boxes.json", "boxes='/no/boxes.json'"),
])
def test_bad_options_fail_before_any_work_naming_the_option(landmarks, tmp_path, option, message):
    ckpt, datamodule, _ = landmarks
    landmark_folder(datamodule, tmp_path / "images", n=1)
    overrides = [f"ckpt_path={ckpt}", f"input={tmp_path / 'images'}", f"output={tmp_path / 'out'}"]
    key = option.split("=")[0]
    overrides = [o for o in overrides if not o.startswith(f"{key}=")] + [option]
    from hrexp.jobs.predict_run import predict

    with pytest.raises(ConfigError, match=None) as err:
        predict(compose_for(overrides, tmp_path, "predict"))
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_boxes_are_refused_for_a_landmark_checkpoint(landmarks, tmp_path):
    ckpt, datamodule, _ = landmarks
    names = landmark_folder(datamodule, tmp_path / "images", n=1)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"file_name": names[0], "bbox": [0, 0, 10, 10], "score": 1}]))
    with pytest.raises(ConfigError, match="only top-down pose checkpoints crop person boxes"):
        run_predict(ckpt, str(tmp_path / "images"), tmp_path / "out", f"boxes={boxes}")


def test_overlays_draw_the_keypoints_on_each_original_image(landmarks, tmp_path):
    ckpt, datamodule, _ = landmarks
    names = landmark_folder(datamodule, tmp_path / "images", n=2)
    run_predict(ckpt, str(tmp_path / "images"), tmp_path / "out", "overlays=true")
    pictures = sorted((tmp_path / "out" / "overlays").iterdir())
    assert [p.name for p in pictures] == sorted(names)  # the skipped files have none
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    for picture in pictures:
        drawn = cv2.imread(str(picture))[:, :, ::-1]
        original = cv2.imread(str(tmp_path / "images" / picture.name), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert drawn.shape == original.shape == (128, 64, 3)
        points, _ = keypoints_of(rows, picture.name)
        x, y = np.clip(np.round(points[0]).astype(int), 0, [63, 127])
        assert tuple(drawn[y, x]) == (255, 0, 0)  # a red dot on the first predicted keypoint


def test_segmentation_masks_have_the_original_size_and_equal_the_eval_argmax(segmentation, tmp_path):
    ckpt, datamodule, module = segmentation
    pairs = datamodule.splits["val"].pairs
    folder = tmp_path / "images"
    folder.mkdir()
    for _, image_path, _ in pairs:
        shutil.copy(image_path, folder / Path(image_path).name)
    summary = run_predict(ckpt, str(folder), tmp_path / "out", "overlays=true", "batch_size=2")
    assert summary["counts"]["predicted"] == len(pairs) and summary["files"]["masks"] == "masks/"
    rows = {Path(r["file"]).name: r for r in read_csv(tmp_path / "out" / "predictions.csv")}
    sizes = set()
    for i, (_, image_path, _) in enumerate(pairs):
        name = Path(image_path).name
        mask = cv2.imread(str(tmp_path / "out" / "masks" / name), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(image_path))
        assert mask.dtype == np.uint8 and mask.shape == original.shape[:2]
        sizes.add(mask.shape)
        batch = pad_collate([datamodule.datasets["val"][i]], size_divisor=datamodule.size_divisor)
        with torch.no_grad():
            logits = module.task.eval_outputs(module, batch)
        want = logits[0].argmax(0)[: mask.shape[0], : mask.shape[1]].numpy()
        assert np.array_equal(mask, want), name
        assert int(rows[name]["pixels_class1"]) == int((want == 1).sum())
        overlay = cv2.imread(str(tmp_path / "out" / "overlays" / name))
        assert overlay.shape == original.shape
    assert len(sizes) > 1  # images of different sizes went through one batch
    foreground = sum(int(r["pixels_class1"]) for r in rows.values())
    assert 0.2 < foreground / sum(int(r["height"]) * int(r["width"]) for r in rows.values()) < 0.8  # not trivial


def test_pose_crops_use_the_pose_datasets_matrix_and_boxes_are_read_by_file_name(tmp_path):
    """The top-down crop of a box equals the pose dataset's evaluation crop (same matrix, same pixels)."""
    image = np.random.default_rng(0).random((90, 120, 3)).astype(np.float32)
    path = write_image(tmp_path / "img" / "people.png", (image * 255).astype(np.uint8))
    image = cv2.imread(str(path))[:, :, ::-1].astype(np.float32) / 255.0
    bbox = (10.0, 5.0, 40.0, 70.0)
    instance = PoseInstance(image_id=7, image_path=path, image_size=(90, 120), bbox=np.array(bbox),
                            keypoints=np.full((3, 2), np.nan), visible=np.zeros(3, bool))
    split = type("Split", (), {"instances": [instance], "ground_truth": {}})()
    want = PoseDataset(split, TopDownTransform(image_size=(64, 48), padding=1.25))[0]

    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({"images": [{"id": 7, "file_name": "elsewhere/people.png"}],
                                      "annotations": [{"image_id": 7, "bbox": list(bbox), "score": 0.9},
                                                      {"image_id": 7, "bbox": [0, 0, 5, 5], "score": 0.1},
                                                      {"image_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 1}]}))
    boxes = read_boxes(boxes_file, score_threshold=0.5)
    assert boxes == {"people.png": [PersonBox(bbox, 0.9, 7)]}
    (got,) = TopDownCrops((64, 48), 1.25, boxes)(image, path)
    assert torch.equal(got["matrix"], want["matrix"]) and torch.allclose(got["image"], want["image"], atol=1e-6)
    assert got["image_id"] == 7 and got["box_score"] == pytest.approx(0.9)
    # without a boxes file the whole image is the box
    (whole,) = TopDownCrops((64, 48), 1.25, None)(image, path)
    assert whole["bbox"].tolist() == [0.0, 0.0, 120.0, 90.0]
    with pytest.raises(ConfigError, match=r"boxes='.*\[0\]: expected an object with 'file_name'"):
        (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
        read_boxes(tmp_path / "bad.json")


def test_output_names_stay_unique():
    assert unique_names(["a/x.png", "a/y.png"]) == {"a/x.png": "x", "a/y.png": "y"}
    assert unique_names(["a/x.png", "a/x.jpg", "b/x.png"]) == {"a/x.png": "x.png", "a/x.jpg": "x.jpg",
                                                               "b/x.png": "x.png_1"}


@pytest.mark.slow  # two subprocesses that import torch (~18 s); the same refusal is tested in-process above
def test_the_installed_command_and_the_script_refuse_a_bad_input(tmp_path):
    """`hrexp-predict` is installed and `predict.py` runs; both name the option in their error."""
    command = Path(sys.executable).with_name("hrexp-predict")
    assert command.is_file(), "hrexp-predict is not installed: pip install -e ."
    for program in ([str(command)], [sys.executable, str(ROOT / "predict.py")]):
        proc = subprocess.run([*program, f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={tmp_path}",
                               f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert proc.returncode != 0
        assert f"ckpt_path='{tmp_path / 'x.ckpt'}': no such checkpoint file" in proc.stderr + proc.stdout


@pytest.mark.slow  # ~15 s: a tiny pose model on the COCO samples (needs ../shared/data; skipped without)
def test_pose_predictions_equal_the_pose_datasets_for_the_annotation_boxes(module_tmp, cache_dir, tmp_path):
    from tests.helpers import shared_path

    coco = shared_path("pose_coco_samples", "coco")
    ckpt, datamodule, module = _train(["model=hrnet_w18", "task=pose", "data=coco_pose_samples",
                                       f"paths.shared_data={coco.parent.parent}", "data.image_size=[64,64]",
                                       "data.batch_size=4", "trainer.num_sanity_val_steps=0", "seed=0"],
                                      module_tmp / "pose", "pose")
    summary = run_predict(ckpt, str(coco / "*.jpg"), tmp_path / "out", f"boxes={coco / 'test_coco.json'}",
                          "overlays=true")
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    dataset = datamodule.datasets["val"]
    assert summary["counts"]["predicted"] == 4 and len(results) >= len(dataset)
    for i in range(len(dataset)):
        sample = dataset[i]
        instance = dataset.split.instances[i]
        batch = {k: v[None] for k, v in sample.items()}
        with torch.no_grad():
            flipped = module(batch["image"].flip(-1)) if module.task.flip_test else None
            preds = module.task.predict(module(batch["image"]), batch, flipped_outputs=flipped)
        (entry,) = [r for r in results if Path(r["file_name"]).name == Path(instance.image_path).name
                    and np.allclose(r["bbox"], instance.bbox)]
        assert entry["image_id"] == instance.image_id
        got = np.array(entry["keypoints"]).reshape(-1, 3)
        # crops of one image are batched together here: 0.05 px allows the batched convolutions' rounding
        assert np.abs(got[:, :2] - preds["keypoints"][0].numpy()).max() <= 0.05
    assert len(list((tmp_path / "out" / "overlays").iterdir())) == 4
