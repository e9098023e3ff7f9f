"""Segmentation data from folders: pairing, mask decoding, the datamodule's checks, splits and loaders
(the transforms and the padding collate are in test_seg_data_transforms.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hrexp.data.errors import DataError
from hrexp.data.segmentation.datamodule import SegFolderDataModule
from hrexp.data.segmentation.reader import MaskDecoder, pair_folder
from hrexp.data.splits import split_three
from tests.helpers import seed_all, shared_path


def write_folder(root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], image_ext=".png", mask_ext=".png") -> Path:
    """Writes ``images/<id><ext>`` and ``masks/<id><ext>`` (uint8 arrays) under ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for stem, (image, mask) in items.items():
        if image is not None:
            assert cv2.imwrite(str(root / "images" / f"{stem}{image_ext}"), image)
        if mask is not None:
            assert cv2.imwrite(str(root / "masks" / f"{stem}{mask_ext}"), mask)
    return root


def simple_pair(h=24, w=32, value=1) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 100, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = value
    return image, mask


def raw_binary(mask_path: Path) -> np.ndarray:
    """Independent decoding of a Kvasir JPG mask: gray > 127."""
    return (cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.int64)


# ---------------------------------------------------------------------------------- real data: Kvasir
@pytest.fixture(scope="module")
def kvasir_dm() -> SegFolderDataModule:
    dm = SegFolderDataModule(shared_path("seg_kvasir"), num_classes=2, class_names=["background", "polyp"], threshold=127)
    dm.setup()
    return dm


def test_kvasir_masks_through_the_dataset_are_exactly_binary(kvasir_dm):
    dataset = kvasir_dm.datasets["val"]  # eval transform: the mask as decoded, at original resolution
    seen, noisy = set(), 0
    for i in range(40):
        _, _, mask_path = dataset.pairs[i]
        item = dataset[i]
        values = set(torch.unique(item["mask"]).tolist())
        assert values <= {0, 1}, (mask_path, values)
        seen |= values
        np.testing.assert_array_equal(item["mask"].numpy(), raw_binary(mask_path))
        raw = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        noisy += int(np.any((raw != 0) & (raw != 255)))
        assert item["image"].shape == (3, 256, 256) and tuple(item["mask_hw"].tolist()) == (256, 256)
    assert seen == {0, 1}
    # The JPG masks really hold values other than 0/255, so the threshold matters.
    assert noisy >= 30


def test_kvasir_setup_splits_and_counts_class_pixels(kvasir_dm):
    dm = kvasir_dm
    assert (len(dm.train_pairs), len(dm.val_pairs), len(dm.test_pairs)) == (638, 80, 80)
    assert dm.dataset_meta == {"num_classes": 2, "class_names": ["background", "polyp"], "ignore_index": 255}
    counts = dm.class_pixel_counts
    assert counts.dtype == np.int64 and counts.shape == (2,)
    expected_fg = sum(int(raw_binary(m).sum()) for _, _, m in dm.train_pairs)
    assert counts[1] == expected_fg and counts.sum() == len(dm.train_pairs) * 256 * 256
    assert 0.05 < counts[1] / counts.sum() < 0.3  # polyps are a minority class


def test_kvasir_jpg_masks_fail_a_value_map_naming_the_file():
    mask_path = sorted((shared_path("seg_kvasir") / "masks").iterdir())[0]
    with pytest.raises(DataError) as err:
        MaskDecoder(2, value_map={0: 0, 255: 1}).decode(mask_path)
    message = str(err.value)
    assert str(mask_path) in message and "unexpected value" in message and "[0, 255]" in message
    noisy = sorted(set(np.unique(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)).tolist()) - {0, 255})
    assert str(noisy[0]) in message

    # The datamodule checks every mask in setup(), before any training.
    dm = SegFolderDataModule(shared_path("seg_kvasir_tiny"), num_classes=2, value_map={0: 0, 255: 1})
    with pytest.raises(DataError) as err:
        dm.setup()
    assert "masks/cju0qkwl35piu0993l0dewei2.jpg" in str(err.value) and "unexpected value" in str(err.value)


@pytest.mark.parametrize("eval_max_size", [None, 512])
def test_kvasir_tiny_goes_through_the_padded_eval_loader(eval_max_size):
    root = shared_path("seg_kvasir_tiny")
    dm = SegFolderDataModule(root, num_classes=2, threshold=127, val_root=root, eval_batch_size=2,
                             eval_max_size=eval_max_size)
    dm.setup()
    pairs = dm.val_pairs
    assert len(pairs) == 5
    seen = 0
    for batch in dm.val_dataloader():
        b, _, hp, wp = batch["image"].shape
        assert hp % 32 == 0 and wp % 32 == 0
        assert batch["mask"].dtype == torch.int64 and batch["image_hw"].dtype == torch.int64
        assert tuple(batch["mask"].shape[1:]) == tuple(batch["mask_hw"].max(0).values.tolist())
        for i in range(b):
            _, _, mask_path = pairs[int(batch["index"][i])]
            expected = raw_binary(mask_path)
            mh, mw = batch["mask_hw"][i].tolist()
            ih, iw = batch["image_hw"][i].tolist()
            assert (mh, mw) == expected.shape  # scored at the original resolution
            if eval_max_size is None:
                assert (ih, iw) == (mh, mw)
            else:
                assert max(ih, iw) == min(eval_max_size, max(mh, mw))
                assert abs(ih / iw - mh / mw) < 0.01
            np.testing.assert_array_equal(batch["mask"][i, :mh, :mw].numpy(), expected)
            assert (batch["mask"][i, mh:] == 255).all() and (batch["mask"][i, :, mw:] == 255).all()
            assert (batch["image"][i, :, ih:] == 0).all() and (batch["image"][i, :, :, iw:] == 0).all()
            seen += 1
    assert seen == 5


# ---------------------------------------------------------------------------------- pairing and decoding errors
def test_pairing_pairs_by_stem_in_id_order(tmp_path):
    root = write_folder(tmp_path, {"b": simple_pair(), "a": simple_pair()}, image_ext=".jpg", mask_ext=".png")
    (root / "images" / "notes.txt").write_text("not an image")
    pairs = pair_folder(root)
    assert [p[0] for p in pairs] == ["a", "b"]
    assert pairs[0][1].name == "a.jpg" and pairs[0][2].name == "a.png"


def test_image_without_mask_is_named(tmp_path):
    root = write_folder(tmp_path, {"a": simple_pair(), "b": simple_pair(), "lonely": (simple_pair()[0], None)})
    with pytest.raises(DataError) as err:
        pair_folder(root)
    assert "lonely.png" in str(err.value) and "have no mask" in str(err.value) and "(1)" in str(err.value)


def test_mask_without_image_is_named(tmp_path):
    root = write_folder(tmp_path, {"a": simple_pair(), "orphan": (None, simple_pair()[1])})
    with pytest.raises(DataError) as err:
        pair_folder(root)
    assert "orphan.png" in str(err.value) and "have no image" in str(err.value)


def test_duplicated_stems_and_missing_folders_are_errors(tmp_path):
    root = write_folder(tmp_path / "dup", {"a": simple_pair()})
    cv2.imwrite(str(root / "images" / "a.jpg"), simple_pair()[0])
    with pytest.raises(DataError) as err:
        pair_folder(root)
    assert "a.jpg and a.png" in str(err.value)
    with pytest.raises(DataError) as err:
        pair_folder(tmp_path / "nowhere")
    assert "nowhere/images" in str(err.value) and "not found" in str(err.value)


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    image, _ = simple_pair(20, 30)
    _, mask = simple_pair(20, 31)
    root = write_folder(tmp_path, {f"ok{i}": simple_pair() for i in range(4)} | {"bad": (image, mask)})
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1})
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert "images/bad.png" in message and "masks/bad.png" in message
    assert "(20, 30)" in message and "(20, 31)" in message


def test_value_not_in_the_map_names_the_file_and_the_values(tmp_path):
    items = {f"ok{i}": simple_pair() for i in range(4)}
    items["odd"] = simple_pair(value=5)
    root = write_folder(tmp_path, items)
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1})
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert "masks/odd.png" in message and "unexpected value(s) 5" in message and "keys [0, 1]" in message
    assert "ok0" not in message


def test_value_map_to_ignore_and_colour_masks(tmp_path):
    mask = np.array([[0, 7, 26], [26, 0, 7]], np.uint8)  # Cityscapes-like label ids
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    decoded = MaskDecoder(3, value_map={0: 255, 7: 0, 26: 2}).decode(tmp_path / "m.png")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, [[255, 0, 2], [2, 255, 0]])
    # A gray mask saved as 3 equal channels is gray; a colour mask is an error naming the file.
    cv2.imwrite(str(tmp_path / "gray3.png"), np.repeat(mask[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(MaskDecoder(3, value_map={0: 255, 7: 0, 26: 2}).decode(tmp_path / "gray3.png"), decoded)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (0, 0, 128)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(DataError, match="colour.png: the mask is a colour image"):
        MaskDecoder(3, value_map={0: 0}).decode(tmp_path / "colour.png")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_classes=2), "exactly one of value_map"),
        (dict(num_classes=2, value_map={0: 0}, threshold=127), "exactly one of value_map"),
        (dict(num_classes=2, value_map={0: 0, 255: 2}), "value_map maps to class ids outside [0, 2)"),
        (dict(num_classes=3, threshold=127), "num_classes must be 2"),
        (dict(num_classes=2, threshold=127, ignore_index=1), "ignore_index"),
    ],
)
def test_bad_decoder_options_are_value_errors(kwargs, words):
    with pytest.raises(ValueError) as err:
        MaskDecoder(**kwargs)
    assert words in str(err.value)


def test_datamodule_options_checked_at_construction(tmp_path):
    with pytest.raises(ValueError, match="class_names has 1 names"):
        SegFolderDataModule(tmp_path, num_classes=2, class_names=["bg"], threshold=127)
    dm = SegFolderDataModule(tmp_path, num_classes=3, value_map={0: 0, 1: 1, 2: 2})
    assert dm.class_names == ["background", "class1", "class2"]
    with pytest.raises(RuntimeError, match="call setup"):
        dm.dataset_meta


# ---------------------------------------------------------------------------------- splits
def folder_of(root: Path, ids: list[str]) -> Path:
    return write_folder(root, {i: simple_pair(16, 16) for i in ids})


def test_seeded_split_is_deterministic_disjoint_and_independent_of_the_global_seed(tmp_path):
    ids = [f"img{i:02d}" for i in range(30)]
    root = folder_of(tmp_path, ids)

    def splits(seed: int, global_seed: int):
        seed_all(global_seed)
        dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1}, split_seed=seed,
                                 val_fraction=0.2, test_fraction=0.1)
        dm.setup()
        return tuple([p[0] for p in pairs] for pairs in (dm.train_pairs, dm.val_pairs, dm.test_pairs))

    train, val, test = splits(0, 1)
    assert (len(train), len(val), len(test)) == (21, 6, 3)
    assert set(train) | set(val) | set(test) == set(ids)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert splits(0, 2) == (train, val, test)
    assert splits(1, 1) != (train, val, test)
    assert split_three(30, 0.2, 0.1, 0) == split_three(30, 0.2, 0.1, 0)
    # The test part depends only on the seed and test_fraction.
    assert split_three(30, 0.3, 0.1, 0)[2] == split_three(30, 0.2, 0.1, 0)[2]


def test_val_and_test_roots_are_respected(tmp_path):
    root = folder_of(tmp_path / "train", [f"t{i}" for i in range(10)])
    val_root = folder_of(tmp_path / "val", ["v0", "v1", "v2"])
    test_root = folder_of(tmp_path / "test", ["x0", "x1"])
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1}, val_root=val_root, test_root=test_root)
    dm.setup()
    assert [p[0] for p in dm.train_pairs] == [f"t{i}" for i in range(10)]
    assert [p[0] for p in dm.val_pairs] == ["v0", "v1", "v2"]
    assert [p[0] for p in dm.test_pairs] == ["x0", "x1"] and dm.test_split_name == "test"
    assert dm.class_pixel_counts.tolist() == [10 * (256 - 16), 10 * 16]

    # val_root only: the test split comes from root; test_fraction 0: test is the val split.
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1}, val_root=val_root, test_fraction=0.2)
    dm.setup()
    assert len(dm.train_pairs) == 8 and len(dm.test_pairs) == 2 and dm.test_pairs[0][0].startswith("t")
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1}, test_fraction=0.0)
    dm.setup()
    assert dm.test_split_name == "val" and dm.test_pairs == dm.val_pairs


def test_train_loader_batches_crops(tmp_path):
    root = write_folder(tmp_path, {f"i{k}": simple_pair(40 + k, 50) for k in range(6)})
    dm = SegFolderDataModule(root, num_classes=2, value_map={0: 0, 1: 1}, crop_size=(48, 40), batch_size=4,
                             val_fraction=0.2, test_fraction=0.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 40) and batch["mask"].dtype == torch.int64
    assert set(torch.unique(batch["mask"]).tolist()) <= {0, 1, 255}
    assert sorted(batch["index"].tolist()) == sorted(set(batch["index"].tolist()))
