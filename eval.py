"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file.ckpt> [split=test|val] [data=... data.x=...]``.

Writes ``per_landmark.csv`` and ``summary.json`` to its run folder (logs/eval/runs/<time>).
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from hrexp.utils.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hrexp.training.eval_run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
