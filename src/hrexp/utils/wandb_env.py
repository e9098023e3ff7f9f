"""Whether W&B can reach its server: read from the environment and ~/.netrc, without importing wandb or Lightning."""

from __future__ import annotations

import netrc
import os


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


def wandb_offline() -> bool:
    """Offline when ``WANDB_MODE`` says so, or when it says nothing and no API key is configured."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not wandb_api_key_configured()
