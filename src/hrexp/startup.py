"""The one start-up path of every entry point (train, eval, compare, the tests), and the one place where
process-wide settings are made.

:func:`set_environment_defaults` sets the environment defaults (:data:`ENVIRONMENT_DEFAULTS`); importing
``hrexp`` calls it, so they hold before anything of hrexp can import timm, also in a user's own script.
:func:`startup` adds the project root and registers the OmegaConf resolvers and eval's ``data=checkpoint``
option before a config is composed. An explicit environment setting always wins.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# The configs live in the repository's conf/ and ship as the package hrexp.conf (setup.py maps one to the
# other), so an installed `hrexp-train` finds them from any folder, and an editable install reads conf/.
CONFIG_PACKAGE = "pkg://hrexp.conf"
_CONFIG_SPEC = importlib.util.find_spec("hrexp.conf")
# Without an install (src/ on the path alone) the checkout's conf/ is the one copy.
CONFIG_DIR = (Path(list(_CONFIG_SPEC.submodule_search_locations)[0]) if _CONFIG_SPEC is not None
              else Path(__file__).resolve().parents[2] / "conf").resolve()


# No hub access here: timm / huggingface_hub would retry for ~50 s before failing; weights come from local
# paths. Only effective before huggingface_hub is first imported, hence at ``import hrexp``.
ENVIRONMENT_DEFAULTS = {"HF_HUB_OFFLINE": "1"}


def set_environment_defaults() -> None:
    """Set each of :data:`ENVIRONMENT_DEFAULTS` that the environment does not set already."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def startup(project_root: str | Path | None = None) -> Path:
    """Environment defaults and resolvers; returns the project root in effect.

    Args:
        project_root: The folder runs are written under (``logs/``), generated data is cached in
            (``.cache/``) and beside which ``../shared/data`` is looked for. ``train.py`` in the repo
            passes its own folder; the installed commands pass nothing: the current folder.
            ``PROJECT_ROOT`` set in the environment wins over both.
    """
    set_environment_defaults()
    root = Path(project_root) if project_root is not None else Path.cwd()
    os.environ.setdefault("PROJECT_ROOT", str(root.resolve()))

    from hrexp.utils.config_store import register_config_nodes
    from hrexp.utils.resolvers import register_resolvers

    register_resolvers()
    register_config_nodes()  # eval.yaml's data=checkpoint: open to data.<key>=... overrides
    return Path(os.environ["PROJECT_ROOT"])
