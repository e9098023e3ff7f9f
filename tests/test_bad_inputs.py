"""Bad input, one test per case: a clear message naming the file, row, field or option, and nothing already
written lost. The table in docs/errors.md is generated from these cases (test_errors_doc_matches_the_cases):
``HREXP_WRITE_ERRORS_DOC=1 .venv/bin/python -m pytest tests/test_bad_inputs.py -k doc`` rewrites it."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fit_helpers import TINY_W18
from tests.helpers import ROOT, run_script, write_image

DOC = ROOT / "docs" / "errors.md"
START, END = "<!-- errors-table:start -->", "<!-- errors-table:end -->"


# ----------------------------------------------------------------------------- helpers
def _landmark_csv(folder: Path, rows: list[str], header: str = "image,p1_x,p1_y") -> Path:
    path = folder / "ann.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _validate_csv(path: Path) -> None:
    from hrexp.data.landmarks.csv_reader import read_landmarks_csv
    from hrexp.data.landmarks.validation import validate_landmark_set

    validate_landmark_set(read_landmarks_csv(path), split="train")


def _error(fn: Callable[[], object], kind: type[BaseException] = Exception) -> str:
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def _train(overrides: list[str], tmp: Path, base: list[str] = TINY_W18) -> str:
    """The error ``train()`` raises for these overrides (composed as train.py would), before any training."""
    from tests.conftest import compose_for
    from hrexp.jobs.train_run import train

    cfg = compose_for([*base, *overrides], tmp)
    message = _error(lambda: train(cfg))
    assert not (tmp / "run" / "checkpoints").exists(), "nothing may be trained or written before the check"
    return message


def _tiny_checkpoint(folder: Path, model: str = "hrnet_w18", keep_optimizer: bool = True) -> Path:
    """A checkpoint as train.py writes it (run config inside), of a tiny landmark model, without training."""
    from tests.conftest import compose_for
    from hrexp.training.build import build_datamodule, build_module

    cfg = compose_for([*TINY_W18, f"model={model}"], folder)
    module = build_module(cfg, build_datamodule(cfg.data))
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0,
            "hrexp": {"config": module.run_config, "dataset_meta": module.dataset_meta}}
    if keep_optimizer:
        ckpt["optimizer_states"] = [{}]
    path = folder / f"{model}.ckpt"
    torch.save(ckpt, path)
    return path


class _WritesAFile:
    """A pickle payload: unpickling it would create ``path`` (what a malicious 'checkpoint' would do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- the cases
def missing_image(tmp: Path) -> str:
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["gone.png,1,2"])))


def unreadable_image(tmp: Path) -> str:
    (tmp / "a.png").write_text("not an image")
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,1,2"])))


def truncated_image(tmp: Path) -> str:
    path = write_image(tmp / "a.jpg", np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 4 // 5])  # an interrupted copy (OpenCV would decode it, grey below the cut)
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.jpg,10,20"])))


def image_16_bit(tmp: Path) -> str:
    from hrexp.data.images import load_image

    pixels = np.array([[0, 65535], [32768, 1000]], np.uint16)
    write_image(tmp / "x.png", pixels)
    image = load_image(tmp / "x.png")
    np.testing.assert_allclose(image, pixels / 65535.0, rtol=1e-6)
    return f"loads: {image.shape[0]} x {image.shape[1]} gray, full 16-bit depth scaled to [0, 1]"


def image_rgba(tmp: Path) -> str:
    from hrexp.data.images import load_image

    Image.fromarray(np.array([[[255, 0, 0, 10], [0, 255, 0, 255]]], np.uint8), "RGBA").save(tmp / "x.png")
    image = load_image(tmp / "x.png")
    np.testing.assert_allclose(image, [[[1, 0, 0], [0, 1, 0]]])
    return "loads: RGB, the alpha channel dropped"


def image_gray(tmp: Path) -> str:
    from hrexp.data.images import load_image

    write_image(tmp / "x.png", np.array([[0, 255]], np.uint8))
    image = load_image(tmp / "x.png")
    np.testing.assert_allclose(image, [[0, 1]])
    return "loads: one channel (replicated to 3 after the geometric transform)"


def image_palette(tmp: Path) -> str:
    from hrexp.data.images import load_image

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp / "x.png")
    image = load_image(tmp / "x.png")
    np.testing.assert_allclose(image, [[[1, 0, 0], [0, 0, 1]]])
    return "loads: RGB, the palette applied"


def bad_json(tmp: Path) -> str:
    from hrexp.data.landmarks.coco_reader import read_coco_keypoints

    (tmp / "ann.json").write_text('{"images": [}')
    return _error(lambda: read_coco_keypoints(tmp / "ann.json"))


def empty_csv(tmp: Path) -> str:
    (tmp / "ann.csv").write_text("")
    return _error(lambda: _validate_csv(tmp / "ann.csv"))


def no_landmark_columns(tmp: Path) -> str:
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,1,2"], header="image,P1_X,P1_Y")))


def wrong_coordinate_count(tmp: Path) -> str:
    write_image(tmp / "a.png")
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,1,2", "a.png,3"], header="image,p1_x,p1_y")))


def nan_coordinate(tmp: Path) -> str:
    write_image(tmp / "a.png")
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,nan,2"])))


def infinite_coordinate(tmp: Path) -> str:
    write_image(tmp / "a.png")
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,1,inf"])))


def coordinates_far_outside(tmp: Path) -> str:
    write_image(tmp / "a.png", height=20, width=30)
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,15,250"])))  # 250 in a 20-pixel-high image


def same_image_twice(tmp: Path) -> str:
    write_image(tmp / "a.png")
    return _error(lambda: _validate_csv(_landmark_csv(tmp, ["a.png,1,2", "./a.png,3,4"])))


def unknown_option(tmp: Path) -> str:
    return _error(lambda: _train(["model=hrnet_w99"], tmp))


def unknown_key(tmp: Path) -> str:
    return _error(lambda: _train(["data.imagesize=[64,32]"], tmp))


def num_keypoints_disagree(tmp: Path) -> str:
    return _train(["data.num_keypoints=41"], tmp)


def image_size_not_divisible(tmp: Path) -> str:
    return _train(["data.image_size=[60,30]"], tmp)


def sigma_not_positive(tmp: Path) -> str:
    return _train(["task.codec.sigma=0"], tmp)


def empty_split(tmp: Path) -> str:
    return _train(["data=landmarks_csv", f"data.csv={_landmark_csv(tmp, [])}", "data.image_size=[64,32]"], tmp,
                  base=["model=hrnet_w18"])


def text_as_checkpoint(tmp: Path) -> str:
    (tmp / "notes.ckpt").write_text("these are my notes")
    return _train([f"ckpt_path={tmp / 'notes.ckpt'}"], tmp)


def truncated_checkpoint(tmp: Path) -> str:
    path = _tiny_checkpoint(tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _train([f"ckpt_path={path}"], tmp)


def pickle_with_code(tmp: Path) -> str:
    payload, evidence = tmp / "payload.ckpt", tmp / "pwned.txt"
    with open(payload, "wb") as fh:
        pickle.dump({"state_dict": _WritesAFile(evidence)}, fh)
    message = _train([f"ckpt_path={payload}"], tmp)
    assert not evidence.exists(), "loading the checkpoint ran its code"
    return message


def torch_saved_pickle_with_code(tmp: Path) -> str:
    """The same payload inside torch.save's zip format (what a tampered .ckpt would look like)."""
    payload, evidence = tmp / "payload.ckpt", tmp / "pwned.txt"
    torch.save({"state_dict": _WritesAFile(evidence)}, payload)
    message = _train([f"ckpt_path={payload}"], tmp)
    assert not evidence.exists(), "loading the checkpoint ran its code"
    return message


def checkpoint_of_another_model(tmp: Path) -> str:
    return _train([f"ckpt_path={_tiny_checkpoint(tmp, model='unet')}"], tmp)


def weights_only_checkpoint_to_resume(tmp: Path) -> str:
    return _train([f"ckpt_path={_tiny_checkpoint(tmp, keep_optimizer=False)}"], tmp)


def run_folder_reused(tmp: Path) -> str:
    from tests.conftest import compose_for
    from hrexp.jobs.train_run import run_job

    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"the earlier run's weights")
    (run / "results.json").write_text(json.dumps({"status": "finished"}))
    message = _error(lambda: run_job(compose_for(TINY_W18, tmp)))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"the earlier run's weights"
    assert json.loads((run / "results.json").read_text()) == {"status": "finished"}
    assert not (run / "config.yaml").exists()
    return message


# (id, input, the function, a fragment the message must hold: file / row / field / option and what was expected)
CASES = [
    ("image-missing", "an image file that is not there", missing_image, "image not found: "),
    ("image-unreadable", "a file that is not an image", unreadable_image, "not a readable image file"),
    ("image-truncated", "a JPEG cut short mid-file", truncated_image, "truncated (no end marker)"),
    ("image-16-bit", "a 16-bit grayscale PNG", image_16_bit, "full 16-bit depth"),
    ("image-rgba", "an RGBA PNG", image_rgba, "alpha channel dropped"),
    ("image-gray", "an 8-bit grayscale PNG", image_gray, "one channel"),
    ("image-palette", "a palette PNG", image_palette, "palette applied"),
    ("json-malformed", "malformed COCO JSON", bad_json, "not a readable JSON file"),
    ("csv-empty", "an empty CSV", empty_csv, "the file is empty: expected a header row"),
    ("csv-no-columns", "a CSV without <name>_x/<name>_y columns", no_landmark_columns, "lower-case _x/_y"),
    ("csv-field-count", "a row with a missing coordinate field", wrong_coordinate_count, "row 2: expected 3 fields"),
    ("csv-nan", "a NaN coordinate", nan_coordinate, "expected a finite number or an empty cell, got 'nan'"),
    ("csv-inf", "an infinite coordinate", infinite_coordinate, "expected a finite number or an empty cell, got 'inf'"),
    ("csv-outside", "a landmark far outside its image", coordinates_far_outside, "far outside the 30 x 20"),
    ("csv-duplicate", "the same image listed twice", same_image_twice, "already listed in row 1"),
    ("config-option", "an unknown config group option", unknown_option, "Could not find 'model/hrnet_w99'"),
    ("config-key", "an unknown config key", unknown_key, "Could not override 'data.imagesize'"),
    ("config-num-keypoints", "data.num_keypoints against the data", num_keypoints_disagree,
     "field num_keypoints: the config expects 41 landmarks"),
    ("config-image-size", "data.image_size not divisible by the stride", image_size_not_divisible,
     "data.image_size=[60, 30]: each side must be a multiple of 32"),
    ("config-sigma", "task.codec.sigma <= 0", sigma_not_positive, "task.codec.sigma): expected > 0"),
    ("data-empty-split", "an annotation file with no rows", empty_split, "split 'train' is empty"),
    ("ckpt-text", "a text file as ckpt_path", text_as_checkpoint, "not a PyTorch checkpoint"),
    ("ckpt-truncated", "a checkpoint cut short", truncated_checkpoint, "not a complete PyTorch checkpoint"),
    ("ckpt-pickle-code", "a pickle carrying code as ckpt_path", pickle_with_code, "refused: the file holds pickled"),
    ("ckpt-zip-pickle-code", "the same inside torch.save's zip format", torch_saved_pickle_with_code,
     "refused: the file holds pickled"),
    ("ckpt-other-model", "another model's checkpoint to resume", checkpoint_of_another_model,
     "it is not a checkpoint of this run's model"),
    ("ckpt-weights-only", "a weights-only (best-*) checkpoint to resume", weights_only_checkpoint_to_resume,
     "it holds weights only"),
    ("run-folder-reused", "hydra.run.dir of another run", run_folder_reused, "already holds the checkpoints of another run"),
]
# Covered by other tests (their messages are in the table's notes): eval.py with a checkpoint of another
# task or of data that does not fit (test_train_e2e, test_seg_task, test_pose_e2e); a full disk and a kill
# mid-write (test_checkpoints); a NaN loss (test_nonfinite).

MESSAGES: dict[str, str] = {}


@pytest.mark.parametrize("case_id, what, make, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, what, make, expected, tmp_path, cache_dir):
    message = make(tmp_path)
    assert expected in message, message
    MESSAGES[case_id] = _portable(message, tmp_path, cache_dir)


def _portable(message: str, tmp: Path, cache_dir: Path) -> str:
    """The message with this machine's folders named by role, so the table is the same on every clone."""
    for folder, name in ((tmp, "<dir>"), (cache_dir, "<cache>"), (ROOT, "<repo>")):
        message = message.replace(str(folder), name)
    return message


def _table(messages: dict[str, str]) -> str:
    rows = ["| case | input | what hrexp says |", "|---|---|---|"]
    for case_id, what, _, _ in CASES:
        text = " ".join(messages[case_id].split()).replace("|", "\\|")
        rows.append(f"| `{case_id}` | {what} | {text} |")
    return "\n".join(rows)


def test_errors_doc_matches_the_cases(tmp_path_factory, cache_dir):
    """docs/errors.md holds every case's message as the cases produce it (run alone, it produces them)."""
    for case_id, _, make, _ in CASES:
        if case_id not in MESSAGES:
            tmp = tmp_path_factory.mktemp(case_id)
            MESSAGES[case_id] = _portable(make(tmp), tmp, cache_dir)
    table = _table(MESSAGES)
    text = DOC.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    current = text[start:end].strip()
    if os.environ.get("HREXP_WRITE_ERRORS_DOC"):
        DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:])
        return
    assert current == table, ("docs/errors.md is out of date; regenerate it: HREXP_WRITE_ERRORS_DOC=1 "
                              ".venv/bin/python -m pytest tests/test_bad_inputs.py -k doc")


# ----------------------------------------------------------------------------- the command line
# What a user sees: the message on stderr, no traceback, a non-zero exit status (hrexp's errors as
# "Error: <message>", Hydra's own config errors as Hydra words them). One case per kind of error and
# per entry point; the messages themselves are the table's.
TRACEBACK = "Traceback (most recent call last)"


def _missing_image_args(tmp: Path) -> list[str]:
    return ["model=hrnet_w18", "data=landmarks_csv", f"data.csv={_landmark_csv(tmp, ['gone.png,1,2'])}",
            "data.image_size=[64,32]"]


def _text_checkpoint(tmp: Path) -> str:
    (tmp / "notes.ckpt").write_text("these are my notes")
    return f"ckpt_path={tmp / 'notes.ckpt'}"


# (case id, script, its arguments, a fragment of the message, whether hrexp (not Hydra) words it)
CLI_CASES = [
    ("image-missing", "train.py", _missing_image_args, "image not found: ", True),
    ("config-option", "train.py", lambda tmp: ["model=hrnet_w99"], "Could not find 'model/hrnet_w99'", False),
    ("config-key", "train.py", lambda tmp: ["data.imagesize=[64,32]"], "Could not override 'data.imagesize'", False),
    ("config-sigma", "train.py", lambda tmp: [*TINY_W18, "task.codec.sigma=0"], "task.codec.sigma): expected > 0",
     True),
    ("ckpt-text", "eval.py", lambda tmp: [_text_checkpoint(tmp)], "not a PyTorch checkpoint", True),
    ("ckpt-text-predict", "predict.py", lambda tmp: [_text_checkpoint(tmp), f"input={write_image(tmp / 'x.png')}"],
     "not a PyTorch checkpoint", True),
    ("ckpt-text-export", "export.py", lambda tmp: [_text_checkpoint(tmp)], "not a PyTorch checkpoint", True),
]


def _run_cli(script: str, args: list[str], tmp: Path, cache_dir: Path, full_error: bool = False):
    return run_script(script, [*args, f"hydra.run.dir={tmp / 'run'}"], cache_dir, check=False, timeout=300,
                      env={"HYDRA_FULL_ERROR": "1" if full_error else "0"})


@pytest.mark.parametrize("case_id, script, make_args, expected, ours", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_line_prints_the_message_without_a_traceback(case_id, script, make_args, expected, ours,
                                                                 tmp_path, cache_dir):
    proc = _run_cli(script, make_args(tmp_path), tmp_path, cache_dir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert expected in proc.stderr, proc.stderr[-4000:]
    assert TRACEBACK not in output, output[-4000:]
    assert "HYDRA_FULL_ERROR=1" in proc.stderr  # how to see the traceback
    if ours:
        assert "Error: " in proc.stderr
    if case_id == "image-missing":  # the failed run is recorded as before, its traceback in the record
        record = json.loads((tmp_path / "run" / "results.json").read_text())
        assert record["status"] == "failed" and expected in record["error"] and TRACEBACK in record["traceback"]


def test_hydra_full_error_shows_the_traceback(tmp_path, cache_dir):
    proc = _run_cli("train.py", _missing_image_args(tmp_path), tmp_path, cache_dir, full_error=True)
    assert proc.returncode == 1
    assert TRACEBACK in proc.stderr and "hrexp.data.errors.DataError:" in proc.stderr, proc.stderr[-4000:]
    assert "image not found: " in proc.stderr


def test_user_errors_share_a_base_and_keep_their_own():
    """The command line reports every UserError as a message; ``except ValueError`` / ``RuntimeError`` still
    catch them."""
    from hydra.errors import InstantiationException

    from hrexp.data.errors import DataError
    from hrexp.errors import ConfigError, UserError, user_error
    from hrexp.export.onnx_export import ExportError
    from hrexp.training.checkpoint_io import CheckpointReadError, CheckpointWriteError

    for kind, base in ((ConfigError, ValueError), (DataError, ValueError), (CheckpointReadError, ValueError),
                       (CheckpointWriteError, RuntimeError), (ExportError, RuntimeError)):
        assert issubclass(kind, UserError) and issubclass(kind, base)
    data = DataError("ann.csv: row 1: bad")
    try:  # what hydra.utils.instantiate raises when a constructor raised a DataError
        raise InstantiationException("Error in call to target 'x'") from data
    except InstantiationException as wrapped:
        assert user_error(wrapped) is data
    assert user_error(data) is data
    assert user_error(ValueError("a bug")) is None and user_error(RuntimeError("x")) is None


# ----------------------------------------------------------------------------- data that trains, but is degenerate
def test_landmarks_that_never_move_train_and_the_summary_says_why_the_ratio_is_undefined(compose_cfg, tmp_path,
                                                                                         caplog):
    """Every image has the same landmark coordinates: the mean-shape baseline's error is 0, so the best val/mre
    over it is undefined. The run trains, finishes and says so (it divided by 0 and was recorded failed)."""
    from hrexp.jobs.train_run import run_job

    for i in range(6):
        write_image(tmp_path / f"{i}.png", np.random.default_rng(i).integers(0, 256, (32, 64), dtype=np.uint8))
    csv = _landmark_csv(tmp_path, [f"{i}.png,10,5,40,20" for i in range(6)], header="image,p1_x,p1_y,p2_x,p2_y")
    cfg = compose_cfg(["model=unet", "model.base_width=4", "data=landmarks_csv", f"data.csv={csv}",
                       "data.image_size=[64,32]", "data.batch_size=4", "data.num_workers=0",
                       f"data.image_cache={tmp_path / 'cache'}", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
                       "test=false", "seed=0"])
    caplog.set_level(logging.INFO, logger="hrexp")
    run_job(cfg)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "finished", record.get("error")
    assert record["baselines"]["mean_shape_val"]["mre"] == 0
    assert ("best val/mre / baseline: undefined (the mean-shape baseline error is 0: the landmarks never move)"
            in caplog.text), caplog.text[-3000:]
