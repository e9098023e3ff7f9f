"""The segmentation task: whole-image and sliding-window inference at the original resolution, the
HRNetV2 head choice, and a tiny run end to end with eval reproducing the logged validation mIoU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hrexp.losses.segmentation import SegmentationLoss
from hrexp.metrics.segmentation import SegmentationMetrics
from hrexp.models.heads import HeatmapHead
from hrexp.reports.eval_plots import png_size
from hrexp.reports.html_report import embedded_images
from hrexp.tasks.segmentation import SegmentationTask
from hrexp.errors import ConfigError
from hrexp.training.build import build_module
from tests.helpers import run_script, shared_path, write_image

META = {"num_classes": 3, "class_names": ["bg", "a", "b"], "ignore_index": 255}


def _task(**kw) -> SegmentationTask:
    # the coarsest stride (32) is what inputs are padded to
    features = [{"num_chs": 4, "reduction": 4}, {"num_chs": 8, "reduction": 32}]
    return SegmentationTask(lambda **k: HeatmapHead(**k), SegmentationLoss(), features, META, **kw)


def pixelwise(x: torch.Tensor) -> torch.Tensor:
    """A 'network' without context at stride 1: the logits are the first 3 input channels."""
    return x[:, :3]


def _batch(sizes, mask_sizes=None):
    torch.manual_seed(0)
    mask_sizes = mask_sizes or sizes
    hp = max(-(-h // 32) * 32 for h, _ in sizes)
    wp = max(-(-w // 32) * 32 for _, w in sizes)
    hm, wm = max(h for h, _ in mask_sizes), max(w for _, w in mask_sizes)
    image = torch.zeros(len(sizes), 3, hp, wp)
    mask = torch.full((len(sizes), hm, wm), 255, dtype=torch.long)
    for i, ((h, w), (mh, mw)) in enumerate(zip(sizes, mask_sizes)):
        image[i, :, :h, :w] = torch.randn(3, h, w)
        mask[i, :mh, :mw] = torch.randint(0, 3, (mh, mw))
    return {"image": image, "mask": mask, "image_hw": torch.tensor(sizes), "mask_hw": torch.tensor(mask_sizes),
            "index": torch.arange(len(sizes))}


def test_whole_image_logits_are_cropped_to_each_original_size():
    batch = _batch([(40, 70), (64, 33)])
    out = _task().eval_outputs(pixelwise, batch)
    assert out.shape == (2, 3, 64, 70)
    torch.testing.assert_close(out[0, :, :40, :70], batch["image"][0, :, :40, :70])
    torch.testing.assert_close(out[1, :, :64, :33], batch["image"][1, :, :64, :33])
    assert (out[0, :, 40:] == 0).all()  # padding: masked out by the ignore index


def test_sliding_windows_equal_whole_image_inference_for_a_context_free_model():
    batch = _batch([(100, 150)])
    whole = _task().eval_outputs(pixelwise, batch)
    calls = []

    def counting(x):
        calls.append(tuple(x.shape[-2:]))
        return pixelwise(x)

    sliding = _task(sliding_window={"size": [64, 64], "stride": [32, 48]}).eval_outputs(counting, batch)
    torch.testing.assert_close(sliding, whole)
    # rows start at 0, 32 and 36 (flush with 100); columns at 0, 48 and 86 (flush with 150)
    assert set(calls) == {(64, 64)} and len(calls) == 3 * 3
    with pytest.raises(ValueError, match="multiples of 32"):
        _task(sliding_window={"size": [60, 64]})


def test_down_sized_images_are_scored_at_the_mask_resolution():
    # the image was shrunk 2x for the network; logits come back at the mask's 64 x 96
    batch = _batch([(32, 48)], mask_sizes=[(64, 96)])
    task = _task()
    out = task.eval_outputs(pixelwise, batch)
    assert out.shape == (1, 3, 64, 96)
    expected = torch.nn.functional.interpolate(batch["image"][:, :, :32, :48], size=(64, 96), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(out, expected)
    # metrics see exactly the argmax at the mask resolution, padding excluded
    task.update_metrics("val", task.predict(out, batch), batch)
    ours = task.compute_metrics("val")
    ref = SegmentationMetrics(3, class_names=["bg", "a", "b"])
    ref.update(expected.argmax(1), batch["mask"], batch["index"])
    assert ours["val/mIoU"] == pytest.approx(float(ref.compute()["mIoU"]))


def test_segmentation_uses_the_hrnetv2_head_with_480_channels_for_w32(compose_cfg):
    cfg = compose_cfg(["task=segmentation", "data=kvasir", "model=hrnet_w32", "data.crop_size=[96,96]"])
    assert cfg.task.head._target_.endswith("HRNetV2Head")
    assert compose_cfg(["task=segmentation", "data=kvasir", "head=heatmap"]).task.head._target_.endswith("HeatmapHead")

    class Meta:  # what build_module reads of a segmentation datamodule
        dataset_meta = {"num_classes": 2, "class_names": ["background", "polyp"], "ignore_index": 255}
        input_size_option = "data.crop_size"

        def __init__(self, cfg):
            self.input_size = tuple(cfg.data.crop_size)

    module = build_module(cfg, Meta(cfg))
    assert module.task.head.in_channels == 32 + 64 + 128 + 256
    cfg = compose_cfg(["task=segmentation", "data=kvasir", "data.crop_size=[100,96]"])
    with pytest.raises(ConfigError, match=r"data.crop_size=\[100, 96\]: each side must be a multiple of 32"):
        build_module(cfg, Meta(cfg))


@pytest.fixture(scope="module")
def seg_run(module_tmp, cache_dir):
    kvasir = shared_path("seg_kvasir")
    run_dir = module_tmp / "run"
    args = [
        "model=hrnet_w18", "task=segmentation", "data=kvasir", f"data.root={kvasir}", "data.crop_size=[64,64]",
        "data.eval_max_size=64", "data.num_workers=0", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=6", "trainer.limit_test_batches=4", "trainer.num_sanity_val_steps=0",
        "scheduler=poly", "seed=0", f"hydra.run.dir={run_dir}",
    ]
    run_script("train.py", args, cache_dir)
    return run_dir


def test_segmentation_run_logs_miou_dice_and_keeps_three_checkpoints(seg_run):
    names = sorted(p.name for p in (seg_run / "checkpoints").glob("*.ckpt"))
    assert any(n.startswith("best-val_mIoU-") for n in names) and any(n.startswith("best-val_loss-") for n in names)
    assert "last.ckpt" in names
    with open(seg_run / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/mIoU")]
    assert len(rows) == 2
    for key in ("val/mIoU", "val/dice", "val/pixel_acc", "val/iou_background", "val/iou_polyp", "val/loss"):
        assert all(0.0 <= float(r[key]) for r in rows), key
    record = json.loads((seg_run / "results.json").read_text())
    assert record["dataset_meta"]["class_names"] == ["background", "polyp"]
    assert record["best"]["val/mIoU"]["value"] == pytest.approx(max(float(r["val/mIoU"]) for r in rows))


def test_eval_from_the_best_miou_checkpoint_reproduces_the_logged_value(seg_run, cache_dir, tmp_path):
    record = json.loads((seg_run / "results.json").read_text())
    best = record["best"]["val/mIoU"]
    with open(seg_run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/mIoU") and int(r["epoch"]) == best["epoch"]][0]
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={ckpt}", "split=val", "trainer.limit_test_batches=6", f"hydra.run.dir={out}"],
               cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["val/mIoU"] == pytest.approx(best["value"], abs=1e-9)
    # Two steps in, the model still predicts background everywhere, so mIoU alone would not depend
    # on the model; the loss on the same logits does (same images, same resizing, same windows).
    assert summary["metrics"]["val/loss"] == pytest.approx(float(logged["val/loss"]), rel=1e-5)
    # The task's per-item table: IoU and Dice per class, the same IoUs as the logged per-class metrics.
    with open(out / "per_class.csv") as fh:
        rows = {r["class"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["background", "polyp"] and summary["tables"]["per_class"].endswith("per_class.csv")
    for name, row in rows.items():
        assert float(row["iou"]) == pytest.approx(summary["metrics"][f"val/iou_{name}"], rel=1e-6)
    # The report: per-class rows come from per-sample confusion matrices, the metric from its own states.
    assert sum(int(r["pixels_true"]) for r in rows.values()) > 0
    images = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(images) == 6  # limit_test_batches=6, one image per evaluation batch
    scored = sorted((float(r["foreground_iou"]), int(r["index"])) for r in images if r["foreground_iou"])
    facts = json.loads((out / "report.json").read_text())
    assert facts["gallery_worst"] == [index for _, index in scored[:4]]
    width, height = png_size(out / "confusion_matrix.png")
    assert 300 <= width <= 2000 and 200 <= height <= 2000
    html = (out / "report.html").read_text()
    assert len(embedded_images(html)) == 3  # confusion matrix, worst and best galleries


def test_eval_on_data_with_other_classes_names_both_counts(seg_run, cache_dir, tmp_path):
    record = json.loads((seg_run / "results.json").read_text())
    root = tmp_path / "three_classes"
    for i in range(3):
        write_image(root / "images" / f"{i}.png", np.full((64, 64, 3), 40 * i, np.uint8))
        write_image(root / "masks" / f"{i}.png", np.tile(np.arange(64, dtype=np.uint8) % 3, (64, 1)))
    proc = run_script("eval.py", [
        f"ckpt_path={record['checkpoints']['checkpoint_best_metric']['path']}", "data=seg_folder", f"data.root={root}",
        "data.num_classes=3", "data.value_map={0:0,1:1,2:2}", "data.val_fraction=0.34", "data.test_fraction=0",
        f"hydra.run.dir={tmp_path / 'eval'}"],
        cache_dir, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "AttributeError" not in output and "Traceback" not in output
    # refused before any weights load, naming both counts (jobs/eval_data.py: num_classes is what the head follows)
    assert "data.num_classes=3: the checkpoint" in output and "was trained with data.num_classes=2" in output


@pytest.mark.slow  # an eval.py subprocess (~15 s); keeps make test under 10 minutes
def test_a_segmentation_ensemble_is_refused_before_scoring(seg_run, cache_dir, tmp_path):
    """Seed ensembles average keypoints; segmentation has no combined scoring and says so by option."""
    record = json.loads((seg_run / "results.json").read_text())
    best, last = record["checkpoints"]["checkpoint_best_metric"]["path"], str(seg_run / "checkpoints" / "last.ckpt")
    proc = run_script("eval.py", [f"ckpt_path=[{best},{last}]", f"hydra.run.dir={tmp_path}"], cache_dir, check=False)
    assert proc.returncode != 0
    assert "ckpt_path: 2 checkpoints (a seed ensemble), but task=segmentation cannot score" in proc.stdout + proc.stderr
