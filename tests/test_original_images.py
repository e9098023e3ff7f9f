"""``data.refine_scale``: the landmark batches (and predict.py's) carry the un-augmented original, reduced by
1/refine_scale with INTER_AREA, zero-padded in the batch, with the scale that maps original pixels onto it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import hrexp.data.images
from hrexp.data.landmarks.datamodule import CsvLandmarkDataModule
from hrexp.data.landmarks.originals import collate_originals, refine_factor
from hrexp.prediction.preprocess import preparer_for
from hrexp.prediction.image_source import collate_images, read_original
from hrexp.training.build import build_datamodule
from hrexp.training.checkpoint_config import rebuild_config
from hrexp.training.checkpoint_model import load_checkpoint
from tests.conftest import compose_for
from tests.fit_helpers import TINY_W18, fit
from tests.helpers import write_image
from tests.test_predict import run_predict

SYNTHETIC = [o for o in TINY_W18 if o.startswith("data.")]


def reference(path: Path, factor: int) -> np.ndarray:
    """The file read with OpenCV as RGB uint8 ``[3, h, w]``, reduced by ``factor`` with INTER_AREA (the last row /
    column repeated up to a multiple of ``factor`` first)."""
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if factor > 1:
        h, w = rgb.shape[:2]
        rgb = cv2.copyMakeBorder(rgb, 0, -h % factor, 0, -w % factor, cv2.BORDER_REPLICATE)
        rgb = cv2.resize(rgb, (rgb.shape[1] // factor, rgb.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return rgb.transpose(2, 0, 1)


def check_batch(batch: dict, records, factor: int) -> None:
    """Every sample's ``original`` is its file reduced by ``factor``, zero-padded; scale and sizes agree."""
    originals = batch["original"]
    assert originals.dtype == torch.uint8 and originals.ndim == 4 and originals.shape[1] == 3
    assert batch["original_scale"].dtype == torch.float32 and batch["original_scale"].shape == (len(originals),)
    assert torch.all(batch["original_scale"] == 1.0 / factor)
    assert batch["original_hw"].dtype == torch.int64 and batch["original_hw"].shape == (len(originals), 2)
    assert tuple(originals.shape[-2:]) == tuple(batch["original_hw"].max(0).values.tolist())
    for i, index in enumerate(batch["index"].tolist()):
        want = reference(records[index].image_path, factor)
        hs, ws = batch["original_hw"][i].tolist()
        assert (hs, ws) == want.shape[1:]
        assert torch.equal(originals[i, :, :hs, :ws], torch.from_numpy(want))
        assert originals[i, :, hs:].eq(0).all() and originals[i, :, :, ws:].eq(0).all()


@pytest.mark.parametrize("scale,cache", [(1.0, True), (0.5, True), (0.5, False)])
def test_synthetic_batches_carry_the_reduced_original(compose_cfg, tmp_path, scale, cache):
    overrides = [*SYNTHETIC, f"data.refine_scale={scale}"] + ([] if cache else ["data.image_cache=null"])
    dm = build_datamodule(compose_cfg(overrides).data)
    factor = round(1 / scale)
    assert dm.collate_fn("train") is collate_originals and dm.refine_factor == factor
    for split in ("train", "val"):
        batch = next(iter(dm.dataloader(split)))
        check_batch(batch, dm.splits[split].records, factor)
        n = len(batch["index"])
        assert batch["image"].shape == (n, 3, 64, 32) and batch["keypoints"].shape == (n, 40, 2)  # as without it
        assert batch["original"].shape == (n, 3, 128 // factor, 64 // factor)


def write_bright_pixel_set(folder: Path) -> Path:
    """A CSV set with one landmark, at a single white pixel of a dark colour image; two image sizes, neither a
    multiple of 2 or 3 on every side."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image,tip_x,tip_y"]
    for i, (h, w) in enumerate([(41, 30), (37, 51)] * 3):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0], image[..., 1], image[..., 2] = 10, 25, 40 + i  # BGR: a colour image, channels told apart
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if i == 1:
            x, y = w - 1, h - 1  # on the repeated edge
        image[y, x] = 255
        write_image(folder / f"{i}.png", image)
        rows.append(f"{i}.png,{x},{y}")
    (folder / "tips.csv").write_text("\n".join(rows) + "\n")
    return folder / "tips.csv"


@pytest.mark.parametrize("scale", [0.5, 1 / 3])
def test_padded_batch_of_two_sizes_and_the_keypoint_lands_on_its_pixel(compose_cfg, tmp_path, scale):
    csv = write_bright_pixel_set(tmp_path / "tips")
    cfg = compose_cfg(["data=landmarks_csv", f"data.csv={csv}", f"data.val_csv={csv}", "data.image_size=[32,32]",
                       "data.batch_size=2", "data.num_workers=0", f"data.refine_scale={scale}",
                       f"data.image_cache={tmp_path / 'cache'}"])
    dm = build_datamodule(cfg.data)
    factor = round(1 / scale)
    for split in ("train", "val"):
        for batch in dm.dataloader(split):
            check_batch(batch, dm.splits[split].records, factor)
            if split == "val":  # in file order: one image of each size in every batch
                sizes = {tuple(-(-s // factor) for s in size) for size in [(41, 30), (37, 51)]}
                assert {tuple(v) for v in batch["original_hw"].tolist()} == sizes
            # original px -> `original` px with the pixel-centre rule: the white pixel is the brightest there
            mapped = (batch["keypoints_orig"][:, 0] + 0.5) * batch["original_scale"][:, None] - 0.5
            for i in range(len(mapped)):
                brightness = batch["original"][i].int().sum(0)
                y, x = divmod(int(brightness.argmax()), brightness.shape[1])
                assert (x, y) == tuple(torch.round(mapped[i]).int().tolist())


def test_off_by_default(tmp_path):
    csv = write_bright_pixel_set(tmp_path)
    dm = CsvLandmarkDataModule(csv=csv, image_size=(32, 32), batch_size=2)
    dm.setup()
    assert dm.collate_fn("train") is None and dm.collate_fn("val") is None and dm.refine_factor is None
    batch = next(iter(dm.val_dataloader()))
    assert not {"original", "original_scale", "original_hw"} & set(batch)


@pytest.mark.parametrize("bad", [0.3, 2.0, -1, 0, "half", True])
def test_a_bad_refine_scale_is_refused_by_name(tmp_path, bad):
    with pytest.raises(ValueError, match=r"data\.refine_scale="):
        CsvLandmarkDataModule(csv=tmp_path / "x.csv", refine_scale=bad)


def test_good_refine_scales_and_the_config_error(compose_cfg):
    assert [refine_factor(s) for s in (None, 1, 1.0, 0.5, 0.333, 1 / 3, 0.25, 0.1)] == [None, 1, 1, 2, 3, 3, 4, 10]
    with pytest.raises(Exception, match=r"data\.refine_scale=0\.3: .*not a whole number"):
        build_datamodule(compose_cfg([*SYNTHETIC, "data.refine_scale=0.3"]).data)


def test_a_second_epoch_decodes_nothing(tmp_path, monkeypatch):
    csv = write_bright_pixel_set(tmp_path / "tips")
    decoded = []

    class CountingCv2:  # hrexp's decoder (load_image) counts its reads; the test's own reference reads do not
        def __getattr__(self, name):
            return getattr(cv2, name)

        def imread(self, path, *args):
            decoded.append(path)
            return cv2.imread(path, *args)

    monkeypatch.setattr(hrexp.data.images, "cv2", CountingCv2())
    # 41x30 into 16x16: the network sees the images at under half their size (the shrunk-image cache's case)
    dm = CsvLandmarkDataModule(csv=csv, val_csv=csv, image_size=(16, 16), batch_size=3, refine_scale=1.0,
                               image_cache=tmp_path / "cache")
    dm.setup()
    for epoch in range(2):
        decoded.clear()
        for batch in dm.train_dataloader():
            check_batch(batch, dm.splits["train"].records, 1)
        # first epoch: each image once for the network's reduced copy and once for the original; then none
        assert len(decoded) == (12 if epoch == 0 else 0)
    for epoch in range(2):  # evaluation sees the images smaller (no scale jitter): other network copies, same originals
        decoded.clear()
        for batch in dm.val_dataloader():
            check_batch(batch, dm.splits["val"].records, 1)
        assert len(decoded) <= 6 if epoch == 0 else decoded == []
    # without a cache the original is made from the image the network input was warped from: one decode each
    dm = CsvLandmarkDataModule(csv=csv, val_csv=csv, image_size=(16, 16), batch_size=3, refine_scale=1.0)
    dm.setup()
    decoded.clear()
    check_batch(next(iter(dm.val_dataloader())), dm.splits["val"].records, 1)
    assert len(decoded) == 3


def test_predict_gives_the_datamodules_original(module_tmp, cache_dir):
    cfg = compose_for([*TINY_W18, "data.refine_scale=0.5", "trainer.max_epochs=1", "test=false"],
                      module_tmp / "refine", "train")
    trainer, _ = fit(cfg)
    path = module_tmp / "refine.ckpt"
    trainer.save_checkpoint(path)
    run_cfg = rebuild_config(load_checkpoint(str(path)))
    assert run_cfg.data.refine_scale == 0.5
    preparer = preparer_for(run_cfg)
    dataset = trainer.datamodule.datasets["val"]
    items = []
    for index in range(2):
        image_path = Path(dataset.landmark_set.records[index].image_path)
        samples = preparer(read_original(image_path), image_path)
        assert len(samples) == 1
        assert torch.equal(samples[0]["original"], dataset[index]["original"])
        assert samples[0]["original_scale"] == dataset[index]["original_scale"] == 0.5
        items.append({"file": str(image_path), "index": index, "size": (128, 64), "picture": None, "samples": samples})
    inputs = collate_images(items, preparer.collate).inputs
    batch = collate_originals([dataset[0], dataset[1]])
    for key in ("original", "original_scale", "original_hw", "matrix"):
        assert torch.equal(inputs[key], batch[key]), key
    # the network input of the datamodule went through the uint16 image cache: equal to its quantisation
    assert torch.allclose(inputs["image"], batch["image"], atol=1e-3)
    # and predict.py runs through with the originals in its batches
    files = [Path(dataset.landmark_set.records[i].image_path) for i in range(2)]
    summary = run_predict(path, files, module_tmp / "predicted", "batch_size=2")
    assert summary["counts"]["predicted"] == 2
