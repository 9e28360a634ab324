"""A Ray cluster of several nodes on this one machine, started with `ray start` as on real hosts.

For trying placement, jobs and node failures before a real cluster: each node is a real
raylet with its own resources and labels, under a temp dir of the cluster's own, on free
ports, with token authentication on. `kill_node` kills one node's processes (raylet, its
workers and agents) with SIGKILL, as a host that vanishes; `stop` ends them all. Nothing here
touches another Ray on the machine (never `ray stop`, which would end every one).

    with LocalCluster(tmp_path) as cluster:
        cluster.start_head(num_cpus=1, resources={"collector": 2}, labels={"harvest-role": "head"})
        node = cluster.add_node(num_cpus=2, resources={"learner": 1}, labels={"harvest-role": "learner"})
        # cluster.dashboard_url, cluster.env (RAY_AUTH_TOKEN ...) for clients
        cluster.kill_node(node)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from loguru import logger


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    name: str
    raylet_pid: int
    labels: dict[str, str] = field(default_factory=dict)


class LocalCluster:
    def __init__(
        self,
        root: Path,
        token: str | None = None,
        object_store_mb: int = 200,
        node_timeout_s: float = 3.0,
        python: str | Path = sys.executable,
    ) -> None:
        """`node_timeout_s`: how long a node may miss health checks before the GCS declares it dead;
        `python`: the Python (of a venv) whose `ray` starts the nodes and runs the jobs."""
        self.root = Path(root)
        self.bin_dir = Path(python).parent
        self.object_store_mb = object_store_mb
        self._health_env = {
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": str(max(1, int(node_timeout_s / 0.5))),
            "RAY_worker_niceness": "0",
        }  # as a local run's (cluster.local.start_local_ray)
        # Ray's temp dirs hold Unix sockets, whose paths may not exceed 107 bytes: a short folder
        # of its own under /tmp, removed by stop().
        self.temp_dir = Path(tempfile.mkdtemp(prefix="harvest-ray-"))
        self.token = token or secrets.token_hex(16)
        self.gcs_port = self.dashboard_port = 0
        self.nodes: list[Node] = []
        # Worker ports of its own, below Linux's ephemeral range (32768-60999), where free_port()
        # finds the components' ports: the two may never collide.
        self._worker_ports = 20000 + (os.getpid() % 20) * 600

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for `ray` commands and clients of this cluster (its token)."""
        # This Python's bin folder first, as after activating its venv: a job's entrypoint
        # (`python -m harvest ...`) runs the Python the nodes run.
        path = os.pathsep.join([str(self.bin_dir), os.environ.get("PATH", "")])
        return {
            **os.environ,
            "PATH": path,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def client_env(self) -> dict[str, str]:
        """What a client of this cluster needs in its environment (the token)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start_head(
        self, num_cpus: int, resources: dict[str, float] | None = None, labels: dict[str, str] | None = None
    ) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        return self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={self.temp_dir / 'head'}",
                f"--ray-client-server-port={free_port()}",
            ],
            num_cpus,
            resources,
            labels,
        )

    def add_node(
        self, num_cpus: int, resources: dict[str, float] | None = None, labels: dict[str, str] | None = None
    ) -> Node:
        # A temp dir of its own: nodes on one machine sharing one would unpack a job's working_dir
        # into the same folder, each under the other's feet.
        name = f"node-{len(self.nodes)}"
        temp_dir = self.temp_dir / name
        temp_dir.mkdir()
        return self._start(name, [f"--address={self.address}", f"--temp-dir={temp_dir}"], num_cpus, resources, labels)

    def _start(
        self,
        name: str,
        args: list[str],
        num_cpus: int,
        resources: dict[str, float] | None,
        labels: dict[str, str] | None,
    ) -> Node:
        before = set(self._raylets())
        low = self._worker_ports + 100 * len(self.nodes)
        command = [
            str(self.bin_dir / "ray"),
            "start",
            *args,
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources or {})}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 99}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
            "--disable-usage-stats",
        ]
        if labels:
            command.append("--labels=" + ",".join(f"{key}={value}" for key, value in labels.items()))
        result = subprocess.run(
            command, env={**self.env, **self._health_env}, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed with {result.returncode}:\n{result.stderr[-4000:]}")
        (raylet,) = set(self._raylets()) - before
        node = Node(name, raylet, dict(labels or {}))
        self.nodes.append(node)
        logger.info(
            "local cluster: {} up (raylet pid {}, {} CPUs, resources {}, labels {})",
            name,
            raylet,
            num_cpus,
            resources or {},
            labels or {},
        )
        return node

    def _raylets(self) -> list[int]:
        return [process.pid for process in self._processes() if "raylet" in Path(process.info["cmdline"][0]).name]

    def _processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: their command lines name its nodes' temp dirs."""
        marker, me = str(self.temp_dir), os.getpid()
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            cmdline = process.info["cmdline"] or []
            if (
                process.pid != me
                and process.info["status"] != psutil.STATUS_ZOMBIE
                and any(marker in part for part in cmdline)
            ):
                found.append(process)
        return found

    def kill_node(self, node: Node) -> int:
        """SIGKILL the node's raylet and everything it started (workers, agents); how many processes."""
        try:
            raylet = psutil.Process(node.raylet_pid)
            victims = [raylet, *raylet.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for process in victims:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        logger.warning("local cluster: killed {} ({} processes)", node.name, len(victims))
        return len(victims)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End every process of this cluster (SIGTERM, then SIGKILL what is left)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            processes = self._processes()
            for process in processes:
                try:
                    process.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(processes, timeout=timeout_s if sig == signal.SIGTERM else 5)
        left = self._processes()
        if left:
            raise RuntimeError(f"local cluster: {len(left)} processes outlived SIGKILL: {[p.pid for p in left]}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for_nodes(self, count: int, timeout_s: float = 60.0) -> None:
        """Until `count` nodes are alive in the cluster's view (`ray list nodes` via the state API)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = self.alive_nodes()
            if len(alive) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"local cluster: {count} nodes not alive within {timeout_s:.0f}s")

    def alive_nodes(self) -> list[dict]:
        result = subprocess.run(
            [
                str(self.bin_dir / "ray"),
                "list",
                "nodes",
                "--format=json",
                f"--address={self.dashboard_url}",
                "--filter",
                "state=ALIVE",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            return []
        return json.loads(result.stdout)
