"""Failures survived, counted in rows: collectors killed or stalled mid-run come back and the
dataset holds exactly what the replay acknowledged."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as pads
import pytest
import ray

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from tests.toy_envs import open_gate, waiting_pids
from tests.waiting import wait_for

SMALL = [
    "env.id=tests.toy_envs:CountingEnv",
    "env.num_envs=2",
    "rollout.policy.kind=random",
    "rollout.num_collectors=2",
    "rollout.steps=6000",
    "rollout.batch_rows=100",
    "rollout.num_cpus=0.25",
    "rollout.max_pushes_in_flight=2",
    "replay.num_cpus=0.1",
    "replay.capacity_rows=20000",
    "aggregation.num_cpus=0.1",
]


def _args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["--set", f"run.output_dir={tmp_path}", *sum((["--set", item] for item in [*SMALL, *overrides]), [])]


def _run_folder(run_dir: Path, *overrides: str) -> None:
    """A run folder with its config.yaml and nothing else (PPO collects its own rows)."""
    from harvest.cluster.config import dump_config, load_config

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(load_config(None, [*SMALL, *overrides])))


def _collected(run_dir: Path) -> tuple[dict, Dataset, np.ndarray]:
    """The run's collect summary, its dataset, and (episode_id, step) of every dataset row."""
    summary = json.loads((run_dir / "summary.json").read_text())
    dataset = Dataset.open(run_dir / "dataset")
    table = pads.dataset(dataset.files).to_table(columns=["episode_id", "step"])
    keys = np.stack([table["episode_id"].to_numpy(), table["step"].to_numpy()], axis=1)
    return summary["collect"], dataset, keys


@contextmanager
def killing_once(title: str, when, timeout_s: float = 200):
    """While the block runs, a thread SIGKILLs the first process of this test session's Ray
    (a descendant of this process) whose title starts with `title` once `when()` is true; yields
    the list of pids it killed."""
    killed: list[int] = []
    done = threading.Event()

    def kill() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not killed and not done.is_set():
            pids = [
                process.pid
                for process in psutil.Process().children(recursive=True)
                if _title(process).startswith(title)
            ]
            if pids and when():
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        done.set()
        killer.join(timeout=10)


def _title(process: psutil.Process) -> str:
    try:
        return (process.cmdline() or [""])[0]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _assert_exact(collect: dict, dataset: Dataset, keys: np.ndarray, steps: int) -> None:
    assert collect["rows"] >= steps
    assert dataset.manifest.rows == collect["rows"] == keys.shape[0], "every acknowledged row is in the dataset"
    assert np.unique(keys, axis=0).shape[0] == keys.shape[0], "no (episode, step) stored twice"


@pytest.mark.timeout(300)
def test_a_collector_killed_mid_run_is_restarted_and_no_row_is_lost_or_doubled(ray_cluster, tmp_path):
    gate, killed = tmp_path / "gate", []

    def kill_one_collector() -> None:  # SIGKILL a collector mid-run: both wait at the gate, rows pushed before it
        try:
            pids = wait_for(
                lambda: len(waiting_pids(gate)) == 2 and waiting_pids(gate), 200, "both collectors to reach the gate"
            )
            os.kill(min(pids), signal.SIGKILL)
            killed.append(min(pids))
        finally:
            open_gate(gate)

    killer = threading.Thread(target=kill_one_collector)
    killer.start()
    # ~1,000 rows/s per collector; each env copy waits at its 150th step (300 rows cut, 200 pushed)
    slow = ["env.id=tests.toy_envs:GatedEnv", f"env.kwargs={{step_s: 0.001, gate_dir: '{gate}', gate_at_step: 150}}"]
    assert main(["collect", "--run-id", "killed", *_args(tmp_path, *slow)]) == 0
    killer.join(timeout=10)
    assert killed, "a collector was killed"
    assert main(["compact", str(tmp_path / "killed")]) == 0
    collect, dataset, keys = _collected(tmp_path / "killed")
    assert sorted(collect["restarts"]) == [0, 1], collect["restarts"]
    _assert_exact(collect, dataset, keys, 6000)
    # the restarted incarnation's episodes are new ids, and every finished episode is whole
    episode_ids = np.unique(keys[:, 0])
    incarnations = (episode_ids & 0xFFFFFFFF) >> 24
    assert set(incarnations.tolist()) == {0, 1}


@pytest.mark.timeout(300)
def test_a_planted_stall_is_reported_naming_the_collector_and_the_call_and_the_run_recovers(ray_cluster, tmp_path):
    flag = tmp_path / "hung"
    args = _args(
        tmp_path,
        "env.id=tests.toy_envs:HangingEnv",
        f"env.kwargs={{hang_at_step: 400, flag_file: '{flag}'}}",
        "watchdog.stall_after_s=3",
        "watchdog.check_every_s=1",
    )
    assert main(["collect", "--run-id", "stalled", *args]) == 0
    assert flag.exists(), "an env step hung"
    assert main(["compact", str(tmp_path / "stalled")]) == 0
    collect, dataset, keys = _collected(tmp_path / "stalled")
    (stall,) = collect["stalls"]
    assert stall["component"] in ("collector 0", "collector 1")
    collector = int(stall["component"].split()[-1])
    assert stall["waiting_for"] == f"RolloutWorker[{collector}].env.step"
    # not before stall_after_s; the ceiling is generous (the step hangs for good; a busy machine delays the check)
    assert 3 <= stall["seconds"] < 60, stall
    assert stall["recovered"] is True
    assert collect["restarts"][collector] == 1 and sum(collect["restarts"]) == 1
    _assert_exact(collect, dataset, keys, 6000)
    log = (tmp_path / "stalled" / "harvest.log").read_text()
    assert f"stall: collector {collector} has been waiting" in log and "env.step" in log


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.timeout(400)
def test_a_learner_killed_mid_training_resumes_from_its_last_epoch_and_ends_where_an_uninterrupted_one_does(
    ray_cluster, tmp_path
):

    assert (
        main(
            [
                "collect",
                "--run-id",
                "data",
                *_args(
                    tmp_path,
                    "rollout.steps=40000",
                    "rollout.batch_rows=2000",
                    "learner.bc.epochs=8",
                    "learner.hidden_sizes=[256, 256]",
                    "learner.batch_size=64",
                    "learner.num_cpus=0.5",
                ),
            ]
        )
        == 0
    )
    assert main(["compact", str(tmp_path / "data")]) == 0
    shutil.copytree(tmp_path / "data", tmp_path / "again")
    assert main(["train", str(tmp_path / "again")]) == 0  # the reference: never interrupted

    last = tmp_path / "data" / "learner" / "last.safetensors"
    with killing_once("ray::BCLearner", when=last.is_file) as killed:
        assert main(["train", str(tmp_path / "data")]) == 0
    assert killed, "the learner was killed mid-training"
    history = json.loads((tmp_path / "data" / "learner" / "training_history.json").read_text())
    assert [record["epoch"] for record in history["epochs"]] == list(range(1, 9)), "every epoch once, in order"
    assert not last.exists(), "the resume state is removed once training finished"
    assert len(history["resumed_after"]) == 1 and 1 <= history["resumed_after"][0] < 8, history["resumed_after"]
    resumed, reference = (_tensors(tmp_path / name / "learner" / "final.safetensors") for name in ("data", "again"))
    assert resumed.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


def _backpressure(worker: ray.actor.ActorHandle):
    """The collector's activity when it is `backpressure: ...`, else None."""
    activity = ray.get(worker.activity.remote(), timeout=60)
    return activity if activity.what.startswith("backpressure") else None


@pytest.mark.timeout(240)
def test_a_collector_pauses_while_the_nodes_memory_is_above_the_limit_and_says_so(ray_cluster):
    import ray

    from harvest.envs.config import EnvConfig
    from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig
    from harvest.rollout.policies import ConfiguredPolicyFactory
    from harvest.rollout.replay.replay import start_replay
    from harvest.rollout.worker import PushTimeoutError, RolloutWorker, node_memory_used, schema_for

    env = EnvConfig(id="tests.toy_envs:CountingEnv", num_envs=2)
    rollout = RolloutConfig(
        batch_rows=50,
        push_timeout_s=3.0,
        policy=PolicyConfig(kind="random"),
        pause_above_memory=max(0.001, node_memory_used() / 4),
    )  # far below what is used now
    factory = ConfiguredPolicyFactory(rollout.policy, env.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=1000, num_cpus=0.1), schema_for(env, factory))
    worker = (
        ray.remote(RolloutWorker)
        .options(num_cpus=0.25, max_concurrency=2)
        .remote(env, rollout, factory, replay, 0, "memory", 0)
    )
    try:
        collecting = worker.collect.remote(200)
        # It pauses before its first push; its activity stays so once it gives up (push_timeout_s).
        activity = wait_for(lambda: _backpressure(worker), 90, "the collector to pause for memory")
        assert activity.what.startswith("backpressure: node memory"), activity
        with pytest.raises(PushTimeoutError, match="pause_above_memory"):
            try:
                ray.get(collecting, timeout=60)
            except ray.exceptions.RayTaskError as err:
                raise err.as_instanceof_cause() from err
        assert replay.inserted_rows() == 0, "nothing was pushed while memory was above the limit"
    finally:
        ray.kill(worker, no_restart=True)
        replay.kill()


@pytest.mark.timeout(900)  # a whole run twice (collect, train, evaluate): minutes on a busy machine
def test_harvest_run_resume_goes_on_from_the_durable_shards_and_rotators_of_an_interrupted_run(ray_cluster, tmp_path):
    # The run rotates its dataset while collecting (the longer path: durable shards plus the
    # rotators' state); a run that compacts at the end resumes through the same collection.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    settings = _args(
        tmp_path,
        "env.id=tests.toy_envs:HangingEnv",
        "env.kwargs={step_s: 0.002}",
        "rollout.steps=8000",
        f"replay.wal_dir={tmp_path / 'wal'}",
        "replay.checkpoint_every_rows=2000",
        "learner.bc.epochs=1",
        "learner.hidden_sizes=[16]",
        "learner.num_cpus=0.5",
        "eval.episodes=2",
        "eval.baselines=[random]",
        f"ray.address={ray_cluster.address_info['gcs_address']}",
        "aggregation.rotate_every_s=1",
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "harvest", "run", "--run-id", "cut", *settings],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = tmp_path / "cut" / "dataset" / "_manifest.json"

    try:  # interrupt it mid-collection, after a rotation wrote files: the driver dies, with its actors
        wait_for(
            lambda: manifest.is_file() and json.loads(manifest.read_text())["rows"], 200, "a rotation to write files"
        )
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = json.loads(manifest.read_text())
    assert before["in_progress"] and 0 < before["rows"] < 8000, "interrupted after a rotation wrote files"

    assert main(["run", "--resume", "cut", "--set", f"run.output_dir={tmp_path}"]) == 0
    collect, dataset, keys = _collected(tmp_path / "cut")
    _assert_exact(collect, dataset, keys, 8000)
    incarnations = (np.unique(keys[:, 0]) & 0xFFFFFFFF) >> 24
    assert set(incarnations.tolist()) == {0, 1}, "rows of the interrupted run and of the resumed one"
    assert 0 < int(np.sum(((keys[:, 0] & 0xFFFFFFFF) >> 24) == 0)) < 8000
    # the files written before the interruption are part of the dataset, unchanged
    files = {entry["path"]: entry["sha256"] for entry in json.loads(manifest.read_text())["files"]}
    assert all(files.get(entry["path"]) == entry["sha256"] for entry in before["files"])
    assert not (tmp_path / "wal" / "rotation").exists()
    assert (tmp_path / "cut" / "learner" / "final.safetensors").is_file()
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["eval"]


@pytest.mark.timeout(400)
def test_a_ppo_learner_killed_mid_training_goes_on_after_its_last_iteration(ray_cluster, tmp_path):
    _run_folder(tmp_path / "ppo")
    last = tmp_path / "ppo" / "learner" / "last.safetensors"
    ppo = [
        "learner.stages=[ppo]",
        "learner.ppo.env_steps=12000",
        "learner.ppo.num_collectors=1",
        "learner.ppo.rows_per_collector=1000",
        "learner.ppo.eval_every=100",
        "learner.eval.episodes=1",
        "learner.eval.max_steps=50",
        "learner.hidden_sizes=[32]",
        "learner.num_cpus=0.5",
    ]
    with killing_once("ray::PPOLearner", when=last.is_file) as killed:
        assert main(["train", str(tmp_path / "ppo"), *sum((["--set", item] for item in ppo), [])]) == 0
    assert killed, "the learner was killed mid-training"
    history = json.loads((tmp_path / "ppo" / "learner" / "training_history.json").read_text())
    iterations = [entry["iteration"] for entry in history["iterations"]]
    assert iterations == list(range(1, len(iterations) + 1)), "every iteration once, in order"
    assert history["iterations"][-1]["env_steps"] >= 12000
    assert len(history["resumed_after"]) == 1 and 1 <= history["resumed_after"][0] < len(iterations)
    assert not last.exists()


@pytest.mark.timeout(400)
def test_a_ppo_collector_killed_mid_training_is_restarted_and_training_goes_on(ray_cluster, tmp_path):
    """PPO's collectors are a fleet like the pipeline's: Ray restarts a killed one, it gets the
    current weights again and the iteration it died in is collected in full."""
    _run_folder(tmp_path / "ppo")
    last = tmp_path / "ppo" / "learner" / "last.safetensors"
    ppo = [
        "learner.stages=[ppo]",
        "learner.ppo.env_steps=6000",
        "learner.ppo.num_collectors=2",
        "learner.ppo.rows_per_collector=500",
        "learner.ppo.eval_every=100",
        "learner.eval.episodes=1",
        "learner.eval.max_steps=50",
        "learner.hidden_sizes=[32]",
        "learner.num_cpus=0.5",
        "learner.ppo.collector_num_cpus=0.25",
    ]
    with killing_once("ray::RolloutWorker", when=last.is_file) as killed:  # after the first iteration
        assert main(["train", str(tmp_path / "ppo"), *sum((["--set", item] for item in ppo), [])]) == 0
    assert killed, "a collector was killed mid-training"
    history = json.loads((tmp_path / "ppo" / "learner" / "training_history.json").read_text())
    assert sorted(history["collector_restarts"]) == [0, 1], "the killed collector came back once"
    assert history["resumed_after"] == [], "the learner itself was not restarted"
    iterations = history["iterations"]
    assert [entry["iteration"] for entry in iterations] == list(range(1, len(iterations) + 1))
    # every iteration has both collectors' rows: the one a collector died in was collected again
    steps = np.diff([0] + [entry["env_steps"] for entry in iterations])
    assert (steps >= 2 * 500).all(), steps
    assert iterations[-1]["env_steps"] >= 6000


def _saved_env_steps(last: Path) -> int:
    """Env steps in a DQfD learner's resume state (0 while there is none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(last), framework="pt") as handle:
            return json.loads(handle.metadata()["harvest_training_state"])["extra"]["env_steps"]
    except (FileNotFoundError, OSError):
        return 0


@pytest.mark.timeout(300)
def test_a_dqfd_learner_killed_while_interacting_goes_on_with_its_replay_and_counters(ray_cluster, tmp_path):
    assert main(["collect", "--run-id", "dqfd", *_args(tmp_path, "rollout.steps=600")]) == 0
    assert main(["compact", str(tmp_path / "dqfd")]) == 0
    learner = tmp_path / "dqfd" / "learner"
    dqfd = [
        "learner.stages=[dqfd]",
        "learner.hidden_sizes=[32]",
        "learner.batch_size=32",
        "learner.num_cpus=0.5",
        "learner.dqfd.pretrain_steps=200",
        "learner.dqfd.online_env_steps=1500",
        "learner.dqfd.log_every=100",
        "learner.eval.episodes=1",
        "learner.eval.max_steps=20",
    ]
    with killing_once("ray::DQfDLearner", when=lambda: _saved_env_steps(learner / "last.safetensors") >= 500) as killed:
        assert main(["train", str(tmp_path / "dqfd"), *sum((["--set", item] for item in dqfd), [])]) == 0
    assert killed, "the learner was killed while interacting"
    history = json.loads((learner / "training_history.json").read_text())
    steps = history["steps"]
    assert [entry["step"] for entry in steps] == list(range(100, 1800, 100)), "every history entry once, in order"
    assert [entry["phase"] for entry in steps] == ["pretrain"] * 2 + ["online"] * 15
    assert steps[-1]["env_steps"] == 1500
    (resumed_after,) = history["resumed_after"]
    assert 700 <= resumed_after < 1700
    before = next(entry for entry in steps if entry["step"] == resumed_after)
    after = next(entry for entry in steps if entry["step"] == resumed_after + 100)
    # the agent's replay came back: it holds what it held before the kill and what the resumed learner added
    assert after["agent_rows"] > before["agent_rows"] >= 300, (before, after)  # 100 env steps add < 100 rows
    assert not (learner / "last.safetensors").exists() and not (learner / "agent-replay").exists()


@pytest.mark.timeout(180)
def test_a_collector_ray_cannot_place_holds_no_rows_back_and_is_named(ray_cluster, tmp_path):
    # 2 CPUs: two collectors of 0.75 CPU and the shards fit, the third never starts.
    slow = ["env.id=tests.toy_envs:HangingEnv", "env.kwargs={step_s: 0.001}"]  # ~1,000 rows/s per collector
    args = _args(
        tmp_path,
        *slow,
        "rollout.num_collectors=3",
        "rollout.num_cpus=0.75",
        "rollout.chunk_rows=1000",
        "watchdog.check_every_s=1",
    )
    assert main(["collect", "--run-id", "crowded", *args]) == 0
    assert main(["compact", str(tmp_path / "crowded")]) == 0
    collect, dataset, keys = _collected(tmp_path / "crowded")
    _assert_exact(collect, dataset, keys, 6000)
    assert len(collect["nodes"]) == 2 and not collect["stalls"]
    sources = set(pads.dataset(dataset.files).to_table(columns=["collector_id"])["collector_id"].to_pylist())
    (waiting,) = {0, 1, 2} - sources  # (which two Ray places first is its choice)
    log = (tmp_path / "crowded" / "harvest.log").read_text()
    assert (
        f"collector {waiting} has not started yet (waiting for RolloutWorker[{waiting}]: resources to start it" in log
    )


@pytest.mark.timeout(180)
def test_a_resumed_run_does_not_train_its_finished_stages_again(ray_cluster, tmp_path):
    from harvest.cluster.config import load_config
    from harvest.cluster.run_folder import RunPaths
    from harvest.cluster.stages.train import train
    from harvest.learners.bc import BCLearner
    from tests.learners.test_dqfd import mixed_dataset

    paths = RunPaths(tmp_path / "staged")
    mixed_dataset(paths.root / "dataset", seed=1, expert_episodes=2, random_episodes=5)
    cfg = load_config(
        None,
        [
            "env.id=CartPole-v1",
            "learner.stages=[bc, dqfd]",
            "learner.bc.epochs=2",
            "learner.hidden_sizes=[16]",
            "learner.num_cpus=0.5",
            "learner.dqfd.pretrain_steps=50",
            "learner.dqfd.log_every=50",
            "learner.eval.episodes=1",
            "learner.eval.max_steps=20",
        ],
    )
    bc_dir, dqfd_dir = paths.learner / "1-bc", paths.learner / "2-dqfd"
    BCLearner(cfg.learner, str(paths.dataset), str(bc_dir)).train()  # the first stage had finished
    bc_written = {path.name: path.stat().st_mtime_ns for path in bc_dir.iterdir()}
    train(cfg, paths, "staged", resume=True)
    assert {path.name: path.stat().st_mtime_ns for path in bc_dir.iterdir()} == bc_written, "BC not trained again"
    history = json.loads((dqfd_dir / "training_history.json").read_text())
    assert history["config"]["init_checkpoint"] == str(bc_dir / "best.safetensors")
    assert (paths.learner / "best.safetensors").is_file()


def test_the_watchdog_names_a_full_object_store(ray_cluster):
    from harvest.rollout.watchdog import object_store_report

    held = [ray.put(np.ones(40 * 2**20, np.uint8)) for _ in range(6)]  # 240 of the test cluster's 256 MiB
    # (the raylets' memory summary can miss its deadline on a busy machine: None until it answers)
    fill, sentence = wait_for(object_store_report, 120, "Ray's memory summary")
    assert fill >= 0.9 and sentence.startswith("Ray's object store is 9") and " MiB in " in sentence, sentence
    del held


@pytest.mark.timeout(200)
def test_a_ppo_iteration_whose_collector_hangs_fails_naming_the_collector_and_its_call(ray_cluster, tmp_path, capfd):
    _run_folder(tmp_path / "hang", "env.id=tests.toy_envs:HangingEnv")
    ppo = [
        "learner.stages=[ppo]",
        "learner.ppo.env_steps=4000",
        "learner.ppo.num_collectors=1",
        "learner.ppo.rows_per_collector=500",
        "learner.ppo.collect_timeout_s=5",
        "learner.hidden_sizes=[16]",
        "learner.num_cpus=0.5",
        f"env.kwargs={{hang_at_step: 100, flag_file: {tmp_path / 'hung'}}}",
    ]
    code = main(["train", str(tmp_path / "hang"), *sum((["--set", item] for item in ppo), [])])
    err = capfd.readouterr().err
    assert code == 4, err[-3000:]  # the run failed in its parts: not a bug in Harvest (3)
    assert re.search(r"ERROR .*collectors not done after 5s: collector 0: env\.step for", err), err[-3000:]
    assert "Traceback" not in err and "a bug in Harvest" not in err
    assert (tmp_path / "hung").exists()
