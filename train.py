"""Train a model: ``python train.py [model=hrnet_w32] [task=landmarks] [data=...] [key=value ...]``.

See ``conf/train.yaml`` for every option and the README for examples.
"""

import os
from pathlib import Path

# timm must not try the network for weights (no hub access; it would retry for ~50 s).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from hrexp.utils.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hrexp.training.train_run import run_job

    # Sweepers optimise the value returned here: the best value of the task's metric (NaN for a
    # job of a sweep that failed; its results.json says why).
    return run_job(cfg)


if __name__ == "__main__":
    main()
