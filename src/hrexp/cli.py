"""The installed commands: ``hrexp-train``, ``hrexp-eval``, ``hrexp-export``, ``hrexp-predict``,
``hrexp-compare``, and ``hrexp <command>``.

They work from any folder: the configs (``conf/`` in the repository) ship inside the package as ``hrexp.conf``, runs are written
under the current folder (``logs/``), and a user's own config folder joins the search path with
Hydra's ``--config-dir <folder>`` (or ``hydra.searchpath=[file://<folder>]``)::

    hrexp-train model=hrnet_w32 task=landmarks data=landmarks_csv data.csv=/data/spines/train.csv
    hrexp-train --config-dir my_configs experiment=my_experiment
    hrexp-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    hrexp-predict ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt input=new_images/ overlays=true
    hrexp-compare logs/train/multiruns/<sweep>
    hrexp train model=unet          # the same, as one command with sub-commands (litpose / sleap-nn style)

``python train.py`` / ``python eval.py`` in the repository call the same functions with the
repository as the project root.

Bad input (data, config, checkpoint: a :class:`~hrexp.errors.UserError`) ends a command with its message
on stderr and exit status 1, no traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback (see docs/errors.md).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from hrexp.errors import user_error
from hrexp.startup import CONFIG_PACKAGE, startup


class BadInput(CompactHydraException):
    """A :class:`~hrexp.errors.UserError` handed to Hydra: its ``run_and_report`` prints a compact exception's
    message alone (as it does for its own config errors: an unknown option or key) and exits 1;
    ``HYDRA_FULL_ERROR=1`` makes it re-raise, so Python prints the whole chain, the original traceback first."""


def reports_bad_input(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function: a user error (or one that ``instantiate`` wrapped) leaves it as :class:`BadInput`
    with the message ``Error: <message>``; any other error passes unchanged, with its traceback.

    Inside the task function, so Hydra still marks the job failed and runs its callbacks. What the job body does
    on failure (``run_job`` writes the failed ``results.json``; in a multirun it returns NaN) happens before."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            found = user_error(err)
            if found is None:
                raise
            raise BadInput(f"Error: {found}") from err

    return run


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="train")
@reports_bad_input
def _train_app(cfg: DictConfig) -> float | None:
    from hrexp.jobs.train_run import run_job

    # Sweepers optimise the value returned here: the best value of the task's monitored metric
    # (NaN for a job of a sweep that failed; its results.json says why).
    return run_job(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="eval")
@reports_bad_input
def _eval_app(cfg: DictConfig) -> None:
    from hrexp.jobs.eval_run import evaluate

    evaluate(cfg)


def train(project_root: str | Path | None = None) -> None:
    """``hrexp-train [group=option ...] [key=value ...]``: compose ``train.yaml`` and train (see the README)."""
    startup(project_root)
    _train_app()


def evaluate(project_root: str | Path | None = None) -> None:
    """``hrexp-eval ckpt_path=<file.ckpt> [split=test|val] [data=...]``: score a checkpoint."""
    startup(project_root)
    _eval_app()


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="export")
@reports_bad_input
def _export_app(cfg: DictConfig) -> None:
    from hrexp.jobs.export_run import export as run_export

    run_export(cfg)


def export(project_root: str | Path | None = None) -> None:
    """``hrexp-export ckpt_path=<file.ckpt> [format=onnx] [decode=true] [batch=dynamic|fixed]``: a deployable
    network file, checked with onnxruntime."""
    startup(project_root)
    _export_app()


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="predict")
@reports_bad_input
def _predict_app(cfg: DictConfig) -> None:
    from hrexp.jobs.predict_run import predict as run_predict

    run_predict(cfg)


def predict(project_root: str | Path | None = None) -> None:
    """``hrexp-predict ckpt_path=<file.ckpt> input=<image|folder|glob> [output=<folder>] [overlays=true]``:
    predictions on new images, in original pixels."""
    startup(project_root)
    _predict_app()


def compare(argv: Sequence[str] | None = None) -> int:
    """``hrexp-compare <run or sweep folders> [--out ...]``: the comparison report of finished runs."""
    from hrexp.compare import main  # calls startup() itself, as `python -m hrexp.compare` does

    return main(None if argv is None else list(argv))


COMMANDS = {"train": train, "eval": evaluate, "export": export, "predict": predict, "compare": compare}


def main() -> int:
    """``hrexp <train|eval|export|predict|compare> [arguments]``: the commands above under one name."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: hrexp {{{','.join(COMMANDS)}}} [arguments]\n\n{__doc__}", file=sys.stderr)
        return 0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2
    command = sys.argv.pop(1)
    sys.argv[0] = f"hrexp {command}"  # Hydra and argparse show it in their usage lines
    result = COMMANDS[command]()
    return result if isinstance(result, int) else 0
