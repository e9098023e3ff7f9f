"""model.pretrained: local weight files (.pth/.pt/.safetensors, wrapped or raw), the HRNet key
mapping, the one-line load report, safety (weights_only) and fast failures (missing file, empty
Hugging Face cache, wrong shapes)."""

from __future__ import annotations

import logging
import os

import pathlib
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from hrexp.models.hrnet import HighResolutionNet
from hrexp.models.timm_backbone import TimmBackbone
from hrexp.models.pretrained import strip_known_prefixes, unwrap_state_dict

LOGGER = "hrexp.models.pretrained"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Running stats = one batch's statistics, so eval-mode activations stay O(1) (see test_models)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.fixture(scope="module")
def timm_w18_state():
    """A full timm hrnet_w18 classification model's state dict (random init, calibrated BN)."""
    torch.manual_seed(0)
    full = timm.create_model("hrnet_w18", pretrained=False)
    _calibrate_batchnorm(full, torch.randn(4, 3, 64, 64))
    return {k: v.clone() for k, v in full.state_dict().items()}


def _records(caplog):
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_hrnet_file_loads_into_scratch_and_timm_with_equal_outputs(
    tmp_path, caplog, timm_w18_state, suffix
):
    path = tmp_path / f"hrnet_w18{suffix}"
    if suffix == ".safetensors":
        save_file(timm_w18_state, str(path))
    else:
        torch.save(timm_w18_state, path)

    reference = timm.create_model(
        "hrnet_w18", features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
    )
    reference.load_state_dict(timm_w18_state, strict=False)  # plain torch: the ground truth
    reference.eval()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        scratch = HighResolutionNet(width=18, pretrained=str(path)).eval()
    records = _records(caplog)
    assert len(records) == 1  # ONE line per load
    line = records[0].getMessage()
    assert records[0].levelno == logging.INFO  # heads dropped by the documented mapping only
    assert str(path) in line and "missing 0" in line and "unexpected 0" in line
    # The ImageNet classifier (weight + bias) and the V2 head are counted per module.
    assert "classifier: 2" in line and "incre_modules:" in line and "final_layer:" in line
    heads = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
    dropped = [k for k in timm_w18_state if k.startswith(heads)]
    assert f"dropped by key mapping {len(dropped)} " in line
    assert scratch.load_report.missing_keys == [] and scratch.load_report.unexpected_keys == []

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        wrapped = TimmBackbone("hrnet_w18", pretrained=str(path), feature_location="").eval()
    (record,) = _records(caplog)
    assert record.levelno == logging.INFO and "classifier: 2" in record.getMessage()

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        for model in (scratch, wrapped):
            actual = model(x)
            assert len(actual) == 4
            for a, e in zip(actual, expected):
                assert e.abs().max() > 0.1  # O(1) activations: 1e-4 is a meaningful bound
                assert (a - e).abs().max().item() <= 1e-4


def _official_pose_state(width: int) -> dict[str, torch.Tensor]:
    """Official HRNetV1 pose layout: last module fuses only branch 0, plus a 1x1 ``final_layer``."""
    state = HighResolutionNet(width=width, multi_scale_output=False).state_dict()
    state["final_layer.weight"] = torch.randn(17, width, 1, 1)
    state["final_layer.bias"] = torch.randn(17)
    return state


def test_official_pose_checkpoint_in_state_dict_wrapper_loads(tmp_path, caplog):
    state = _official_pose_state(18)
    path = tmp_path / "pose_hrnet_w18.pth"
    torch.save({"state_dict": state, "epoch": 210, "perf": 0.75}, path)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = HighResolutionNet(width=18, multi_scale_output=False, pretrained=path)
    (record,) = _records(caplog)
    assert record.levelno == logging.INFO and "final_layer: 2" in record.getMessage()
    assert model.load_report.dropped_keys == ["final_layer.weight", "final_layer.bias"]
    key = "stage4.2.branches.0.3.conv2.weight"
    assert torch.equal(model.stage4[2].branches[0][3].conv2.weight, state[key])

    # Into the multi-scale (V2) backbone: the last module's extra fusions are missing -> WARNING.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = HighResolutionNet(width=18, pretrained=path)
    (record,) = _records(caplog)
    missing = model.load_report.missing_keys
    assert missing and all(k.startswith("stage4.2.fuse_layers.") for k in missing)
    assert record.levelno == logging.WARNING
    assert f"missing {len(missing)} ({missing[0]}, " in record.getMessage()


def test_lightning_checkpoint_with_backbone_prefix_loads(tmp_path, caplog):
    source = HighResolutionNet(width=18)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["task.head.final.weight"] = torch.zeros(4, 18, 1, 1)
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1e-3}}, path)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = HighResolutionNet(width=18, pretrained=str(path))
    (record,) = _records(caplog)
    assert record.levelno == logging.INFO and "task: 1" in record.getMessage()
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_prefix_stripping_and_unwrapping():
    t = torch.zeros(1)
    state, dropped = strip_known_prefixes({"module.conv1.weight": t, "module.bn1.bias": t})
    assert list(state) == ["conv1.weight", "bn1.bias"] and dropped == []
    state, dropped = strip_known_prefixes({"model.backbone.conv1.weight": t, "model.head.w": t})
    assert list(state) == ["conv1.weight"] and dropped == ["head.w"]
    assert list(unwrap_state_dict({"model": {"state_dict": {"a": t}}})) == ["a"]
    with pytest.raises(ValueError, match="no state dict found"):
        unwrap_state_dict({"epoch": 3})


def test_unexpected_keys_are_a_warning_with_names(tmp_path, caplog):
    state = HighResolutionNet(width=18).state_dict()
    state["stage2.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = HighResolutionNet(width=18, pretrained=path)
    (record,) = _records(caplog)
    assert record.levelno == logging.WARNING
    assert "unexpected 1 (stage2.0.extra.weight)" in record.getMessage()
    assert model.load_report.unexpected_keys == ["stage2.0.extra.weight"]


class _Unsafe:
    """Unpickling this would create a folder: its absence proves that nothing was unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": HighResolutionNet(width=18).state_dict(), "args": _Unsafe(marker)}, path)
    with pytest.raises(ValueError, match=r"model\.pretrained=.*evil\.pth.*refused.*weights_only=True"):
        HighResolutionNet(width=18, pretrained=path)
    assert not marker.exists()


def test_missing_file_fails_fast(tmp_path):
    path = tmp_path / "nope" / "hrnet_w32.pth"
    for build in (
        lambda: HighResolutionNet(width=48, pretrained=str(path)),
        lambda: TimmBackbone("hrnet_w48", pretrained=str(path), feature_location=""),
        lambda: TimmBackbone("resnet50", pretrained=path),  # a Path object, not a hub name
    ):
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="model.pretrained") as info:
            build()
        assert time.perf_counter() - start < 1.0  # checked before the network is built
        assert str(path) in str(info.value)


def test_scratch_hrnet_rejects_pretrained_true():
    with pytest.raises(ValueError, match="model.pretrained=true.*local weights file"):
        HighResolutionNet(width=18, pretrained=True)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "w18.safetensors"
    save_file(HighResolutionNet(width=18).state_dict(), str(path))
    with pytest.raises(RuntimeError) as info:
        HighResolutionNet(width=32, pretrained=path)
    message = str(info.value)
    assert "model.pretrained" in message and "transition1.0.0.weight" in message
    assert "(18, 256, 3, 3)" in message and "(32, 256, 3, 3)" in message


def test_unrelated_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(RuntimeError, match="none of the 2 tensors"):
        HighResolutionNet(width=18, pretrained=path)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


@pytest.mark.parametrize("pretrained", [True, "resnet18.a1_in1k", "timm/resnet18.a1_in1k"])
def test_timm_pretrained_absent_from_hf_cache_fails_fast(empty_hf_cache, pretrained):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        TimmBackbone("resnet18", pretrained=pretrained)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, elapsed
    message = str(info.value)
    assert str(empty_hf_cache) in message  # where it looked
    assert "timm/resnet18.a1_in1k" in message and "no hub access" in message
    assert "model.pretrained=/path/to/weights.safetensors" in message  # how to pass a file


def test_timm_pretrained_other_architecture_is_refused(empty_hf_cache):
    with pytest.raises(ValueError, match="architecture 'resnet34'"):
        TimmBackbone("resnet18", pretrained="resnet34.a1_in1k")


def test_timm_pretrained_from_local_hf_cache(empty_hf_cache, caplog):
    """A cache laid out like huggingface_hub's (refs/main -> snapshots/<commit>/file) is found."""
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg("resnet18").hf_hub_id
    commit = "0" * 40
    folder = empty_hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    source = timm.create_model("resnet18", pretrained=False)
    save_file(source.state_dict(), str(folder / "snapshots" / commit / "model.safetensors"))

    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = TimmBackbone("resnet18", pretrained=True)
    (record,) = _records(caplog)
    # The ImageNet classifier is not part of the feature model: dropped and counted.
    assert record.levelno == logging.INFO and "fc: 2" in record.getMessage()
    assert torch.equal(model.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
