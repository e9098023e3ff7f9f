"""Checkpoint sizes of the default model (HRNet-W32, 40 heatmaps): a full, resumable file vs keep=weights.

Run: .venv/bin/python scripts/checkpoint_sizes.py (the README quotes its output).
"""
import io
import os

from hrexp.startup import startup

startup(os.getcwd())

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from hrexp.startup import CONFIG_DIR  # noqa: E402
from hrexp.training.checkpoint_io import weights_only  # noqa: E402

with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
    cfg = compose("train", overrides=["model=hrnet_w32"])
backbone = instantiate(cfg.model)
head = instantiate(cfg.task.head)(feature_info=backbone.feature_info, num_outputs=40)
model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()
full = {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "lr_schedulers": [{}], "hrexp": {}}
for name, ckpt in (("full (last.ckpt)", full), ("keep=weights (best-*.ckpt)", weights_only(full))):
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    print(f"{name}: {buf.tell() / 1e6:.1f} MB")
