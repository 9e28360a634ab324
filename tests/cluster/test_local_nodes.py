"""A real two-node Ray cluster on this machine (`ray start`, token auth on), used as a user would:
`harvest submit` a run as a job, check where its actors ran, refuse clients without the token,
and kill the second node mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as pads
import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.local_nodes import LocalCluster
from tests.toy_envs import open_gate, waiting_pids
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "env.num_envs=4",
    "rollout.batch_rows=500",
    "rollout.num_cpus=0.25",
    "replay.num_cpus=0.1",
    "aggregation.num_cpus=0.1",
    "learner.bc.epochs=2",
    "learner.hidden_sizes=[32]",
    "learner.num_cpus=0.5",
    "eval.episodes=2",
    "eval.baselines=[random]",
    "eval.num_workers=1",
    "rollout.placement={resources: {collector: 1}}",
]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head (2 CPUs, `collector` slots, label harvest-role=head) and a second node (2 CPUs,
    `collector` slots and the `learner` resource, label harvest-role=learner)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_head(num_cpus=2, resources={"collector": 2}, labels={"harvest-role": "head"})
        second = cluster.add_node(
            num_cpus=2, resources={"collector": 2, "learner": 1}, labels={"harvest-role": "learner"}
        )
        cluster.wait_for_nodes(2)
        yield cluster, second
    finally:
        cluster.stop()


def harvest(*args: str, env: dict[str, str], timeout: float = 500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def sets(*items: str) -> list[str]:
    return sum((["--set", item] for item in items), [])


def roles(cluster: LocalCluster) -> dict[str, str]:
    return {node["node_id"]: node["labels"]["harvest-role"] for node in cluster.alive_nodes()}


def dataset_keys(run_dir: Path) -> tuple[Dataset, np.ndarray]:
    dataset = Dataset.open(run_dir / "dataset")
    table = pads.dataset(dataset.files).to_table(columns=["episode_id", "step"])
    return dataset, np.stack([table["episode_id"].to_numpy(), table["step"].to_numpy()], axis=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_submitted_job_spreads_collectors_and_trains_where_the_learner_resource_is(two_nodes, tmp_path):
    cluster, _ = two_nodes
    out, gate = tmp_path / "artifacts", tmp_path / "gate"
    # SPREAD is Ray's best effort (a node slow to report gets nothing on a busy machine): 1.5 of
    # each node's 2 collector slots place one collector per node. Each env copy waits at its 50th
    # step until both collectors are there: one that starts late still collects its share.
    submitted = harvest(
        "submit",
        "--address",
        cluster.dashboard_url,
        "--run-id",
        "placed",
        "--output-dir",
        str(out),
        "--project",
        ".",  # the test envs (tests.toy_envs) import from the repo
        *sets(
            *SMALL,
            "rollout.steps=3000",
            "env.id=tests.toy_envs:GatedEnv",
            f"env.kwargs={{gate_dir: '{gate}', gate_at_step: 50}}",
            "rollout.policy.kind=random",
            "rollout.placement={resources: {collector: 1.5}}",
            "learner.placement={label_selector: {harvest-role: learner}}",
        ),
        env=cluster.env,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "submitted job harvest-placed" in submitted.stderr
    try:
        wait_for(lambda: len(waiting_pids(gate)) >= 2, 300, "both collectors to reach the gate")
    finally:
        open_gate(gate)
    followed = harvest(
        "jobs", "logs", "harvest-placed", "--follow", "--address", cluster.dashboard_url, env=cluster.env, timeout=500
    )
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    run_dir = out / "placed"  # where the README says: <output-dir>/<run id>/ on the head node
    summary = json.loads((run_dir / "summary.json").read_text())
    role = roles(cluster)
    assert sorted(role[node] for node in summary["collect"]["nodes"]) == ["head", "learner"], "collectors spread"
    assert role[summary["train"]["node"]] == "learner", "the learner runs where the learner label is"
    dataset, keys = dataset_keys(run_dir)
    assert dataset.manifest.rows == summary["collect"]["rows"] == keys.shape[0] >= 3000
    for name in ("learner/best.safetensors", "learner/final.safetensors", "eval.json", "harvest.log"):
        assert (run_dir / name).is_file(), name
    status = harvest("jobs", "status", "harvest-placed", "--address", cluster.dashboard_url, env=cluster.env)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and str(run_dir) in status.stdout


@pytest.mark.timeout(120)
def test_a_client_without_the_clusters_token_is_refused(two_nodes, tmp_path):
    cluster, _ = two_nodes
    bare = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    bare["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    for env in (bare, {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}):
        refused = harvest("jobs", "list", "--address", cluster.dashboard_url, env=env, timeout=120)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "token" in refused.stderr.lower() or "unauthenticated" in refused.stderr.lower(), refused.stderr[-2000:]
    allowed = harvest("jobs", "list", "--address", cluster.dashboard_url, env=cluster.env, timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killing_the_second_node_mid_run_loses_no_acknowledged_row(two_nodes, tmp_path):
    cluster, second = two_nodes
    out, wal, gate = tmp_path / "artifacts", tmp_path / "wal", tmp_path / "gate"
    # every env copy waits at its 200th step (rows stored before it) until the second node is gone
    gated = f"env.kwargs={{step_s: 0.002, gate_dir: '{gate}', gate_at_step: 200}}"
    submitted = harvest(
        "submit",
        "--address",
        cluster.dashboard_url,
        "--run-id",
        "nodeloss",
        "--output-dir",
        str(out),
        "--project",
        ".",
        *sets(
            *SMALL,
            "env.id=tests.toy_envs:GatedEnv",
            gated,
            "env.num_envs=2",
            "rollout.policy.kind=random",
            "rollout.steps=16000",
            "rollout.batch_rows=200",
            f"replay.wal_dir={wal}",
            "replay.max_restarts=3",
            "replay.checkpoint_every_rows=3000",
            "learner.bc.epochs=1",
            "eval.episodes=1",
        ),
        env=cluster.env,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]

    def collectors_on(node) -> list[int]:
        try:
            children = psutil.Process(node.raylet_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p.pid for p in children if (p.cmdline() or [""])[0].startswith("ray::RolloutWorker")]

    try:
        wait_for(
            lambda: set(collectors_on(second)) & waiting_pids(gate),
            300,
            "a collector on the second node to reach the gate",
        )
        assert cluster.kill_node(second) > 0
    finally:
        open_gate(gate)
    followed = harvest(
        "jobs", "logs", "harvest-nodeloss", "--follow", "--address", cluster.dashboard_url, env=cluster.env, timeout=500
    )
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    run_dir = out / "nodeloss"
    collect = json.loads((run_dir / "summary.json").read_text())["collect"]
    assert sum(collect["restarts"]) >= 1, collect["restarts"]
    assert set(roles(cluster)[node] for node in collect["nodes"]) == {"head"}, "the run finished on the head"
    dataset, keys = dataset_keys(run_dir)
    assert collect["rows"] >= 16000
    assert dataset.manifest.rows == collect["rows"] == keys.shape[0], "every acknowledged row is in the dataset"
    assert np.unique(keys, axis=0).shape[0] == keys.shape[0], "no row stored twice"


def test_submit_sends_harvest_as_a_package_the_project_when_named_and_with_pip_its_requirements(tmp_path):
    from harvest.cluster.jobs import EXCLUDES, harvest_package, runtime_env

    env = runtime_env(tmp_path, pip=True)
    assert env["working_dir"] == str(tmp_path) and ".venv" in env["excludes"] and "artifacts" in EXCLUDES
    assert env["py_modules"] == [str(harvest_package())] and (harvest_package() / "__init__.py").is_file()
    assert harvest_package().name == "harvest" and (harvest_package() / "cluster" / "jobs.py").is_file()
    assert any(item.startswith("torch") for item in env["pip"]) and any(item.startswith("ray[") for item in env["pip"])
    assert not any("pygame" in item or "minari" in item for item in env["pip"]), "the core's, not the extras'"
    assert "pip" not in runtime_env(tmp_path, pip=False)
