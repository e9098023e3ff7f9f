"""DDP on two CPU processes (gloo), launched from the script as users do: metrics are synced exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import run_script

DDP_TINY = [
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    # 33 images -> 28 train / 5 val: 3 + 2 on two ranks; a padding sampler would score one image twice.
    "data.num_train=33",
    "data.num_test=4",
    "data.original_size=[128,64]",
    "data.image_size=[64,32]",
    "data.batch_size=4",
    "seed=0",
]


def _eval_single_and_ddp(run: Path, tmp_path: Path, cache_dir: Path) -> dict[str, dict[str, float]]:
    """eval.py on the run's last checkpoint and its validation split, in one process and on 2 gloo ranks."""
    values = {}
    for name, extra in (("single", []), ("ddp", ["trainer=ddp_cpu"])):
        out = tmp_path / f"eval_{name}"  # not the training run's folder
        run_script("eval.py", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", *extra,
                               f"hydra.run.dir={out}"], cache_dir)
        values[name] = json.loads((out / "summary.json").read_text())["metrics"]
    return values


# Measured differences from one process (2026-12-06, this 2-core CPU): none in metrics made of counts (SDR, IoU,
# Dice, pixel accuracy); 1-2 float32 ulps in means of float errors (MRE, val/loss; relative 2.1e-7 at most): the
# float32 sums run in another order, and an image alone in a batch of one on one process is computed with other
# rounding than in a batch of three on a rank (its heatmaps differ by 7e-7). A sample scored twice (Lightning's
# padding sampler, tried) moved val/mre by 5e-3 and val/loss by 3e-3 relative, and val/sdr_4 from 0.01 to 0.0083.
FLOAT_REL = 1e-6


def _assert_same_metrics(logged: dict[str, str], values: dict[str, dict[str, float]], counted: tuple[str, ...],
                         summed: tuple[str, ...]) -> None:
    """The DDP training run's validation (its CSV row) equals eval.py on 2 ranks bit for bit (the same batches);
    both equal one process's eval: ``counted`` metrics bit for bit, ``summed`` ones to float32 rounding."""
    for key in (*counted, *summed):
        train, ddp, single = float(logged[key]), values["ddp"][key], values["single"][key]
        assert train == ddp, f"{key}: DDP training {train!r}, DDP eval {ddp!r}"
        if key in counted:
            assert ddp == single, f"{key}: DDP {ddp!r}, one process {single!r}"
        else:
            assert ddp == pytest.approx(single, rel=FLOAT_REL), f"{key}: DDP {ddp!r}, one process {single!r}"


@pytest.mark.slow  # ~70 s: a DDP run on 2 gloo processes and its single-process eval
def test_ddp_validation_metrics_equal_single_process_eval(tmp_path, cache_dir):
    """An odd validation set (5 images) on 2 ranks: MRE, SDR and the loss count each image once."""
    run = tmp_path / "ddp"
    proc = run_script("train.py", [*DDP_TINY, f"hydra.run.dir={run}"], cache_dir)
    with open(run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/mre")]
    assert len(logged) == 1
    record = json.loads((run / "results.json").read_text())
    assert record["global_batch_size"] == 4 * 2  # data.batch_size is per process
    assert "4 per process x 2 processes x 1 accumulated = 8 samples per optimizer step" in proc.stdout + proc.stderr

    # The same weights scored by one process on the whole validation split, and by eval.py on 2 ranks.
    values = _eval_single_and_ddp(run, tmp_path, cache_dir)
    _assert_same_metrics(logged[0], values, counted=("val/sdr_4", "val/sdr_8", "val/sdr_24"),
                         summed=("val/mre", "val/mre_mm", "val/loss"))


@pytest.mark.slow  # ~2 min: 60 DDP steps, so that the model finds people and a duplicate would count
def test_ddp_pose_ap_on_an_odd_split_equals_single_process_eval(tmp_path, cache_dir):
    """11 validation people on 2 ranks (6 + 5: hrexp's evaluation sampler repeats nobody; Lightning's
    default would pad to 12, and the metric would then drop the repeat by index).

    OKS NMS is off so that a repeated prediction would count (as a false positive): the logged
    val/AP must equal one process scoring the 11 people.
    """
    from tests.helpers import shared_path

    coco = shared_path("pose_coco_samples", "coco")
    raw = json.loads((coco / "test_coco.json").read_text())
    labelled = [a for a in raw["annotations"] if a["num_keypoints"] > 0]
    raw["annotations"] = [a for a in raw["annotations"] if a["id"] != labelled[-1]["id"]]
    val = tmp_path / "val11.json"
    val.write_text(json.dumps(raw))
    run = tmp_path / "ddp_pose"
    args = [
        # 60 steps at lr 1e-3 without augmentation: enough for a non-zero AP, so a duplicate would show
        "trainer=ddp_cpu", "trainer.max_epochs=60", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
        "trainer.check_val_every_n_epoch=60", "optimizer.lr=1e-3", "scheduler.warmup_epochs=0",
        "data.scale=[1,1]", "data.rotation=0", "data.half_body_prob=0", "data.flip=false", "task.flip_test=false",
        "callbacks.progress_bar=null",
        "model=hrnet_w18", "task=pose", "task.oks_nms_threshold=null", "data=coco_pose", f"data.root={coco}",
        "data.train_json=test_coco.json", "data.train_images=null", f"data.val_json={val}", f"data.val_images={coco}",
        "data.image_size=[128,96]", "data.batch_size=6", "data.num_workers=0", "seed=0", "test=false",
        f"hydra.run.dir={run}",
    ]
    run_script("train.py", args, cache_dir)
    with open(run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/AP")]
    assert len(logged) == 1
    assert float(logged[0]["val/AP50"]) > 0, "the model must find someone for the comparison to mean anything"
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    single = json.loads((out / "summary.json").read_text())["metrics"]
    for key in ("val/AP", "val/AP50", "val/AR"):
        assert float(logged[0][key]) == pytest.approx(single[key], abs=1e-9), key


def _write_seg_folder(root, n: int = 15, size: int = 64) -> None:
    """``n`` image/mask pairs: a bright random rectangle (class 1, mask value 255) on a dark background."""
    import numpy as np

    from tests.helpers import write_image

    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        h, w = rng.integers(8, size // 2, 2)
        image[y:y + h, x:x + w] += 150
        mask[y:y + h, x:x + w] = 255
        write_image(root / "images" / f"{i:02d}.png", image)
        write_image(root / "masks" / f"{i:02d}.png", mask)


@pytest.mark.slow  # ~1.5 min: a DDP run and two evals
def test_ddp_segmentation_metrics_and_loss_equal_single_process_eval(tmp_path, cache_dir):
    """15 pairs -> 3 val images on 2 ranks (2 + 1): mIoU, Dice and the loss count each image once."""
    data = tmp_path / "seg"
    _write_seg_folder(data)
    run = tmp_path / "ddp"
    run_script("train.py", [
        "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null", "model=hrnet_w18", "task=segmentation", "data=seg_folder", f"data.root={data}",
        "data.num_classes=2", "data.value_map={0:0,255:1}", "data.val_fraction=0.2", "data.test_fraction=0.2",
        "data.crop_size=[64,64]", "data.batch_size=2", "data.num_workers=0", "test=false", "seed=0",
        f"hydra.run.dir={run}"], cache_dir)
    with open(run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/mIoU")]
    assert len(logged) == 1
    values = _eval_single_and_ddp(run, tmp_path, cache_dir)
    _assert_same_metrics(logged[0], values, counted=("val/mIoU", "val/dice", "val/pixel_acc"), summed=("val/loss",))


@pytest.mark.slow  # ~1.5 min: two DDP jobs
def test_only_rank_zero_writes_run_folders_inside_a_ddp_multirun(tmp_path, cache_dir):
    """Lightning relaunches each job's script for rank 1: it must not write records, configs or folders."""
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", *DDP_TINY, "seed=0,1", "test=false", f"hydra.sweep.dir={sweep}"], cache_dir,
               env={"PROJECT_ROOT": str(tmp_path)})
    status = json.loads((sweep / "sweep_status.json").read_text())
    assert [job["status"] for job in status["jobs"]] == ["finished", "finished"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "logs").exists(), "a rank wrote a run folder of its own under the project root"
    for job in ("0", "1"):
        assert len(list((sweep / job).rglob("results.json"))) == 1
        assert len(list((sweep / job).rglob("config.yaml"))) == 2  # the resolved one and Hydra's in .hydra/
        with open(sweep / job / "csv" / "metrics.csv") as fh:
            assert len([r for r in csv.DictReader(fh) if r.get("val/mre")]) == 1
