"""The one-command model comparison: a Hydra multirun over models, each run with its own record."""

from __future__ import annotations

import csv
import json

import pytest

from hrexp.startup import CONFIG_DIR
from tests.helpers import ROOT, TINY, run_script


def _val_rows(job) -> list[dict[str, str]]:
    with open(job / "csv" / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val/mre")]


def test_multirun_over_three_models_logs_to_one_wandb_group_and_ends_in_a_comparison(tmp_path, cache_dir):
    """Three models, offline W&B: one group, best metrics in each summary; the comparison the sweep
    writes equals each run's own CSV log."""
    from hrexp.training.loggers import read_offline_run

    sweep = tmp_path / "sweep"
    args = ["-m", "model=unet,resnet50,hrnet_w32", "task=landmarks", *TINY, "trainer.max_epochs=2", "test=false",
            "logger=many", f"hydra.sweep.dir={sweep}"]
    run_script("train.py", args, cache_dir)
    records, groups = {}, set()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    for job in jobs:
        record = json.loads((job / "results.json").read_text())
        records[record["choices"]["model"]] = record
        rows = _val_rows(job)
        (wandb_run,) = (job / "wandb").glob("offline-run-*")
        run = read_offline_run(wandb_run)
        groups.add(run.group)
        assert run.exit_code == 0 and run.job_type == "landmarks"
        assert run.summary["best/val_mre"] == pytest.approx(min(float(r["val/mre"]) for r in rows), rel=1e-6)
        assert run.summary["best/val_loss"] == pytest.approx(min(float(r["val/loss"]) for r in rows), rel=1e-6)
    assert len(jobs) == 3 and len(groups) == 1 and groups.pop().endswith(sweep.name)
    assert set(records) == {"unet", "resnet50", "hrnet_w32"}
    assert records["resnet50"]["choices"]["head"] == "deconv"
    # each run's parameter count is its own model's (backbone + head)
    assert records["hrnet_w32"]["params_backbone"] == 29_305_536
    assert records["unet"]["params_backbone"] == 7_217_456
    assert records["resnet50"]["params"]["total"] > records["resnet50"]["params_backbone"] + 10_000_000  # deconv head

    # The comparison written at the end of the sweep, against each run's metrics.csv.
    with open(sweep / "comparison.csv") as fh:
        table = {row["model"]: row for row in csv.DictReader(fh)}
    assert set(table) == set(records) and (sweep / "comparison.md").is_file() and (sweep / "comparison.png").is_file()
    for job in jobs:
        record = json.loads((job / "results.json").read_text())
        row = table[record["choices"]["model"]]
        rows = _val_rows(job)
        best = min(rows, key=lambda r: float(r["val/mre"]))
        assert float(row["best val MRE (px)"]) == pytest.approx(float(best["val/mre"]), rel=1e-9)
        assert int(row["best epoch"]) == int(best["epoch"])
        assert float(row["val SDR@8px"]) == pytest.approx(float(best["val/sdr_8"]), rel=1e-9)
        assert float(row["best val loss"]) == pytest.approx(min(float(r["val/loss"]) for r in rows), rel=1e-9)
        assert float(row["params (M)"]) == pytest.approx(record["params"]["total"] / 1e6, rel=1e-6)


# A small landmark job of the scratch HRNet-W18 (~5 s of training), for sweeps of several jobs.
SMALL_JOB = ["model=hrnet_w18", *TINY, "trainer.max_epochs=1", "test=false", "callbacks.progress_bar=null"]


def _jobs(sweep) -> dict[int, dict]:
    return {int(p.name): json.loads((p / "results.json").read_text())
            for p in sweep.iterdir() if p.is_dir() and p.name.isdigit() and (p / "results.json").is_file()}


@pytest.mark.slow  # ~30 s
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    # job 1 asks for an input the backbone's stride 32 cannot take: it fails at build time
    proc = run_script("train.py", ["-m", *SMALL_JOB, "data.image_size=[64,32],[60,30],[32,32]",
                                   f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 0
    jobs = _jobs(sweep)
    assert [jobs[i]["status"] for i in range(3)] == ["finished", "failed", "finished"]
    assert "data.image_size=[60, 30]" in jobs[1]["error"] and "Traceback" in jobs[1]["traceback"]
    assert jobs[2]["input_size"] == [32, 32] and jobs[2]["best"]["val/mre"]["value"] > 0
    status = json.loads((sweep / "sweep_status.json").read_text())
    assert status["failed"] == ["1"] and "data.image_size=[60,30]" in status["jobs"][1]["overrides"]


def test_a_single_run_that_fails_exits_non_zero_with_a_failed_record(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_script("train.py", [*SMALL_JOB, "data.image_size=[60,30]", f"hydra.run.dir={run}"], cache_dir, check=False)
    assert proc.returncode != 0
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and "multiple of 32" in record["error"]


@pytest.mark.slow  # ~45 s
def test_optuna_sweep_runs_three_trials_and_reports_the_best(tmp_path, cache_dir):
    import yaml

    sweep = tmp_path / "optuna"
    run_script("train.py", [*SMALL_JOB, "hparams_search=landmarks_optuna", "hydra.sweeper.n_trials=3",
                            f"hydra.sweep.dir={sweep}"], cache_dir)
    jobs = _jobs(sweep)
    assert sorted(jobs) == [0, 1, 2] and all(j["status"] == "finished" for j in jobs.values())
    best_job = min(jobs, key=lambda i: jobs[i]["best"]["val/mre"]["value"])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(jobs[best_job]["best"]["val/mre"]["value"], rel=1e-9)
    # the reported parameters are those of the best trial's job
    overrides = yaml.safe_load((sweep / str(best_job) / ".hydra" / "overrides.yaml").read_text())
    for key, value in result["best_params"].items():
        assert any(o.startswith(f"{key}=") and float(o.split("=", 1)[1]) == pytest.approx(float(value)) for o in overrides)


@pytest.mark.slow  # ~40 s
def test_joblib_launcher_runs_jobs_in_parallel_processes_with_their_own_folders(tmp_path, cache_dir):
    sweep = tmp_path / "joblib"
    run_script("train.py", ["-m", *SMALL_JOB, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
                            f"hydra.sweep.dir={sweep}"], cache_dir)
    jobs = _jobs(sweep)
    assert sorted(jobs) == [0, 1] and [jobs[i]["seed"] for i in (0, 1)] == [1, 2]
    assert all(j["status"] == "finished" and (sweep / str(i) / "csv" / "metrics.csv").is_file() for i, j in jobs.items())


@pytest.mark.slow  # ~60 s
def test_submitit_local_executor_runs_the_jobs(tmp_path, cache_dir):
    """The submitit launcher's local executor: the same code path as SLURM, minus the cluster."""
    sweep = tmp_path / "submitit"
    run_script("train.py", ["-m", *SMALL_JOB, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                            "hydra.launcher.gpus_per_node=0", "seed=1,2", f"hydra.sweep.dir={sweep}"], cache_dir)
    jobs = _jobs(sweep)
    assert sorted(jobs) == [0, 1] and all(j["status"] == "finished" for j in jobs.values())
    assert list((sweep / ".submitit").iterdir())  # submitit's own job folders (logs, pickles)


def test_slurm_launcher_config_composes_with_nodes_gpus_time_and_partition():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=600", "trainer=ddp", "trainer.num_nodes=2",
        ], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 600)
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.strategy.startswith("ddp")
    GlobalHydra.instance().clear()


@pytest.mark.slow  # ~40 s
def test_a_job_that_crashes_mid_run_still_closes_its_wandb_run(tmp_path, cache_dir):
    """The first job raises once training has started (its W&B run is open): the run is closed with
    exit code 1, so the sweep's W&B group shows every job; the second job runs normally."""
    from hrexp.training.loggers import read_offline_run

    sweep = tmp_path / "crash"
    run_script("train.py", ["-m", *SMALL_JOB, "logger=wandb", "+callbacks.crash._target_=tests.fit_helpers.CrashOnTrainStart",
                            "+callbacks.crash.crash=true,false", f"hydra.sweep.dir={sweep}"], cache_dir)
    jobs = _jobs(sweep)
    assert jobs[0]["status"] == "failed" and "deliberate crash" in jobs[0]["error"]
    assert jobs[1]["status"] == "finished"
    runs = [read_offline_run(next((sweep / str(i) / "wandb").glob("offline-run-*"))) for i in (0, 1)]
    assert [r.exit_code for r in runs] == [1, 0]
    assert runs[0].group == runs[1].group != ""


@pytest.mark.slow  # ~45 s: 2 trials train, 2 fail at build time
def test_failed_optuna_trials_are_recorded_as_failed_and_the_study_goes_on(tmp_path, cache_dir):
    """Grid over (landmark count checked against the data) x (a NaN batch at step 1 or never): one trial
    finishes, one fails mid-fit (non-finite loss), two fail at build time (41 landmarks asked, 40 given)."""
    import optuna
    import yaml

    sweep = tmp_path / "optuna_failures"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = run_script("train.py", [
        "--config-dir", str(ROOT / "tests" / "sweep_conf"), *SMALL_JOB, "hparams_search=failing_grid",
        f"+hydra.sweeper.storage={storage}", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 0
    jobs = _jobs(sweep)
    assert sorted(jobs) == [0, 1, 2, 3]
    errors = sorted(jobs[i].get("error") or "" for i in jobs)
    assert [j["status"] for j in jobs.values()].count("finished") == 1
    assert sum("num_keypoints" in e or "41" in e for e in errors) == 2 and sum("training loss nan" in e for e in errors) == 1
    study = optuna.load_study(study_name="failures", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    finished = next(j for j in jobs.values() if j["status"] == "finished")
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(finished["best"]["val/mre"]["value"], rel=1e-9)
    assert (sweep / "comparison.md").is_file() and json.loads((sweep / "sweep_status.json").read_text())["failed"]


@pytest.mark.slow  # ~30 s: 3 trials over two commands
def test_an_optuna_study_stopped_after_two_trials_continues_from_its_storage(tmp_path, cache_dir):
    import functools

    import optuna
    import yaml

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [*SMALL_JOB, "hparams_search=landmarks_optuna", f"hydra.sweeper.storage={storage}",
              "hydra.sweeper.study_name=continued"]
    run_script("train.py", [*common, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'first'}"], cache_dir)
    assert len(optuna.load_study(study_name="continued", storage=storage).trials) == 2
    run_script("train.py", [*common, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'second'}"], cache_dir)
    study = optuna.load_study(study_name="continued", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # each trial in the storage is its job: the parameters the job's resolved config ran with, and the best
    # val/mre its results.json reports; the third is the second command's only job
    searched = ("optimizer.lr", "optimizer.weight_decay", "param_groups.backbone_lr_mult")
    jobs = [tmp_path / "first" / "0", tmp_path / "first" / "1", tmp_path / "second" / "0"]
    for trial, job in zip(study.trials, jobs, strict=True):
        config = yaml.safe_load((job / "config.yaml").read_text())
        ran_with = {key: functools.reduce(lambda node, part: node[part], key.split("."), config) for key in searched}
        assert trial.params == ran_with, (trial.number, job)
        record = json.loads((job / "results.json").read_text())
        assert record["status"] == "finished"
        assert trial.value == record["best"]["val/mre"]["value"], (trial.number, job)
    # the continued study samples on: its trial is not a repeat of the first command's (same seed in the config)
    assert study.trials[2].params not in [t.params for t in study.trials[:2]]


@pytest.mark.slow  # ~25 s
def test_a_job_failing_before_training_still_appears_in_wandb_as_failed(tmp_path, cache_dir):
    from hrexp.training.loggers import read_offline_run

    sweep = tmp_path / "early"
    run_script("train.py", ["-m", *SMALL_JOB, "logger=wandb", "data.num_keypoints=40,41", f"hydra.sweep.dir={sweep}"],
               cache_dir)
    jobs = _jobs(sweep)
    assert [jobs[i]["status"] for i in (0, 1)] == ["finished", "failed"]
    runs = [read_offline_run(next((sweep / str(i) / "wandb").glob("offline-run-*"))) for i in (0, 1)]
    assert [r.exit_code for r in runs] == [0, 1]
    assert runs[0].group == runs[1].group != "" and runs[1].job_type == "landmarks"
    assert runs[1].summary["error"] == jobs[1]["error"] and "41" in runs[1].summary["error"]
