"""Logger classes that add hrexp's defaults to Lightning's."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

log = logging.getLogger(__name__)


def wandb_api_key_configured() -> bool:
    """True when W&B can authenticate: ``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
        hosts = netrc.netrc(path).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return base in hosts


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that goes offline by itself when no API key is configured.

    Without a key wandb would otherwise fail after a network attempt; offline it writes a local run
    folder under ``save_dir/wandb`` that ``wandb sync <folder>`` uploads later. ``WANDB_MODE`` set in
    the environment is respected.

    Args:
        offline: ``None`` (automatic), or force ``True``/``False``.
        **kwargs: passed to :class:`lightning.pytorch.loggers.WandbLogger`.
    """

    def __init__(self, offline: bool | None = None, **kwargs: Any):
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_api_key_configured())
            if offline:
                log.info("wandb: no API key configured; logging offline (upload later with `wandb sync`)")
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        super().__init__(offline=offline, **kwargs)
