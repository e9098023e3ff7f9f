"""Train a model: ``python train.py [model=hrnet_w32] [task=landmarks] [data=...] [key=value ...]``.

The same as the installed ``hrexp-train``, with this repository as the project root (runs under
``logs/``). See ``conf/train.yaml`` for every option and the README for examples.
"""

from pathlib import Path

from hrexp.cli import train

if __name__ == "__main__":
    train(project_root=Path(__file__).resolve().parent)
