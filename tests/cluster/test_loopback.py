"""A local run is reachable from this machine only, and the current folder shadows nothing of Harvest's.

The socket test starts a local Ray the way `harvest run` does (`cluster.local.init_ray`, dashboard on)
in a process of its own, so that the session cluster of `tests/conftest.py` is left alone, and lists
every listening socket of that process and its descendants (GCS, raylet, dashboard, agents, workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harvest.cluster.local_nodes import free_port
from harvest.rollout.net import is_loopback

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "env.num_envs=2",
    "rollout.steps=600",
    "rollout.batch_rows=256",
    "rollout.num_cpus=0.25",
    "rollout.policy.kind=random",
    "replay.num_cpus=0.1",
    "aggregation.num_cpus=0.1",
    "learner.bc.epochs=1",
    "learner.hidden_sizes=[16]",
    "learner.num_cpus=0.25",
    "eval.episodes=2",
    "eval.baselines=[random]",
]


def listeners_of(root: psutil.Process) -> list[dict]:
    """Every listening TCP socket of `root` and its descendants: pid, process name, address, port."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a worker that ended between listing and asking
        found += [
            {"pid": process.pid, "name": name, "ip": c.laddr.ip, "port": c.laddr.port}
            for c in connections
            if c.status == psutil.CONN_LISTEN
        ]
    return found


def report_listeners(timeout_s: float = 180.0) -> None:
    """Child process: start Harvest's local Ray, run tasks and an actor, print its listeners as JSON.

    It waits (up to `timeout_s`) until every port Ray reports for this node, the dashboard's, both
    metrics servers' (ports from the environment) and the workers' listen, so nothing that starts late
    is missed; the ports still missing then are printed too.
    """
    import ray

    from harvest.cluster.config import RayConfig
    from harvest.cluster.local import init_ray

    dashboard_url = init_ray(RayConfig(num_cpus=2, dashboard_port=0))

    @ray.remote(num_cpus=0.1)
    def worker_pid() -> int:
        return os.getpid()

    @ray.remote(num_cpus=0.1)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    probe = Probe.remote()
    worker_pids = set(ray.get([worker_pid.remote() for _ in range(2)] + [probe.pid.remote()], timeout=120))
    node_id = ray.get_runtime_context().get_node_id()
    (node,) = [node for node in ray.nodes() if node["NodeID"] == node_id]
    expected = {
        node[key]
        for key in (
            "NodeManagerPort",
            "ObjectManagerPort",
            "MetricsExportPort",
            "MetricsAgentPort",
            "DashboardAgentListenPort",
            "RuntimeEnvAgentPort",
        )
    }
    expected |= {
        int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]),
        int(dashboard_url.rsplit(":", 1)[1]),
        int(os.environ["AUTOSCALER_METRIC_PORT"]),
        int(os.environ["DASHBOARD_METRIC_PORT"]),
    }
    expected = {port for port in expected if port and port > 0}
    deadline = time.monotonic() + timeout_s
    while True:
        listeners = listeners_of(psutil.Process())
        missing_ports = expected - {item["port"] for item in listeners}
        silent_workers = worker_pids - {item["pid"] for item in listeners}
        if not (missing_ports or silent_workers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(
        json.dumps(
            {
                "listeners": listeners,
                "missing_ports": sorted(missing_ports),
                "silent_workers": sorted(silent_workers),
                "node_ip": node["NodeManagerAddress"],
            }
        )
    )
    ray.kill(probe)
    ray.shutdown()


@pytest.mark.timeout(400)
def test_a_local_run_listens_on_loopback_only():
    env = dict(
        os.environ,
        AUTOSCALER_METRIC_PORT=str(free_port()),
        DASHBOARD_METRIC_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    report_code = "from tests.cluster.test_loopback import report_listeners; report_listeners()"
    done = subprocess.run(
        [sys.executable, "-c", report_code], cwd=REPO, env=env, capture_output=True, text=True, timeout=360
    )
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["missing_ports"] and not report["silent_workers"], f"never listened: {report}"
    exposed = [
        f"{item['name']} (pid {item['pid']}) on {item['ip']}:{item['port']}"
        for item in report["listeners"]
        if not is_loopback(item["ip"])
    ]
    assert not exposed, (
        f"{len(exposed)} of {len(report['listeners'])} listeners are reachable from other machines "
        f"(node address {report['node_ip']}): {exposed}"
    )
    assert report["node_ip"] == "127.0.0.1"


@pytest.mark.timeout(300)
def test_another_process_joins_the_loopback_cluster_by_its_address(ray_cluster):
    # `harvest run --set ray.address=127.0.0.1:PORT` (and `harvest status`): Ray would rewrite the
    # loopback address to the machine's own, where the cluster does not listen, and retry forever.
    address = ray_cluster.address_info["gcs_address"]
    assert address.startswith("127.0.0.1:"), "the session cluster of tests/conftest.py is loopback-bound too"
    joiner = f"""
import os, ray
from harvest.cluster.config import RayConfig
from harvest.cluster.local import init_ray
init_ray(RayConfig(address={address!r}))


@ray.remote(num_cpus=0.1)
def worker_pid():
    return os.getpid()


print(ray.util.get_node_ip_address(), ray.get(worker_pid.remote(), timeout=120))
"""
    done = subprocess.run([sys.executable, "-c", joiner], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),  # how an IPv6 socket bound to 127.0.0.1 reports its address
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
        ("no.such.host.invalid", False),
    ],
)
def test_is_loopback_knows_every_spelling_of_this_machine(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_code_in_the_current_folder_runs_in_no_worker_ahead_of_harvest(tmp_path):
    # A user's folder with packages named like Harvest's: importing them anywhere leaves a marker.
    # Their own env module beside them must still load in the collectors, after Harvest's packages.
    for package in ("rollout", "envs", "cluster", "learners", "aggregation"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(
            f"import os, pathlib\n"
            f"with open(pathlib.Path(__file__).parents[1] / 'shadowed.txt', 'a') as marker:\n"
            f"    marker.write(f'{package} imported by pid {{os.getpid()}}\\n')\n"
        )
    (tmp_path / "my_cartpole.py").write_text(
        "import os, pathlib\nimport gymnasium\n\n\n"
        "def make(**kwargs):\n"
        "    pathlib.Path(__file__).with_name(f'env-{os.getpid()}.txt').write_text(os.getcwd())\n"
        "    return gymnasium.make('CartPole-v1', **kwargs)\n"
    )
    harvest = Path(sys.executable).with_name("harvest")
    overrides = [*TINY, "env.id=my_cartpole:make", f"run.output_dir={tmp_path / 'runs'}"]
    argv = [str(harvest), "run", "--run-id", "shadow", *sum((["--set", item] for item in overrides), [])]
    done = subprocess.run(
        argv, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert not (tmp_path / "shadowed.txt").exists(), (tmp_path / "shadowed.txt").read_text()
    env_pids = {path.stem.split("-")[1]: path.read_text() for path in tmp_path.glob("env-*.txt")}
    assert len(env_pids) >= 2, "the user's env module loads in Ray's workers (collectors, evaluation)"
    assert set(env_pids.values()) == {str(tmp_path)}, "workers run in the folder harvest was started in"
    assert (tmp_path / "runs" / "shadow" / "eval.json").is_file()


@pytest.mark.timeout(300)
def test_a_taken_dashboard_port_gives_the_run_a_free_one_and_says_so():
    """Two runs on one machine (or another Ray's dashboard on 8265): the second still starts."""
    code = (
        "import socket\nfrom harvest.cluster.config import RayConfig\nfrom harvest.cluster.local import init_ray\n"
        "import ray\nholder = socket.socket()\nholder.bind(('127.0.0.1', 0))\nholder.listen()\n"
        "taken = holder.getsockname()[1]\n"
        "url = init_ray(RayConfig(num_cpus=1, dashboard_port=taken))\n"
        "print(taken, url)\nray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    taken, url = done.stdout.split()[-2:]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{taken}")
    assert f"port {taken} is taken (another Ray's dashboard?)" in done.stderr
