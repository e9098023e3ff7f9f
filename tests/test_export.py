"""ONNX export (export.py): a checkpoint trained in the test, exported with and without the decoding in the
graph, run by onnxruntime on the same inputs as PyTorch: maps within 1e-4, decoded points within 0.05 px."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from hrexp.errors import ConfigError
from hrexp.export.onnx_export import DeployModel, ExportError, check_onnx, export_onnx
from hrexp.models.heads import HeatmapHead
from hrexp.tasks.base import Task
from hrexp.training.checkpoint_model import checkpoint_data
from tests.fit_helpers import TINY_W18, fit
from tests.helpers import run_script

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A tiny landmark model trained for a few steps, its checkpoint, and a batch of its validation images."""
    from tests.conftest import compose_for

    out = tmp_path_factory.mktemp("export")
    cfg = compose_for([*TINY_W18, "trainer.max_epochs=3", "trainer.limit_train_batches=4", "test=false"], out,
                      "train")
    trainer, module = fit(cfg)
    path = out / "tiny.ckpt"
    trainer.save_checkpoint(path)
    images = next(iter(trainer.datamodule.val_dataloader()))["image"]
    return module.cpu().eval(), path, images


@pytest.mark.slow  # trains a tiny model, exports (~50 s each on 2 cores)
def test_the_graph_decodes_like_the_codec(trained, tmp_path):
    module, _, images = trained
    model = DeployModel(module, decode=True).eval()
    path = export_onnx(model, tmp_path / "m.onnx", (64, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["maps", "keypoints", "scores"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    maps, keypoints, scores = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        heatmaps = module.task(module.backbone(images))
        expected_points, expected_scores = module.task.codec.decode(heatmaps, stride=module.task.stride)
    # trained (a few steps): maps in the targets' range (an untrained net in eval mode gives ~1e5), so 1e-4 means something
    assert 0.005 < np.abs(heatmaps.numpy()).max() < 2
    assert np.abs(maps - heatmaps.numpy()).max() <= 1e-4
    assert keypoints.shape == (images.shape[0], 40, 2)
    # in input pixels: inside the 64x32 input, and equal to the Python codec's decoding
    assert np.abs(keypoints - expected_points.numpy()).max() <= 0.05
    assert np.allclose(scores, expected_scores.numpy(), atol=1e-4)
    check = check_onnx(model, path, images[:1])  # another batch size through the same file
    assert check.ok and check.batch_sizes == [1]


@pytest.mark.slow  # trains a tiny model, exports (~50 s each on 2 cores)
def test_export_py_writes_a_checked_file_for_a_fixed_batch(trained, tmp_path, cache_dir):
    _, ckpt, _ = trained
    out = tmp_path / "run"
    run_script("export.py", [f"ckpt_path={ckpt}", "batch=fixed", "batch_size=2", f"hydra.run.dir={out}"], cache_dir,
               env={"OMP_NUM_THREADS": "1"})
    summary = json.loads((out / "export.json").read_text())
    assert summary["outputs"] == ["maps"] and summary["batch"] == 2 and summary["input"]["size"] == [64, 32]
    assert summary["check"]["max_map_difference"] <= 1e-4 and summary["check"]["batch_sizes"] == [2]
    session = ort.InferenceSession(summary["file"], providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 64, 32]


@pytest.mark.slow  # trains a tiny model, exports (~50 s each on 2 cores)
def test_decode_needs_a_keypoint_task_and_bad_options_are_refused(trained, tmp_path, cache_dir):
    module, ckpt, _ = trained

    class MapsOnly(Task):  # the base Task's export hooks: its one output tensor, nothing to decode
        task_name = "maps_only"

    fake = torch.nn.Module()
    fake.backbone = module.backbone
    fake.task = MapsOnly(functools.partial(HeatmapHead), module.backbone.feature_info, 2, {"metric": "val/loss"})
    with pytest.raises(ExportError, match="decode=true needs a keypoint task .* 'maps_only' .* export without decode"):
        DeployModel(fake, decode=True)
    assert DeployModel(fake).output_names == ["maps"]
    proc = run_script("export.py", [f"ckpt_path={ckpt}", "batch=sometimes", f"hydra.run.dir={tmp_path / 'r'}"],
                      cache_dir, check=False)
    assert proc.returncode != 0 and "batch='sometimes': expected one of ['dynamic', 'fixed']" in proc.stderr + proc.stdout


def test_the_input_size_comes_from_the_checkpoint_under_the_familys_option():
    from omegaconf import OmegaConf

    seg = OmegaConf.create({"data": {"_target_": "hrexp.data.segmentation.datamodule.SegFolderDataModule",
                                     "crop_size": [96, 128]}})
    assert checkpoint_data(seg, {}).input_size == (96, 128)
    with pytest.raises(ConfigError, match="no data.image_size"):
        checkpoint_data(OmegaConf.create({"data": {"_target_": "hrexp.data.landmarks.datamodule.CsvLandmarkDataModule"}}),
                        {})
