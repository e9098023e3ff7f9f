"""The one start-up path of every entry point (train, eval, compare, the tests).

:func:`startup` sets the environment defaults and registers the OmegaConf resolvers, once, before
anything imports timm or composes a config. An explicit environment setting always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

# The configs ship inside the package, so an installed `hrexp-train` finds them from any folder.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_PACKAGE = "pkg://hrexp.conf"


def startup(project_root: str | Path | None = None) -> Path:
    """Environment defaults and resolvers; returns the project root in effect.

    Args:
        project_root: The folder runs are written under (``logs/``), generated data is cached in
            (``.cache/``) and beside which ``../shared/data`` is looked for. ``train.py`` in the repo
            passes its own folder; the installed commands pass nothing: the current folder.
            ``PROJECT_ROOT`` set in the environment wins over both.
    """
    # No hub access here: timm would retry for ~50 s before failing; weights come from local paths.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(project_root) if project_root is not None else Path.cwd()
    os.environ.setdefault("PROJECT_ROOT", str(root.resolve()))

    from hrexp.utils.resolvers import register_resolvers

    register_resolvers()
    return Path(os.environ["PROJECT_ROOT"])
