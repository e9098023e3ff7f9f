"""Shared test set-up: offline timm, project paths, the real-data location, and config composition."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hrexp.startup import CONFIG_DIR, startup

ROOT = Path(__file__).resolve().parents[1]
# The entry points' start-up (offline hub before anything imports timm, project root, resolvers).
startup(ROOT)
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from tests.helpers import REQUIRE_SHARED_DATA, SHARED_DATA  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With HREXP_REQUIRE_SHARED_DATA=1 (CI), a skip whose reason names the shared data (a ``skipif`` marker, a
    fixture's ``pytest.skip``) is reported as a failure: in CI, missing real data must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SHARED_DATA and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if "HREXP_SHARED_DATA" in reason or str(SHARED_DATA) in reason:
            report.outcome = "failed"
            report.longrepr = f"{reason}\nHREXP_REQUIRE_SHARED_DATA=1 (CI) makes this a failure, not a skip"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache folder for generated data across the session (the synthetic set is built once)."""
    path = tmp_path_factory.mktemp("hrexp_cache")
    os.environ["HREXP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for a test module's shared training run, removed when the module is done unless one of its
    tests failed. Each run writes hundreds of MB of checkpoints; kept for the whole session they filled the disk."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


def compose_for(overrides: list[str], out_dir: Path, name: str = "train"):
    """Compose ``conf/<name>.yaml`` with overrides, as ``train.py`` would, with outputs in ``out_dir/run``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(out_dir) / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg(tmp_path, cache_dir):
    """``compose_for`` with outputs in the test's tmp_path."""

    def _compose(overrides: list[str] = (), name: str = "train"):
        return compose_for(overrides, tmp_path, name)

    yield _compose
    GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- which slow tests CI runs
# CI runs `make test` and then the slow tests that are not `extended` (`make test-slow`, a budget of 25 min on
# 2 cores): each end-to-end path once (train + eval report, resume after a kill, DDP, sweep, predict, export,
# the result scripts' smoke runs). The tests below are marked `extended` here, in one place: the longest runs
# and second checks of a path CI already covers. `make test-extended` runs them, `make test-all` everything.
EXTENDED = {
    # the full default job (~8 min), the Kvasir run (~7 min), pose overfitting (~6 min)
    "test_default_job.py": "*",
    "test_seg_kvasir.py": "*",
    "test_pose_overfit.py": "*",
    # resume after a kill: test_resume.py is CI's; this one kills mid-checkpoint-write
    "test_checkpoints.py": {"test_a_kill_mid_write_leaves_loadable_checkpoints_and_the_run_resumes"},
    # DDP: CI runs the landmark metrics and the pose AP against one process
    # (the pose AP under DDP: tests/test_coco_keypoint_metric.py checks its gather on two processes in make test)
    "test_ddp.py": {"test_ddp_segmentation_metrics_and_loss_equal_single_process_eval",
                    "test_only_rank_zero_writes_run_folders_inside_a_ddp_multirun",
                    "test_ddp_pose_ap_on_an_odd_split_equals_single_process_eval"},
    # a refined checkpoint's stage 1 exported alone (~70 s of ONNX export); make test checks the refusal, and
    # test_export.py the export itself
    "test_coarse_to_fine.py": {"test_coarse_only_exports_stage_one_and_says_so"},
    "test_phases.py": {"test_under_ddp_the_frozen_backbone_stays_fixed_and_then_trains_in_step_on_both_ranks"},
    # sweeps: CI runs a failing job in a multirun and an Optuna study resumed from its storage
    # (the multirun over three models, ending in a comparison: CI's slow set runs multiruns, compare its own tests)
    "test_sweep.py": {"test_optuna_sweep_runs_three_trials_and_reports_the_best",
                      "test_multirun_over_three_models_logs_to_one_wandb_group_and_ends_in_a_comparison",
                      "test_joblib_launcher_runs_jobs_in_parallel_processes_with_their_own_folders",
                      "test_submitit_local_executor_runs_the_jobs",
                      "test_a_job_that_crashes_mid_run_still_closes_its_wandb_run",
                      "test_failed_optuna_trials_are_recorded_as_failed_and_the_study_goes_on",
                      "test_a_job_failing_before_training_still_appears_in_wandb_as_failed"},
    # feature checks beyond the paths: EMA through eval, compile / channels_last, ensembles of segmentation
    "test_ema.py": "*",
    "test_speed.py": {"test_a_compiled_training_step_matches_eager",
                      "test_a_fast_path_run_with_ema_is_evaluated_uncompiled_to_the_same_metric"},
    "test_seg_task.py": {"test_a_segmentation_ensemble_is_refused_before_scoring"},
    "test_predict.py": {"test_the_installed_command_and_the_script_refuse_a_bad_input"},
    # the command line's error output: make test keeps one case per kind of error and per entry point but export
    # (the in-process cases check every message, export's included)
    "test_bad_inputs.py": {"test_the_command_line_prints_the_message_without_a_traceback[config-option]",
                           "test_the_command_line_prints_the_message_without_a_traceback[config-sigma]",
                           "test_the_command_line_prints_the_message_without_a_traceback[ckpt-text-export]"},
}


def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`EXTENDED` `extended` (and `slow`, so `-m "not slow"` never runs them); a name there
    that its test module does not define is an error, so a renamed test cannot slip back into CI's set unnoticed."""
    modules = {}
    for item in items:
        file = item.path.name
        chosen = EXTENDED.get(file)
        name = getattr(item, "originalname", item.name)
        if getattr(item, "module", None) is not None:
            modules[file] = item.module
        # a name, or one case of a parametrised test as pytest names it (name[id])
        if chosen == "*" or (chosen and (name in chosen or item.name in chosen)):
            item.add_marker(pytest.mark.extended)
            item.add_marker(pytest.mark.slow)
    for file, module in modules.items():  # only the files collected in this session (a -k, a path)
        chosen = EXTENDED.get(file)
        missing = sorted(n for n in (() if chosen in (None, "*") else chosen) if not hasattr(module, n.split("[")[0]))
        if missing:
            raise pytest.UsageError(f"tests/conftest.py EXTENDED names tests that {file} does not define: {missing}")
