"""hydra-optuna-sweeper with failed trials recorded as failed, so that the study goes on.

The plugin (1.2.0, on optuna 2.10) tells Optuna every job's return value as a COMPLETE trial. A job
that failed (hrexp returns NaN from a failed job of a sweep, see ``train_run.run_job``) or diverged
(a NaN metric) makes optuna 2.10 raise ``Trial N failed, because the objective function returned
nan``; the plugin then tells the trial FAIL *with* the value, which raises again, and the whole
sweep stops without its report. Here the study the plugin creates is wrapped so that a non-finite
value becomes a FAIL trial without values: Optuna's samplers skip it, the sweep goes on, and
``optimization_results.yaml`` names the best finished trial.

A study continued from its storage (``hydra.sweeper.storage``) gets a sampler seeded afresh from its seed and the
number of trials already stored: with the config's fixed seed the sampler would otherwise start its random
sequence again and repeat the first command's trials. Everything else is the plugin's.
"""

from __future__ import annotations

import logging
import math
from typing import Any, List
from unittest import mock

import numpy as np
import optuna
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginSweeper

log = logging.getLogger(__name__)


class _FailedTrialsAsFail:
    """A study whose ``tell`` records a non-finite or failed trial as FAIL (no values); else the study's."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def tell(self, trial: Any, values: Any = None, state: Any = None) -> Any:
        failed = state == optuna.trial.TrialState.FAIL
        non_finite = values is not None and any(not math.isfinite(float(v)) for v in values)
        if failed or non_finite:
            number = getattr(trial, "number", trial)
            log.warning("trial %s failed (%s): recorded as failed, the study goes on", number,
                        "its job failed or its metric is not finite" if non_finite else "its job raised")
            return self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return self._study.tell(trial, values=values, state=state)


def continue_sampling(study: optuna.Study) -> None:
    """Reseed the sampler of a study that holds trials already, deterministically, from its own random state and
    the trial count; a new study keeps its seed. The random states are optuna 2.10's (``TPESampler._rng``, its
    startup ``RandomSampler._rng``; optuna's own ``reseed_rng`` draws from the OS, which is not reproducible)."""
    stored = len(study.trials)
    if stored == 0:
        return
    for sampler in (study.sampler, getattr(study.sampler, "_random_sampler", None)):
        rng = getattr(sampler, "_rng", None)
        if isinstance(rng, np.random.RandomState):
            sampler._rng = np.random.RandomState((int(rng.randint(0, 2**31 - 1)) + stored) % (2**31 - 1))
    log.info("the study holds %d trials already: its sampler is reseeded so that it does not repeat them", stored)


class OptunaSweeper(_PluginSweeper):
    """The plugin's sweeper (same options: ``hydra.sweeper.*``) with failed trials as FAIL trials."""

    def sweep(self, arguments: List[str]) -> None:
        create_study = optuna.create_study

        def create_wrapped_study(*args: Any, **kwargs: Any) -> _FailedTrialsAsFail:
            study = create_study(*args, **kwargs)
            continue_sampling(study)
            return _FailedTrialsAsFail(study)

        with mock.patch.object(optuna, "create_study", create_wrapped_study):
            return super().sweep(arguments)
