"""The datamodule base and its hooks, across the three families, and new formats written only here.

A new annotation format is a subclass of a family base that implements ``read_splits()`` only: the
pose and segmentation formats below read CSV files of this test's own, and must give exactly what
the shipped COCO / folder formats give on the same data.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import default_collate

from hrexp.data.errors import DataError
from hrexp.data.landmarks.csv_reader import read_landmarks_csv
from hrexp.data.landmarks.datamodule import CsvLandmarkDataModule
from hrexp.data.paths import resolve_path
from hrexp.data.pose.datamodule import CocoPoseDataModule, PoseDataModule
from hrexp.data.pose.reader import PoseInstance, split_from_instances
from hrexp.data.segmentation.datamodule import SegDataModule, SegFolderDataModule
from hrexp.data.segmentation.reader import SegSet
from tests.helpers import write_image

FALLBACK = "the test split is the validation split"
POSE_NAMES = ["head", "left_hand", "right_hand", "feet"]
POSE_META = {"names": POSE_NAMES, "flip_pairs": [["left_hand", "right_hand"]], "sigmas": [0.05] * 4,
             "skeleton": [["head", "feet"]], "upper_body": ["head", "left_hand", "right_hand"]}


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- data written by the tests
def landmark_csv(folder: Path, n: int = 6) -> Path:
    """``n`` images with 2 landmarks; spacing 0.5 mm/px."""
    rng = np.random.default_rng(0)
    lines = ["image,pixel_spacing,a_x,a_y,b_x,b_y"]
    for i in range(n):
        write_image(folder / "img" / f"{i}.png", random_image(rng, 40, 30))
        lines.append(f"img/{i}.png,0.5,{3 + i},{4 + i},{20 - i},{30 - i}")
    path = folder / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def pose_people(folder: Path) -> tuple[list[dict], list[dict]]:
    """4 images (60 x 80) with 6 people; returns (images, people) as plain dicts and writes the images."""
    rng = np.random.default_rng(1)
    images, people = [], []
    for image_id, count in zip((11, 12, 13, 14), (2, 1, 2, 1)):
        name = f"p{image_id}.png"
        write_image(folder / "images" / name, random_image(rng, 60, 80))
        images.append({"id": image_id, "file_name": name, "height": 60, "width": 80})
        for _ in range(count):
            x, y = float(rng.integers(0, 40)), float(rng.integers(0, 20))
            w, h = float(rng.integers(15, 40)), float(rng.integers(20, 40))
            kp = np.stack([rng.uniform(x, x + w, 4), rng.uniform(y, y + h, 4)], axis=1).round(2)
            visible = rng.random(4) > 0.2
            visible[0] = True
            people.append({"image_id": image_id, "bbox": [x, y, w, h], "keypoints": kp, "visible": visible})
    return images, people


def write_pose_coco(folder: Path, images: list[dict], people: list[dict]) -> Path:
    annotations = []
    for n, p in enumerate(people):
        flat = np.zeros((4, 3))
        flat[p["visible"], :2] = p["keypoints"][p["visible"]]
        flat[p["visible"], 2] = 2
        annotations.append({"id": n + 1, "image_id": p["image_id"], "category_id": 1, "keypoints": flat.ravel().tolist(),
                            "num_keypoints": int(p["visible"].sum()), "area": p["bbox"][2] * p["bbox"][3],
                            "bbox": p["bbox"], "iscrowd": 0})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": POSE_NAMES, "skeleton": [[1, 4]]}]}
    path = folder / "people.json"
    path.write_text(json.dumps(data))
    return path


def write_pose_csv(folder: Path, images: list[dict], people: list[dict]) -> Path:
    """This test's own pose format: one row per person, image size, box, keypoints (empty when unlabelled)."""
    by_id = {im["id"]: im for im in images}
    header = ["image_id", "image", "height", "width", "x", "y", "w", "h"] + [f"{n}_{a}" for n in POSE_NAMES for a in "xy"]
    path = folder / "tables" / "people.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for p in people:
            im = by_id[p["image_id"]]
            cells = []
            for (x, y), vis in zip(p["keypoints"], p["visible"]):
                cells += [repr(float(x)), repr(float(y))] if vis else ["", ""]
            writer.writerow([im["id"], f"../images/{im['file_name']}", im["height"], im["width"], *p["bbox"], *cells])
    return path


class CsvPoseDataModule(PoseDataModule):
    """A pose format of this test only: ``read_splits()`` is all it implements."""

    def __init__(self, people_csv: str | Path, **common):
        super().__init__(**common)
        self.people_csv = self.resolve_path(people_csv)

    def read_splits(self):
        meta = self.load_metadata()
        instances = []
        with open(self.people_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                visible = np.array([row[f"{n}_x"] != "" for n in meta.names])
                kp = np.array([[float(row[f"{n}_x"] or "nan"), float(row[f"{n}_y"] or "nan")] for n in meta.names])
                instances.append(PoseInstance(
                    image_id=int(row["image_id"]),
                    image_path=resolve_path(row["image"], self.people_csv.parent),
                    image_size=(int(row["height"]), int(row["width"])),
                    bbox=np.array([float(row[k]) for k in "xywh"]),
                    keypoints=kp,
                    visible=visible,
                ))
        return {"train": split_from_instances(meta, instances, str(self.people_csv)), "val": None, "test": None}


def seg_folder(folder: Path) -> Path:
    """7 image/mask pairs of different sizes (3 classes) in ``images/`` and ``masks/``."""
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(40, 50), (33, 64), (48, 48), (20, 70), (64, 31), (45, 45), (38, 52)]):
        write_image(folder / "images" / f"s{i}.png", random_image(rng, h, w))
        write_image(folder / "masks" / f"s{i}.png", rng.integers(0, 3, (h, w), dtype=np.uint8))
    return folder


class CsvSegDataModule(SegDataModule):
    """A segmentation format of this test only: a CSV listing ``id,image,mask`` (paths relative to it)."""

    def __init__(self, pairs_csv: str | Path, **common):
        super().__init__(**common)
        self.pairs_csv = self.resolve_path(pairs_csv)

    def read_splits(self):
        base = self.pairs_csv.parent
        with open(self.pairs_csv, newline="") as fh:
            pairs = [(r["id"], resolve_path(r["image"], base), resolve_path(r["mask"], base)) for r in csv.DictReader(fh)]
        return {"train": SegSet(pairs, source=str(self.pairs_csv)), "val": None, "test": None}


SEG_OPTIONS = dict(num_classes=3, value_map={0: 0, 1: 1, 2: 2}, crop_size=(32, 32), batch_size=3, eval_batch_size=2,
                   val_fraction=0.3)


# ---------------------------------------------------------------------------------- one datamodule per family
def make_landmarks(tmp_path: Path, **kw):
    return CsvLandmarkDataModule(csv=landmark_csv(tmp_path), image_size=(32, 24), batch_size=2, val_fraction=0.34, **kw)


def make_pose(tmp_path: Path, **kw):
    json_path = write_pose_coco(tmp_path, *pose_people(tmp_path))
    return CocoPoseDataModule(train_json=json_path, train_images=tmp_path / "images", val_json=json_path,
                              val_images=tmp_path / "images", metadata=POSE_META, image_size=(32, 24), batch_size=2, **kw)


def make_seg(tmp_path: Path, **kw):
    return SegFolderDataModule(seg_folder(tmp_path), **(SEG_OPTIONS | dict(test_fraction=0.0) | kw))


FAMILIES = {"landmarks": make_landmarks, "pose": make_pose, "segmentation": make_seg}


def all_batches(loader) -> list[dict]:
    return list(loader)


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_without_a_test_split_the_base_tests_on_val_with_one_warning(tmp_path, caplog, family):
    dm = FAMILIES[family](tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
        dm.setup("test")  # idempotent: no second read, no second warning
    warnings = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert len(warnings) == 1 and type(dm).__name__ in warnings[0].getMessage()
    assert dm.test_split_name == "val"
    assert dm.splits["test"] is dm.splits["val"]
    assert_same_batches(all_batches(dm.test_dataloader()), all_batches(dm.val_dataloader()))


def test_a_given_test_split_is_named_test_without_warning(tmp_path, caplog):
    dm = make_seg(tmp_path, test_fraction=0.2)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.test_split_name == "test" and FALLBACK not in caplog.text
    assert len(dm.splits["test"]) == 1 and dm.splits["test"] is not dm.splits["val"]


@pytest.mark.parametrize("family, size, option", [
    ("landmarks", (32, 24), "data.image_size"),
    ("pose", (32, 24), "data.image_size"),
    ("segmentation", (32, 32), "data.crop_size"),
])
def test_input_size_and_its_option_per_family(tmp_path, family, size, option):
    dm = FAMILIES[family](tmp_path)
    assert dm.input_size == size and dm.input_size_option == option  # known before setup
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape[-2:]) == size  # what the network sees in training


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_and_loaders_need_setup_and_name_the_class(tmp_path, family):
    dm = FAMILIES[family](tmp_path)
    for use in (lambda: dm.splits, lambda: dm.dataset_meta, dm.train_dataloader, lambda: dm.dataloader("val")):
        with pytest.raises(RuntimeError, match=rf"{type(dm).__name__}: call setup\(\)"):
            use()
    dm.setup()
    with pytest.raises(ValueError, match="split must be one of"):
        dm.dataloader("validation")


@pytest.mark.parametrize("family", ["landmarks", "pose"])
def test_keypoint_families_use_torchs_default_collate(tmp_path, family):
    dm = FAMILIES[family](tmp_path)
    dm.setup()
    assert dm.collate_fn("train") is None and dm.val_dataloader().collate_fn is default_collate
    dataset = dm.datasets["val"]
    expected = default_collate([dataset[0], dataset[1]])
    assert_same_batches([next(iter(dm.val_dataloader()))], [expected])


def test_segmentation_batches_are_padded_by_its_collate_hook(tmp_path):
    dm = make_seg(tmp_path, val_fraction=0.4)
    dm.setup()
    assert dm.collate_fn("val") is not None
    batch = next(iter(dm.val_dataloader()))
    pairs = dm.val_pairs
    sizes = [tuple(batch["mask_hw"][i].tolist()) for i in range(2)]
    assert sizes[0] != sizes[1]  # different sizes: default collate could not stack them
    padded = [-(-max(s[d] for s in sizes) // 32) * 32 for d in (0, 1)]  # the largest side, up to a multiple of 32
    assert list(batch["image"].shape[-2:]) == padded
    assert tuple(batch["mask"].shape[1:]) == (max(s[0] for s in sizes), max(s[1] for s in sizes))
    for i, (h, w) in enumerate(sizes):
        raw = cv2.imread(str(pairs[int(batch["index"][i])][2]), cv2.IMREAD_GRAYSCALE).astype(np.int64)
        np.testing.assert_array_equal(batch["mask"][i, :h, :w].numpy(), raw)
        assert (batch["mask"][i, h:] == 255).all() and (batch["mask"][i, :, w:] == 255).all()
        assert (batch["image"][i, :, h:] == 0).all() and (batch["image"][i, :, :, w:] == 0).all()
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (3, 3, 32, 32) and train["mask"].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------- paths
def test_resolve_path(tmp_path, monkeypatch):
    assert resolve_path(None) is None and resolve_path("") is None
    assert resolve_path("a/../b/c.png", tmp_path / "root") == tmp_path / "root" / "b" / "c.png"
    assert resolve_path(tmp_path / "abs.json", "/elsewhere") == tmp_path / "abs.json"
    assert resolve_path("~/x.json", tmp_path) == Path(os.path.expanduser("~")) / "x.json"
    monkeypatch.chdir(tmp_path)
    assert resolve_path("rel/./x.json") == tmp_path / "rel" / "x.json"  # no base: the working directory


def test_datamodule_paths_are_relative_to_root(tmp_path):
    images, people = pose_people(tmp_path)
    write_pose_coco(tmp_path, images, people)
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 11, "category_id": 1, "bbox": [1, 2, 30, 40],
                                                      "score": 0.9}]))
    dm = CocoPoseDataModule(root=tmp_path, train_json="people.json", train_images="images", val_json="./people.json",
                            val_images="images", test_json="people.json", test_images="images",
                            test_bbox_file="sub/../dets.json", metadata=POSE_META)
    assert dm.paths["train_json"] == dm.paths["val_json"] == tmp_path / "people.json"
    assert dm.paths["train_images"] == tmp_path / "images" and dm.test_bbox_file == tmp_path / "dets.json"
    assert dm.resolve_path("/abs/x") == Path("/abs/x")
    dm.setup()
    assert len(dm.splits["test"]) == 1 and dm.splits["test"].boxes == str(tmp_path / "dets.json")


# ---------------------------------------------------------------------------------- new formats
def test_a_new_pose_format_gives_the_coco_modules_batches(tmp_path):
    images, people = pose_people(tmp_path)
    common = dict(metadata=POSE_META, image_size=(32, 24), batch_size=2, val_fraction=0.25, split_seed=3)
    coco = CocoPoseDataModule(train_json=write_pose_coco(tmp_path, images, people), train_images=tmp_path / "images",
                              **common)
    ours = CsvPoseDataModule(write_pose_csv(tmp_path, images, people), **common)
    coco.setup()
    ours.setup()
    assert ours.dataset_meta == coco.dataset_meta and ours.dataset_meta["flip_pairs"] == [[1, 2]]
    assert ours.test_split_name == coco.test_split_name == "val"
    for split in ("train", "val", "test"):
        assert [i.image_id for i in ours.splits[split].instances] == [i.image_id for i in coco.splits[split].instances]
        # the ground truth OKS AP is scored against: implied by the people, equal to the COCO file's
        assert ours.splits[split].ground_truth == coco.splits[split].ground_truth
    assert {i.image_id for i in ours.splits["val"].instances} != {i.image_id for i in ours.splits["train"].instances}
    assert ours.datasets["train"].transform.flip  # flip pairs in the metadata: flip on
    for split in ("train", "val", "test"):
        seed_everything(0)
        expected = all_batches(coco.dataloader(split))
        seed_everything(0)
        assert_same_batches(all_batches(ours.dataloader(split)), expected)


def test_a_new_segmentation_format_gives_the_folder_modules_pairs_and_batches(tmp_path):
    root = seg_folder(tmp_path / "set")
    lines = ["id,image,mask"] + [f"s{i},set/images/s{i}.png,./set/masks/s{i}.png" for i in range(7)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    options = SEG_OPTIONS | dict(test_fraction=0.2, split_seed=5)
    folder = SegFolderDataModule(root, **options)
    ours = CsvSegDataModule(tmp_path / "pairs.csv", **options)
    folder.setup()
    ours.setup()
    for split in ("train", "val", "test"):
        assert ours.splits[split].pairs == folder.splits[split].pairs
    assert [len(ours.splits[s]) for s in ("train", "val", "test")] == [4, 2, 1]
    assert ours.class_pixel_counts.tolist() == folder.class_pixel_counts.tolist()
    assert ours.dataset_meta == folder.dataset_meta
    for split in ("train", "val", "test"):
        seed_everything(0)
        expected = all_batches(folder.dataloader(split))
        seed_everything(0)
        assert_same_batches(all_batches(ours.dataloader(split)), expected)


# ---------------------------------------------------------------------------------- wide CSV: columns that match nothing
def write_csv(tmp_path: Path, header: str, row: str) -> Path:
    write_image(tmp_path / "a.png")
    path = tmp_path / "ann.csv"
    path.write_text(f"{header}\n{row}\n")
    return path


def csv_warnings(caplog, path: Path, **kw) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hrexp.data.landmarks.csv_reader"):
        read_landmarks_csv(path, **kw)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_misnamed_spacing_column_is_named_with_the_option_to_set(tmp_path, caplog):
    path = write_csv(tmp_path, "image,PixelSpacing,L1_x,L1_y", "a.png,0.3,1,2")
    messages = csv_warnings(caplog, path)
    column = [m for m in messages if "'PixelSpacing'" in m]
    assert len(column) == 1 and str(path) in column[0] and "is not used" in column[0]
    assert "set data.spacing_column=PixelSpacing" in column[0]
    assert sum("mm metrics will be missing" in m for m in messages) == 1 and len(messages) == 2
    # a default spacing: no "unknown spacing" line, the column is still named
    messages = csv_warnings(caplog, path, pixel_spacing=0.3)
    assert len(messages) == 1 and "data.spacing_column=PixelSpacing" in messages[0]


def test_upper_case_coordinates_and_image_columns_get_their_hints(tmp_path, caplog):
    path = write_csv(tmp_path, "patient,file,pixel_spacing,L1_x,L1_y,L2_X,L2_Y", "p7,a.png,0.5,1,2,3,4")
    messages = csv_warnings(caplog, path)
    upper = [m for m in messages if "'L2_X'" in m]
    assert len(upper) == 1 and "lower-case _x/_y" in upper[0] and "'L2_x'" in upper[0]
    image = [m for m in messages if "'file'" in m]
    assert len(image) == 1 and "set data.image_column=file" in image[0]
    assert len(messages) == 3 and not any("'patient'" in m for m in messages)  # the first column: the image column
    with pytest.raises(DataError, match="lower-case _x/_y"):
        read_landmarks_csv(write_csv(tmp_path / "up", "image,L1_X,L1_Y", "a.png,1,2"))


def test_an_ordinary_extra_column_gets_one_plain_line(tmp_path, caplog):
    path = write_csv(tmp_path, "image,patient_id,pixel_spacing,L1_x,L1_y", "a.png,p7,0.5,1,2")
    messages = csv_warnings(caplog, path)
    assert len(messages) == 1 and "'patient_id' is not used" in messages[0] and "set data." not in messages[0]
    assert len(read_landmarks_csv(path)) == 1  # a warning, not an error
    # no spacing column at all: a patient id is still not taken for one
    path = write_csv(tmp_path / "no_spacing", "image,patient_id,age,L1_x,L1_y", "a.png,p7,54,1,2")
    messages = csv_warnings(caplog, path, pixel_spacing=0.5)
    assert len(messages) == 2 and all("is not used" in m and "set data." not in m for m in messages)


def test_a_clean_file_reads_without_warnings(tmp_path, caplog):
    path = write_csv(tmp_path, "image,pixel_spacing,L1_x,L1_y,L2_x,L2_y", "a.png,0.5,1,2,,")
    assert csv_warnings(caplog, path) == []
    other = write_csv(tmp_path / "no_spacing", "image,L1_x,L1_y", "a.png,1,2")
    assert csv_warnings(caplog, other, pixel_spacing=0.5) == []
    assert csv_warnings(caplog, other, spacing_column=None) == []
