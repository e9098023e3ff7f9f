"""``data.num_workers: auto`` / ``data.pin_memory: auto``: no workers and no pinning when training on the
CPU (where worker processes would take cores from the model's threads), workers by CPU count and pinned
memory on an accelerator; a bad value names the option."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hrexp.data.datamodule import HRExpDataModule


def _dm(**kwargs) -> HRExpDataModule:
    return HRExpDataModule(batch_size=2, **kwargs)


def _trainer(device: str, devices: int = 1) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=SimpleNamespace(type=device)), num_devices=devices)


@pytest.mark.parametrize("device, devices, cpus, workers, pinned", [
    ("cpu", 1, 16, 0, False),
    ("cuda", 1, 16, 8, True),   # 15 free CPUs, capped at 8
    ("cuda", 4, 16, 3, True),   # 16 CPUs / 4 devices - 1
    ("cuda", 8, 8, 1, True),    # at least one
])
def test_auto_follows_the_device_and_the_cpus(monkeypatch, device, devices, cpus, workers, pinned):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    dm = _dm(num_workers="auto", pin_memory="auto")
    dm.trainer = _trainer(device, devices)
    assert (dm.loader_workers(), dm.loader_pin_memory()) == (workers, pinned)


def test_auto_without_a_trainer_is_the_cpu_setting():
    dm = _dm(num_workers="auto", pin_memory="auto")
    assert (dm.loader_workers(), dm.loader_pin_memory()) == (0, False)


def test_explicit_values_are_kept_on_any_device():
    dm = _dm(num_workers=3, pin_memory=True)
    dm.trainer = _trainer("cpu")
    assert (dm.loader_workers(), dm.loader_pin_memory()) == (3, True)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_workers": "many"}, "data.num_workers='many': expected auto or a whole number >= 0"),
    ({"num_workers": -1}, "data.num_workers=-1: expected auto or a whole number >= 0"),
    ({"pin_memory": "yes"}, "data.pin_memory='yes': expected auto or true or false"),
])
def test_a_bad_value_names_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _dm(**kwargs)
