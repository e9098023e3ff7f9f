"""Print the resolved run config as a rich tree and save it beside the run."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

# Groups first in this order, then anything else (seed, task_name, ...).
DEFAULT_ORDER = ("data", "model", "task", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig, order: Sequence[str] = DEFAULT_ORDER) -> rich.tree.Tree:
    """Build a rich tree of the fully resolved config, one branch per top-level key."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", background_color="default"))
    return tree


def print_and_save_config(cfg: DictConfig, output_dir: str | Path | None) -> None:
    """Print the config tree and write ``config_tree.log`` and ``config.yaml`` (resolved) to the run dir.

    Hydra already saves the unresolved config in ``.hydra/``; the resolved copy records what the run
    really used (absolute paths, interpolated values).
    """
    tree = config_tree(cfg)
    rich.print(tree)
    if output_dir is None:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config_tree.log", "w") as fh:
        rich.print(tree, file=fh)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
