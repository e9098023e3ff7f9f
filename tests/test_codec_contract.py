"""The codec contract (hrexp.codecs.base.KeypointCodec): every codec, the five shipped ones and a sixth written only
in the tests (tests/regression_codec/), declares what the task needs and keeps its word: a round trip through the
contract's own methods, targets of the kind it declares, outputs of the layout it declares, a flip test only where
mirrored outputs decode to mirrored points, ties where two values compete. A keypoint task built with the test codec
trains, decodes, predicts and exports through the contract alone, and an old SimCC checkpoint (its config without
the codec's input_size) still loads."""

from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hrexp.codecs.base import KeypointCodec
from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.codecs.integral import IntegralRegressionCodec
from hrexp.codecs.offset import OffsetHeatmapCodec
from hrexp.codecs.simcc import SimCCCodec
from hrexp.codecs.udp import UDPHeatmapCodec
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE
from hrexp.models.heads import HeatmapHead
from hrexp.tasks.landmarks import LandmarkTask
from hrexp.training.build import build_datamodule, build_module
from hrexp.training.checkpoint_config import rebuild_config
from hrexp.training.checkpoint_model import module_from_checkpoint
from tests.conftest import compose_for
from tests.fit_helpers import TINY_W18, fit
from tests.helpers import ROOT
from tests.regression_codec.codec import MeanRegressionCodec, MeanRegressionLoss

B, K = 2, 3
INPUT = (128, 96)  # (H, W)
STRIDE = 4.0
GRID = (32, 24)  # INPUT / STRIDE
REGRESSION_CONF = ROOT / "tests" / "regression_codec" / "conf"
SEARCH_PATH = f"hydra.searchpath=[file://{REGRESSION_CONF}]"

CODECS = {
    "gaussian": lambda: GaussianHeatmapCodec(sigma=2.0),
    "udp": lambda: UDPHeatmapCodec(sigma=2.0),
    "offset": lambda: OffsetHeatmapCodec(sigma=2.0, radius=2.0),
    "integral": lambda: IntegralRegressionCodec(beta=1.0, sigma=2.0),
    "simcc": lambda: SimCCCodec(input_size=INPUT, split_ratio=2.0, sigma=2.0),
    "mean_regression": MeanRegressionCodec,  # written in the tests only
}


def perfect_outputs(name: str, codec: KeypointCodec, targets):
    """What a network at the loss optimum outputs, from the targets (each codec's own optimum)."""
    if name in ("gaussian", "udp"):
        return targets
    if name == "offset":
        return torch.cat([targets["heatmaps"], targets["offsets"]], dim=1)  # the [B, 3K, h, w] head layout
    if name == "integral":
        return torch.log(targets["heatmaps"].clamp_min(1e-30)) / codec.beta  # softmax = the normalised Gaussian
    if name == "simcc":
        return targets
    # mean regression: every cell votes for the exact normalised coordinate
    coords = targets["coords"]
    x, y = (coords[..., axis, None, None].expand(-1, -1, *GRID) for axis in (0, 1))
    return torch.cat([x, y], dim=1).contiguous()


def points(seed: int) -> torch.Tensor:
    """Points at least 24 px (6 cells, 3 sigma) from the border: no codec's target is cut there (a cut Gaussian
    biases the soft-argmax)."""
    gen = torch.Generator().manual_seed(seed)
    x = 24 + torch.rand(B, K, generator=gen) * (INPUT[1] - 1 - 48)
    y = 24 + torch.rand(B, K, generator=gen) * (INPUT[0] - 1 - 48)
    return torch.stack([x, y], dim=-1)


# ------------------------------------------------------------------------------------ each codec keeps its word
@pytest.mark.parametrize("name", list(CODECS))
def test_a_round_trip_through_the_contract_gives_the_points_back(name):
    codec = CODECS[name]()
    assert isinstance(codec, KeypointCodec)
    keypoints = points(1)
    targets, weights = codec.encode(keypoints, torch.ones(B, K), GRID, STRIDE)
    assert weights.shape == (B, K) and bool((weights == 1).all())
    # the targets are of the kind the codec declares: a heatmap tensor for the task's loss, or a dict for its own
    if codec.heatmap_targets:
        assert isinstance(targets, torch.Tensor) and targets.shape == (B, K, *GRID)
    else:
        assert isinstance(targets, dict) and all(isinstance(v, torch.Tensor) for v in targets.values())
    outputs = perfect_outputs(name, codec, targets)
    # the outputs have the layout the codec declares: a tensor of output_channels(K) maps, or a dict of its keys
    if codec.output_keys is None:
        assert outputs.shape == (B, codec.output_channels(K), *GRID)
    else:
        assert set(outputs) == set(codec.output_keys)
    tensors = codec.output_tensors(outputs)
    assert len(tensors) == len(codec.graph_output_names) and all(t.shape[0] == B for t in tensors)
    decoded, scores = codec.decode(outputs, STRIDE)
    assert decoded.shape == (B, K, 2) and scores.shape == (B, K)
    assert float((decoded - keypoints).norm(dim=-1).max()) < 0.1
    spread = codec.spread(outputs, STRIDE)
    assert spread is None or (spread.shape == (B, K) and bool(torch.isfinite(spread).all()))


@pytest.mark.parametrize("name", [n for n in CODECS if CODECS[n]().flippable])
def test_a_flippable_codec_decodes_mirrored_outputs_to_mirrored_points(name):
    """What the flip test relies on: mirroring the K maps mirrors the points (x -> W - 1 - x)."""
    codec = CODECS[name]()
    keypoints = points(2)
    targets, _ = codec.encode(keypoints, torch.ones(B, K), GRID, STRIDE)
    decoded, _ = codec.decode(perfect_outputs(name, codec, targets).flip(-1), STRIDE)
    mirrored = torch.stack([INPUT[1] - 1 - keypoints[..., 0], keypoints[..., 1]], dim=-1)
    assert float((decoded - mirrored).norm(dim=-1).max()) < 0.1


def test_the_flip_test_is_declared_only_by_codecs_whose_outputs_are_k_maps():
    assert {n for n in CODECS if CODECS[n]().flippable} == {"gaussian", "udp", "integral"}
    # offsets change sign under a mirror: mirroring the packed outputs does not mirror the points
    codec = OffsetHeatmapCodec(sigma=2.0, radius=2.0)
    keypoints = torch.tensor([[[30.3, 40.0]]])  # u = 7.2: offset 0.2 cells from cell 7
    targets, _ = codec.encode(keypoints, torch.ones(1, 1), GRID, STRIDE)
    decoded, _ = codec.decode(perfect_outputs("offset", codec, targets).flip(-1), STRIDE)
    # cell 24 - 1 - 7 = 16 plus the unmirrored +0.2 cells: x = (16.2 + 0.5) * 4 - 0.5 = 66.3, not 96 - 1 - 30.3 = 64.7
    assert float(decoded[0, 0, 0]) == pytest.approx(66.3, abs=1e-4)


def test_ties_are_two_values_within_the_tolerance():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 1] = maps[0, 0, 2, 3] = 0.8  # keypoint 0: two equal peaks
    maps[0, 1, 1, 1], maps[0, 1, 2, 3] = 0.8, 0.7  # keypoint 1: one clear peak
    for codec in (GaussianHeatmapCodec(), UDPHeatmapCodec()):
        assert codec.tied_points(maps, 1e-4).tolist() == [[True, False]]
    offsets = torch.cat([maps, torch.zeros(1, 4, 4, 4)], dim=1)
    assert OffsetHeatmapCodec().tied_points(offsets, 1e-4).tolist() == [[True, False]]
    simcc = SimCCCodec(input_size=(2, 3), split_ratio=1.0)
    vectors = {"x": torch.tensor([[[0.1, 0.5, 0.5], [0.1, 0.5, 0.4]]]), "y": torch.tensor([[[0.2, 0.9], [0.9, 0.2]]])}
    assert simcc.tied_points(vectors, 1e-4).tolist() == [[True, False]]
    # soft-argmax and mean votes are continuous: no ties
    assert IntegralRegressionCodec().tied_points(maps, 1e-4) is None
    assert MeanRegressionCodec().tied_points(maps, 1e-4) is None


def test_the_spread_of_the_test_codec_is_the_disagreement_of_the_votes_in_pixels():
    codec = MeanRegressionCodec()
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = torch.tensor([[0.25, 0.75], [0.25, 0.75]])  # x votes 0.25 and 0.75 of W = 8: std 0.25 * 8 = 2 px
    maps[0, 1] = 0.5  # y votes agree
    keypoints, scores = codec.decode(maps, stride=4.0)
    assert keypoints.tolist() == [[[0.5 * 8 - 0.5, 0.5 * 8 - 0.5]]]
    assert float(codec.spread(maps, stride=4.0)) == pytest.approx(2.0)
    assert float(scores) == pytest.approx(1 / 3)


def test_the_maps_the_report_draws_are_the_k_heatmaps_or_none():
    maps = torch.rand(B, 3 * K, *GRID)
    assert torch.equal(OffsetHeatmapCodec(sigma=2.0, radius=2.0).keypoint_maps(maps, K), maps[:, :K])  # not offsets
    assert torch.equal(GaussianHeatmapCodec(sigma=2.0).keypoint_maps(maps[:, :K], K), maps[:, :K])
    vectors = {"x": torch.rand(B, K, 192), "y": torch.rand(B, K, 256)}
    assert SimCCCodec(input_size=INPUT, split_ratio=2.0, sigma=2.0).keypoint_maps(vectors, K) is None
    assert MeanRegressionCodec().keypoint_maps(torch.rand(B, 2 * K, *GRID), K) is None  # votes, not heatmaps


def test_a_codec_cannot_leave_out_part_of_the_contract():
    class NoDecode(KeypointCodec):
        def output_channels(self, num_keypoints):
            return num_keypoints

        def encode(self, keypoints, visible, heatmap_size, stride):
            return keypoints, visible

    with pytest.raises(TypeError, match="decode"):
        NoDecode()


# ------------------------------------------------------------------------------------ the task talks to the contract
def _task(codec, loss, **kwargs) -> LandmarkTask:
    meta = {"num_keypoints": K, "keypoint_names": ["a", "b", "c"], "flip_pairs": []}
    return LandmarkTask(functools.partial(HeatmapHead), codec, loss, [{"num_chs": 8, "reduction": 4}], meta, **kwargs)


def test_the_task_uses_the_test_codec_for_channels_loss_decoding_spread_and_export():
    codec = MeanRegressionCodec()
    task = _task(codec, MeanRegressionLoss(codec))
    assert task.head.final.out_channels == 2 * K  # the codec's output_channels
    keypoints = points(3)
    targets, _ = codec.encode(keypoints, torch.ones(B, K), GRID, STRIDE)
    outputs = perfect_outputs("mean_regression", codec, targets)
    matrix = torch.tensor([[0.5, 0, 2], [0, 0.5, 1], [0, 0, 1]]).expand(B, 3, 3)  # original px -> input px
    batch = {"image": torch.zeros(B, 3, *INPUT), "keypoints": keypoints, "visible": torch.ones(B, K), "matrix": matrix}
    assert float(task.loss(outputs, batch)) == pytest.approx(0.0, abs=1e-6)  # its own loss, on its dict targets
    assert float(task.loss(outputs + 0.01, batch)) == pytest.approx(2 * 0.01, rel=1e-4)  # L1 on x and y
    preds = task.predict(outputs, batch)
    assert float((preds["keypoints_input"] - keypoints).abs().max()) < 1e-4
    assert float((preds["keypoints"] - (keypoints - torch.tensor([2.0, 1.0])) / 0.5).abs().max()) < 1e-3
    assert float(preds["spread"].abs().max()) < 1e-4  # every cell votes alike
    assert task.export_output_names(decode=True) == ["maps", "keypoints", "scores"]
    maps, decoded, scores = task.export_outputs(outputs, decode=True)
    assert maps is outputs and torch.equal(decoded, preds["keypoints_input"]) and scores.shape == (B, K)
    assert task.tied_points(outputs, 1e-4) is None


def test_the_task_refuses_what_the_codec_does_not_declare():
    with pytest.raises(ValueError, match="task.flip_test=true but the codec MeanRegressionCodec has no flip test"):
        _task(MeanRegressionCodec(), MeanRegressionLoss(), flip_test=True)

    class Duck:  # encode / decode alone is not the contract
        def output_channels(self, k):
            return k

    with pytest.raises(ValueError, match="task.codec: Duck is not a hrexp.codecs.base.KeypointCodec"):
        _task(Duck(), WeightedHeatmapMSE())


def test_the_codec_written_in_the_tests_is_chosen_from_its_own_yaml_and_trains_a_step(tmp_path, cache_dir):
    cfg = compose_for([*TINY_W18, SEARCH_PATH, "task/codec=mean_regression"], tmp_path, "train")
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    task = module.task
    assert isinstance(task.codec, MeanRegressionCodec) and isinstance(task.loss_fn, MeanRegressionLoss)
    assert task.loss_fn.codec is not task.codec  # the loss's codec is built from the same config (interpolation)
    batch = next(iter(datamodule.train_dataloader()))
    outputs = module(batch["image"])
    k = datamodule.num_keypoints
    assert outputs.shape == (4, 2 * k, 16, 8)
    loss = task.loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss) and float(task.head.final.weight.grad.abs().sum()) > 0
    preds = task.predict(outputs, batch)
    assert preds["keypoints"].shape == (4, k, 2) and preds["spread"].shape == (4, k)


# ------------------------------------------------------------------------------------ old checkpoints
def test_an_old_simcc_config_gets_the_codecs_input_size_from_its_head():
    old = {"model": {"_target_": "m"}, "data": {"image_size": [64, 32]},
           "task": {"codec": {"_target_": "hrexp.codecs.simcc.SimCCCodec", "split_ratio": 2.0},
                    "head": {"_target_": "hrexp.models.simcc_head.SimCCHead", "input_size": [128, 96]}}}
    run_cfg = rebuild_config({"hrexp": {"config": old}})
    assert list(run_cfg.task.codec.input_size) == [128, 96]  # the head's, which the trained weights fit
    del old["task"]["head"]["input_size"]
    assert list(rebuild_config({"hrexp": {"config": old}}).task.codec.input_size) == [64, 32]
    new = {**old, "task": {"codec": {**old["task"]["codec"], "input_size": [8, 8]}}}
    assert list(rebuild_config({"hrexp": {"config": new}}).task.codec.input_size) == [8, 8]  # left as stored
    other = {**old, "task": {"codec": {"_target_": "hrexp.codecs.heatmap.GaussianHeatmapCodec", "sigma": 2.0}}}
    assert "input_size" not in rebuild_config({"hrexp": {"config": other}}).task.codec


def test_an_old_simcc_checkpoint_still_loads_and_predicts_the_same(tmp_path, cache_dir):
    """A checkpoint written before SimCC's input size moved into the codec's constructor: its stored config has none."""
    cfg = compose_for([*TINY_W18, "task/codec=simcc"], tmp_path, "train")
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule).eval()
    stored = OmegaConf.to_container(cfg, resolve=True)
    stored["choices"] = {"task": "landmarks", "data": "synthetic_spine", "model": "hrnet_w18"}
    del stored["task"]["codec"]["input_size"]
    path = tmp_path / "old.ckpt"
    meta = datamodule.dataset_meta
    torch.save({"state_dict": module.state_dict(), "hrexp": {"config": stored, "dataset_meta": meta}}, path)
    loaded = module_from_checkpoint(path).module
    assert loaded.task.codec.input_size == (64, 32)
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        want = module.task.predict(module(batch["image"]), batch)["keypoints"]
        got = loaded.task.predict(loaded(batch["image"]), batch)["keypoints"]
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # trains a tiny model, evaluates, predicts and exports it (~2 min on 2 busy cores)
def test_the_codec_written_in_the_tests_trains_evaluates_predicts_and_exports(module_tmp, cache_dir, tmp_path):
    from hrexp.jobs.eval_run import evaluate
    from hrexp.jobs.export_run import export
    from hrexp.jobs.predict_run import predict

    ort = pytest.importorskip("onnxruntime")

    train = compose_for([*TINY_W18, SEARCH_PATH, "task/codec=mean_regression", "trainer.max_epochs=1", "test=false",
                         "data.image_cache=null"], module_tmp / "train", "train")
    trainer, module = fit(train)
    ckpt = module_tmp / "regression.ckpt"
    trainer.save_checkpoint(ckpt)
    module = module.cpu().eval()
    dataset = trainer.datamodule.datasets["val"]
    expected = []
    for i in range(2):
        batch = {k: v[None] for k, v in dataset[i].items()}
        with torch.no_grad():
            expected.append(module.task.predict(module(batch["image"]), batch))

    # eval.py: the checkpoint alone rebuilds the codec from its stored config; the report scores its points
    summary = evaluate(compose_for([f"ckpt_path={ckpt}", "split=val", "report.gallery=1"], tmp_path / "eval", "eval"))
    assert summary["metrics"]["val/mre"] > 0
    rows = [r for r in _read_csv(tmp_path / "eval" / "run" / "predictions.csv") if int(r["index"]) == 0]
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert np.abs(got - expected[0]["keypoints"][0].numpy()).max() < 1e-3
    assert (tmp_path / "eval" / "run" / "confidence_spread.png").is_file()  # the codec's spread reached the report

    # predict.py: the landmark family prepares the images, the task writes the keypoints
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for i in range(2):
        source = Path(trainer.datamodule.splits["val"].records[i].image_path)
        names.append(f"val{i}{source.suffix}")
        shutil.copy(source, folder / names[-1])
    out = tmp_path / "predicted"
    result = predict(compose_for([f"ckpt_path={ckpt}", f"input={folder}", f"output={out}", "batch_size=1"],
                                 tmp_path, "predict"))
    assert result["counts"]["predicted"] == 2
    rows = _read_csv(out / "predictions.csv")
    for i, name in enumerate(names):
        got = np.array([[float(r["x"]), float(r["y"])] for r in rows if Path(r["file"]).name == name])
        assert np.abs(got - expected[i]["keypoints"][0].numpy()).max() <= 1e-3, name
    assert "score (1 / (1 + spread of the cells' votes in px))" in (out / "README.txt").read_text()

    # export.py: the codec's maps and its decoding in the graph, checked with onnxruntime
    exported = export(compose_for([f"ckpt_path={ckpt}", "decode=true", "batch=fixed", "batch_size=1"],
                                  tmp_path / "export", "export"))
    assert exported["outputs"] == ["maps", "keypoints", "scores"]
    assert exported["check"]["max_point_difference_px"] <= 0.05
    session = ort.InferenceSession(exported["file"], providers=["CPUExecutionProvider"])
    maps, keypoints, scores = session.run(None, {"images": dataset[0]["image"][None].numpy()})
    assert maps.shape[1] == 2 * module.task.num_keypoints
    assert np.abs(keypoints[0] - expected[0]["keypoints_input"][0].numpy()).max() <= 0.05
    assert np.allclose(scores[0], expected[0]["scores"][0].numpy(), atol=1e-4)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
