"""The one-command model comparison: a Hydra multirun over models, each run with its own record."""

from __future__ import annotations

import json

import pytest

from test_train_e2e import TINY, run_script


def test_multirun_over_three_models_records_params_and_best_metrics(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=unet,resnet50,hrnet_w32", "task=landmarks", *TINY, "trainer.max_epochs=1", "test=false",
            f"hydra.sweep.dir={sweep}"]
    run_script("train.py", args, cache_dir)
    records = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        record = json.loads((job / "results.json").read_text())
        records[record["choices"]["model"]] = record
        assert (job / "csv" / "metrics.csv").is_file()
    assert set(records) == {"unet", "resnet50", "hrnet_w32"}
    assert records["resnet50"]["choices"]["head"] == "deconv"
    # each run's parameter count is its own model's (backbone + head), and best values are recorded
    assert records["hrnet_w32"]["params_backbone"] == 29_305_536
    assert records["unet"]["params_backbone"] == 7_217_456
    assert records["resnet50"]["params"]["total"] > records["resnet50"]["params_backbone"] + 10_000_000  # deconv head
    for record in records.values():
        assert record["best"]["val/mre"]["value"] > 0 and record["best"]["val/loss"]["epoch"] == 0


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

    from tests.conftest import ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
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
