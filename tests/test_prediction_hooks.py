"""Prediction and export ask the task and the data family, never their classes: each family's prediction_preparer
(found from a checkpoint's data._target_), each task's prediction_writer and export hooks. The fourth task, written
only in tests/blobs/, runs predict.py and export.py end to end through those hooks alone."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hrexp.data.datamodule import HRExpDataModule
from hrexp.data.landmarks.datamodule import FitWholeImage
from hrexp.data.pose.datamodule import TopDownCrops
from hrexp.data.segmentation.datamodule import SegWholeImage
from hrexp.errors import ConfigError
from hrexp.export.onnx_export import ExportError
from hrexp.models.heads import HeatmapHead
from hrexp.prediction.preprocess import preparer_for
from hrexp.tasks.base import Task
from tests.blobs.data import BlobImage, make_blobs, network_input
from tests.conftest import compose_for
from tests.fit_helpers import fit
from tests.helpers import ROOT, write_image

BLOBS = [
    f"hydra.searchpath=[file://{ROOT / 'tests' / 'blobs' / 'conf'}]",
    "task=blob_centres", "data=blobs", "data.num_train=16", "data.num_test=4", "data.batch_size=4",
    "model=unet", "model.base_width=8",
    # every local maximum is a centre: a barely trained net then still finds many, so equality means something
    "task.codec.threshold=-1.0",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null", "scheduler.warmup_epochs=0", "test=false", "seed=0",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ the hooks
def _run_cfg(target: str, **data) -> OmegaConf:
    return OmegaConf.create({"data": {"_target_": target, **data}, "choices": {"task": "t"}})


def test_each_family_prepares_images_by_its_own_hook_from_the_stored_config():
    landmarks = preparer_for(_run_cfg("hrexp.data.landmarks.datamodule.CsvLandmarkDataModule", image_size=[64, 32]))
    assert isinstance(landmarks, FitWholeImage) and not landmarks.per_instance
    assert landmarks.transform.image_size == (64, 32)
    pose = preparer_for(_run_cfg("hrexp.data.pose.datamodule.CocoPoseDataModule", image_size=[64, 48], padding=1.5))
    assert isinstance(pose, TopDownCrops) and pose.per_instance
    # options an older config lacks come from the family's defaults (SegDataModule: size_divisor 32, ignore 255)
    seg = preparer_for(_run_cfg("hrexp.data.segmentation.datamodule.SegFolderDataModule", eval_max_size=48))
    assert isinstance(seg, SegWholeImage)
    batch = seg.collate([*seg(np.zeros((40, 50, 3), np.float32), Path("a.png")),
                         *seg(np.zeros((30, 20, 3), np.float32), Path("b.png"))])
    assert tuple(batch["image"].shape[-2:]) == (64, 64)  # padded to multiples of 32
    assert batch["mask_hw"].tolist() == [[40, 50], [30, 20]] and int(batch["mask"][1, -1, -1]) == 255
    blobs = preparer_for(_run_cfg("tests.blobs.data.BlobDataModule", image_size=[64, 64]))
    assert isinstance(blobs, BlobImage)


def test_boxes_only_for_a_family_that_crops_them_and_no_preparer_without_the_hook():
    boxes = {"a.png": []}
    for target in ("hrexp.data.landmarks.datamodule.CsvLandmarkDataModule", "tests.blobs.data.BlobDataModule"):
        with pytest.raises(ConfigError, match="only top-down pose checkpoints crop person boxes"):
            preparer_for(_run_cfg(target, image_size=[64, 64]), boxes)
    with pytest.raises(ConfigError, match=r"data family HRExpDataModule \(hrexp.data.datamodule.HRExpDataModule\) "
                                          r"has no prediction preprocessing"):
        HRExpDataModule.prediction_preparer(_run_cfg("hrexp.data.datamodule.HRExpDataModule"))


def test_a_task_without_prediction_or_decoding_hooks_says_so():
    class MapsOnly(Task):
        task_name = "maps_only"

    task = MapsOnly(functools.partial(HeatmapHead), [{"num_chs": 8, "reduction": 4}], 2, {"metric": "val/loss"})
    with pytest.raises(ConfigError, match="task 'maps_only' \\(MapsOnly\\) has no prediction output"):
        task.prediction_writer(Path("."), False)
    assert task.export_output_names(decode=False) == ["maps"]
    maps = torch.zeros(1, 2, 4, 4)
    assert task.export_outputs(maps, decode=False) == (maps,) and task.tied_points(maps, 1e-4) is None
    with pytest.raises(ValueError, match="decode=true needs a keypoint task"):
        task.export_output_names(decode=True)


# ------------------------------------------------------------------------------------ the fourth task end to end
@pytest.fixture(scope="module")
def blobs(module_tmp, cache_dir):
    """A blob model trained two steps, its checkpoint, and blob images written as PNG files (gray and RGB)."""
    trainer, module = fit(compose_for(BLOBS, module_tmp / "train", "train"))
    ckpt = module_tmp / "blobs.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = module_tmp / "images"
    for i, sample in enumerate(make_blobs(3, (64, 64), seed=7)):
        pixels = np.round(sample.image * 255).astype(np.uint8)
        write_image(folder / f"blob{i}.png", pixels if i else np.repeat(pixels[:, :, None], 3, axis=2))
    return ckpt, module.cpu().eval(), folder


def expected_centres(module, path: Path) -> np.ndarray:
    """The task's centres for one image file, read and normalised here (not by predict's code)."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    with torch.no_grad():
        outputs = module(network_input(image)[None])
        return module.task.predict(outputs, {})["centres"][0].double().numpy()


def test_predict_writes_the_new_tasks_centres_through_its_hooks(blobs, tmp_path):
    from hrexp.jobs.predict_run import predict

    ckpt, module, folder = blobs
    (folder.parent / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    summary = predict(compose_for([f"ckpt_path={ckpt}", f"input=[{folder},{folder.parent / 'notes.txt'}]",
                                   f"output={out}", "overlays=true", "batch_size=2"], tmp_path, "predict"))
    rows = read_csv(out / "predictions.csv")
    total = 0
    for path in sorted(folder.iterdir()):
        got = np.array([[float(r["x"]), float(r["y"])] for r in rows if Path(r["file"]).name == path.name])
        want = expected_centres(module, path)
        assert len(want) > 0 and got.shape == want.shape, path.name
        assert np.abs(got - want).max() <= 1e-4, path.name
        total += len(want)
    assert summary["task"] == "blob_centres"
    assert summary["counts"] == {"files": 4, "predicted": 3, "skipped": 1, "centres": total}
    assert summary["files"] == {"predictions_csv": "predictions.csv", "skipped": "skipped.csv", "overlays": "overlays/"}
    assert json.loads((out / "predict.json").read_text())["coordinates"].startswith("image pixels")
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["blob0.png", "blob1.png", "blob2.png"]
    assert "one row per blob centre found" in (out / "README.txt").read_text()
    with pytest.raises(ConfigError, match="only top-down pose checkpoints crop person boxes"):
        boxes = tmp_path / "boxes.json"
        boxes.write_text(json.dumps([{"file_name": "blob0.png", "bbox": [0, 0, 9, 9]}]))
        predict(compose_for([f"ckpt_path={ckpt}", f"input={folder}", f"output={tmp_path / 'b'}", f"boxes={boxes}"],
                            tmp_path, "predict"))


def test_export_writes_the_new_tasks_map_checked_with_onnxruntime(blobs, tmp_path):
    from hrexp.jobs.export_run import export

    ort = pytest.importorskip("onnxruntime")
    ckpt, module, folder = blobs
    summary = export(compose_for([f"ckpt_path={ckpt}", "batch=fixed", "batch_size=1"], tmp_path, "export"))
    assert summary["outputs"] == ["maps"] and summary["input"]["size"] == [64, 64]
    assert summary["check"]["max_map_difference"] <= 1e-4 and summary["check"]["max_point_difference_px"] is None
    image = cv2.imread(str(folder / "blob1.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    images = network_input(image)[None]
    session = ort.InferenceSession(summary["file"], providers=["CPUExecutionProvider"])
    (maps,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert np.abs(maps - module(images).numpy()).max() <= 1e-4
    with pytest.raises(ExportError, match="decode=true needs a keypoint task .* task 'blob_centres'"):
        export(compose_for([f"ckpt_path={ckpt}", "decode=true"], tmp_path / "decode", "export"))
