"""Datamodules: splits, the batch contract, configs."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from hrexp.data.errors import DataError
from hrexp.data.landmarks.datamodule import (
    AasceDataModule,
    CocoLandmarkDataModule,
    CsvLandmarkDataModule,
    LandmarkDataModule,
    SyntheticSpineDataModule,
)
from hrexp.data.splits import split_indices
from hrexp.startup import CONFIG_DIR
from hrexp.data.sampling import TrainSampler
from tests.helpers import SHARED_DATA as SHARED, seed_all, write_image

AASCE = SHARED / "spine_aasce"
_aasce_present = pytest.mark.skipif(
    not (AASCE / "labels" / "training" / "landmarks.csv").is_file(),
    reason=f"shared AASCE spine data not found at {AASCE} (set HREXP_SHARED_DATA)",
)


def needs_aasce(test):
    """Real AASCE data: marked shared_data and skipped with a reason when absent."""
    return pytest.mark.shared_data(_aasce_present(test))


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic") / "spine"


@pytest.fixture(scope="module")
def synthetic_dm(synthetic_cache) -> SyntheticSpineDataModule:
    dm = SyntheticSpineDataModule(synthetic_cache, num_train=20, num_test=4, batch_size=8, num_keypoints=40)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    m = matrix.double()
    return points.double() @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]


def test_batch_contract(synthetic_dm):
    dm = synthetic_dm
    assert dm.num_keypoints == 40 and dm.keypoint_names[0] == "V01_tl" and dm.flip_pairs == []
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (17, 3, 4)
    assert dm.test_split_name == "test"
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, TrainSampler) and loader.drop_last is False
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert isinstance(dm.test_dataloader().sampler, SequentialSampler)
    batch = next(iter(loader))
    expected = {
        "image": ((8, 3, 256, 128), torch.float32),
        "keypoints": ((8, 40, 2), torch.float32),
        "visible": ((8, 40), torch.float32),
        "keypoints_orig": ((8, 40, 2), torch.float32),
        "visible_orig": ((8, 40), torch.float32),
        "matrix": ((8, 3, 3), torch.float32),
        "spacing": ((8,), torch.float32),
        "index": ((8,), torch.int64),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
    assert torch.all(batch["spacing"] == 0.5)
    assert set(batch["visible"].unique().tolist()) <= {0.0, 1.0}
    assert batch["visible_orig"].all()
    assert -3 < batch["image"].mean() < 3 and batch["image"].std() > 0.1  # normalised, not blank
    # keypoints_orig through the matrix land on the keypoints (augmented training batch)
    vis = batch["visible"].bool()
    assert vis.float().mean() > 0.9
    mapped = apply(batch["matrix"], batch["keypoints_orig"])
    assert (mapped - batch["keypoints"].double())[vis].abs().max() < 1e-3
    assert torch.all(batch["keypoints"][~vis] == 0)


def test_eval_loaders_are_ordered_and_not_augmented(synthetic_dm):
    dm = synthetic_dm
    val = list(dm.val_dataloader())
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(len(dm.val_set)))
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["index"].tolist() == [0, 1, 2, 3]
    # evaluation: the matrix is the plain fit of 512x256 into 256x128 (scale 0.5)
    np.testing.assert_allclose(test_batch["matrix"][0].numpy(), [[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]], atol=1e-6)
    again = next(iter(dm.test_dataloader()))
    assert torch.equal(again["image"], test_batch["image"])
    np.testing.assert_allclose(
        test_batch["keypoints_orig"][0].numpy(), dm.test_set.records[0].keypoints, atol=1e-4
    )


def test_setup_is_idempotent(synthetic_dm):
    train_set, datasets = synthetic_dm.train_set, synthetic_dm.datasets
    synthetic_dm.setup("fit")
    synthetic_dm.setup("test")
    assert synthetic_dm.train_set is train_set and synthetic_dm.datasets is datasets


def test_seeded_split_is_deterministic_and_independent_of_global_seed():
    seed_all(1)
    a = split_indices(100, 0.15, seed=0)
    seed_all(2)
    b = split_indices(100, 0.15, seed=0)
    c = split_indices(100, 0.15, seed=1)
    assert a == b and a != c
    train, val = a
    assert len(train) == 85 and len(val) == 15
    assert sorted(train + val) == list(range(100))
    assert split_indices(2, 0.15, 0)[1] != []  # at least one validation image
    with pytest.raises(ValueError):
        split_indices(10, 1.0, 0)


def test_split_uses_split_seed(synthetic_cache, synthetic_dm):
    other = SyntheticSpineDataModule(synthetic_cache, num_train=20, num_test=4, split_seed=0)
    other.setup()
    assert [r.image_path for r in other.val_set.records] == [r.image_path for r in synthetic_dm.val_set.records]
    shifted = SyntheticSpineDataModule(synthetic_cache, num_train=20, num_test=4, split_seed=5)
    shifted.setup()
    assert {r.image_path for r in shifted.val_set.records} != {r.image_path for r in synthetic_dm.val_set.records}
    train_paths = {r.image_path for r in synthetic_dm.train_set.records}
    val_paths = {r.image_path for r in synthetic_dm.val_set.records}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 20


def test_properties_need_setup(tmp_path):
    dm = CsvLandmarkDataModule(csv=tmp_path / "x.csv")
    with pytest.raises(RuntimeError, match="setup"):
        dm.num_keypoints


# ----------------------------------------------------------------------------- CSV / COCO


def write_csv_dataset(folder: Path, n: int, name: str = "train.csv", k: int = 3) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    header = ["image"] + [f"p{j}_{a}" for j in range(k) for a in "xy"]
    lines = [",".join(header)]
    for i in range(n):
        write_image(folder / "img" / f"{i}.png", np.full((40, 30, 3), 50 + i, np.uint8))
        lines.append(",".join([f"img/{i}.png"] + [str(5.0 + j + i % 3) for j in range(2 * k)]))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_without_test_file_tests_on_val(tmp_path, caplog):
    csv = write_csv_dataset(tmp_path, 10)
    dm = CsvLandmarkDataModule(csv=str(csv), image_size=[32, 32], batch_size=4, pixel_spacing=0.25)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.test_split_name == "val" and dm.test_set is dm.val_set
    assert "validation split" in caplog.text
    assert (len(dm.train_set), len(dm.val_set)) == (8, 2)  # round(10 * 0.15) = 2
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and torch.all(batch["spacing"] == 0.25)


def test_a_test_split_is_carved_beside_val_when_asked(tmp_path):
    """data.test_fraction: a seeded test split from the one training file, disjoint from train and val; the val
    images with test_fraction=0 are untouched (the default keeps every earlier split); a given val file stays."""
    csv = write_csv_dataset(tmp_path, 20)

    def images(dm, split):
        return {str(r.image_path) for r in dm.splits[split].records}

    dm = CsvLandmarkDataModule(csv=str(csv), image_size=[32, 32], test_fraction=0.2, split_seed=3)
    dm.setup()
    # round(20 * 0.2) = 4 test, round(20 * 0.15) = 3 val images
    assert dm.test_split_name == "test" and (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (13, 3, 4)
    train, val, test = (images(dm, s) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test) and len(train | val | test) == 20
    again = CsvLandmarkDataModule(csv=str(csv), image_size=[32, 32], test_fraction=0.2, split_seed=3)
    again.setup()
    assert images(again, "test") == test  # seeded
    plain = CsvLandmarkDataModule(csv=str(csv), image_size=[32, 32], split_seed=3)
    plain.setup()
    assert plain.test_split_name == "val" and len(plain.val_set) == 3
    given = CsvLandmarkDataModule(csv=str(csv), val_csv=str(write_csv_dataset(tmp_path, 2, "val.csv")),
                                  image_size=[32, 32], test_fraction=0.25)
    given.setup()
    assert (len(given.train_set), len(given.val_set), len(given.test_set)) == (15, 2, 5)
    with pytest.raises(ValueError, match="data.test_fraction=1.5"):
        CsvLandmarkDataModule(csv=str(csv), image_size=[32, 32], test_fraction=1.5)


def test_csv_explicit_splits(tmp_path):
    train = write_csv_dataset(tmp_path, 4)
    val = write_csv_dataset(tmp_path, 2, "val.csv")
    test = write_csv_dataset(tmp_path, 3, "test.csv")
    dm = CsvLandmarkDataModule(csv=train, val_csv=val, test_csv=test, image_size=(32, 32))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 3)
    assert dm.test_split_name == "test"
    assert len(dm.train_dataloader()) == 1


def test_bad_data_fails_in_setup(tmp_path):
    csv = write_csv_dataset(tmp_path, 5)
    (tmp_path / "img" / "3.png").unlink()
    dm = CsvLandmarkDataModule(csv=csv)
    with pytest.raises(DataError, match=r"row 4: image not found"):
        dm.setup()
    mismatch = CsvLandmarkDataModule(csv=write_csv_dataset(tmp_path / "ok", 5), num_keypoints=40)
    with pytest.raises(DataError, match="num_keypoints"):
        mismatch.setup()
    other = write_csv_dataset(tmp_path / "k4", 2, k=4)
    with pytest.raises(DataError, match="expected the same"):
        CsvLandmarkDataModule(csv=write_csv_dataset(tmp_path / "k3", 4), test_csv=other).setup()
    with pytest.raises(DataError, match="'val' is empty"):
        CsvLandmarkDataModule(csv=write_csv_dataset(tmp_path / "one", 1)).setup()


def test_flip_true_without_pairs_is_a_config_error(tmp_path):
    dm = CsvLandmarkDataModule(csv=write_csv_dataset(tmp_path, 4), flip=True)
    with pytest.raises(ValueError, match="flip pairs"):
        dm.setup()


def test_coco_flip_pairs_switch_flip_on(tmp_path):
    write_image(tmp_path / "a.png", height=50, width=40, value=0)
    data = {
        "images": [{"id": i, "file_name": "a.png"} for i in range(4)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "keypoints": [10, 20, 2, 30, 20, 2]} for i in range(4)
        ],
        "categories": [{"id": 1, "keypoints": ["left", "right"], "flip_pairs": [["left", "right"]]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    dm = CocoLandmarkDataModule(json=tmp_path / "ann.json", image_size=(50, 40))
    dm.setup()
    assert dm.flip_pairs == [(0, 1)]
    assert dm.datasets["train"].transform.flip and not dm.datasets["val"].transform.train
    off = CocoLandmarkDataModule(json=tmp_path / "ann.json", flip=False)
    off.setup()
    assert not off.datasets["train"].transform.flip


# ----------------------------------------------------------------------------- AASCE


@needs_aasce
def test_aasce_datamodule():
    dm = AasceDataModule(AASCE, num_keypoints=68, batch_size=2)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (409, 72, 128)
    assert dm.test_split_name == "test" and dm.num_keypoints == 68
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 128)
    assert torch.isnan(batch["spacing"]).all()  # no pixel spacing known
    vis = batch["visible"].bool()
    mapped = apply(batch["matrix"], batch["keypoints_orig"])
    assert (mapped - batch["keypoints"].double())[vis].abs().max() < 1e-3


# ----------------------------------------------------------------------------- Hydra configs


def _compose(tmp_path: Path, data: str, overrides: list[str]):
    hydra = pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir

    primary = tmp_path / "primary"
    primary.mkdir(exist_ok=True)
    (primary / "main.yaml").write_text(
        "defaults:\n  - data: synthetic_spine\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{CONFIG_DIR}\n"
        f"paths:\n  shared_data: {SHARED}\n  cache_dir: {tmp_path / 'cache'}\n"
    )
    assert hydra
    with initialize_config_dir(str(primary), version_base=None):
        return compose("main", overrides=[f"data={data}", *overrides])


@pytest.mark.parametrize(
    "name,cls",
    [
        ("synthetic_spine", SyntheticSpineDataModule),
        ("landmarks_csv", CsvLandmarkDataModule),
        ("landmarks_coco", CocoLandmarkDataModule),
        ("spine_aasce", AasceDataModule),
    ],
)
def test_data_configs_list_every_argument(tmp_path, name, cls):
    cfg = _compose(tmp_path, name, [])
    data = cfg.data
    assert data["_target_"] == f"hrexp.data.landmarks.datamodule.{cls.__name__}"
    assert list(data.image_size) == [256, 128]
    expected = set(inspect.signature(cls.__init__).parameters) | set(
        inspect.signature(LandmarkDataModule.__init__).parameters
    )
    expected -= {"self", "common"}
    assert expected == set(data.keys()) - {"_target_"}


def test_synthetic_config_instantiates(tmp_path):
    from hydra.utils import instantiate

    cfg = _compose(tmp_path, "synthetic_spine", ["data.num_train=6", "data.num_test=2", "data.batch_size=2"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, SyntheticSpineDataModule)
    # one folder per parameter set under the configured cache folder
    assert dm.cache_dir.parent == tmp_path / "cache" / "synthetic_spine" and dm.cache_dir.name.startswith("v1-")
    dm.prepare_data()
    dm.setup()
    assert dm.num_keypoints == 40 and len(dm.test_set) == 2 and len(dm.val_set) == 1
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 256, 128)


def test_worker_processes_give_the_same_batches(synthetic_dm):
    synthetic_dm.num_workers = 2
    try:
        with_workers = next(iter(synthetic_dm.val_dataloader()))
    finally:
        synthetic_dm.num_workers = 0
    in_process = next(iter(synthetic_dm.val_dataloader()))
    assert torch.equal(with_workers["image"], in_process["image"])
    assert torch.equal(with_workers["keypoints"], in_process["keypoints"])
