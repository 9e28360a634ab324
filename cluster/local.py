"""Connect to Ray: a local cluster for laptops, or an existing one by address."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import ray
from loguru import logger
from ray._private import ray_constants

import harvest
from harvest.rollout.net import port_taken

if TYPE_CHECKING:
    from ray.client_builder import BaseContext

    from harvest.cluster.config import RayConfig

PACKAGE_ROOT = Path(harvest.__file__).resolve().parents[1]
"""The folder that holds the `harvest` package (the checkout, or site-packages for an install):
what workers need on their path to import Harvest, and nothing else of the user's."""
LOOPBACK = "127.0.0.1"
WORKER_CWD_ENV = "HARVEST_WORKER_CWD"
"""Environment variable naming the folder `setup_worker` makes a worker's current directory."""


def worker_runtime_env(extra_pythonpath: str | None = None, working_dir: str | None = None) -> dict:
    """The runtime_env Harvest's local Ray gives every worker: imports, logging and (given) the current folder."""
    pythonpath = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), extra_pythonpath]))
    env_vars = {"PYTHONPATH": pythonpath, **({WORKER_CWD_ENV: working_dir} if working_dir else {})}
    return {"env_vars": env_vars, "worker_process_setup_hook": "harvest.cluster.local.setup_worker"}


def setup_worker() -> None:
    """Ray `worker_process_setup_hook`: the folder `harvest` was started in as current directory, loguru lines."""
    from harvest.cluster.logging import setup_worker_logging

    if os.environ.get(WORKER_CWD_ENV):
        os.chdir(os.environ[WORKER_CWD_ENV])
    setup_worker_logging()


@contextmanager
def _loopback_stays_loopback() -> Iterator[None]:
    # Ray binds its gRPC servers (GCS, raylet, every worker), the dashboard agent, the metrics export
    # and the runtime-env agent to the node's IP address, or to 127.0.0.1 when that address is
    # loopback. But ray.init turns a loopback `_node_ip_address` or GCS address into the machine's
    # address (ray/_private/services.py: resolve_ip_for_localhost -> get_node_ip_address) unless
    # ray_constants.ENABLE_RAY_CLUSTER is off - how Ray keeps macOS and Windows nodes on loopback. It is
    # read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, on import, hence the constant itself, and only
    # while ray.init runs: Ray's processes get the address on their command lines, and the variable
    # would stop `ray start --address` (a worker node) in any process started from here.
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


@contextmanager
def _current_directory(folder: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def start_local_ray(**init_args: Any) -> BaseContext:
    """`ray.init` of a Ray for this machine alone; returns its context.

    Every listener of the new cluster binds 127.0.0.1 (GCS, raylet, workers, agents, metrics, the
    dashboard unless `dashboard_host` says otherwise). Ray puts the driver's current directory at the
    front of every worker's `sys.path` (`JobConfig._py_driver_sys_path`, ray/_private/worker.py
    `connect`), where a `rollout/` or `envs/` folder there would shadow Harvest's: Ray starts from
    Harvest's root instead, so workers find Harvest first and the user's folder through PYTHONPATH,
    after it (see `init_ray`). Ray's processes are started there too; `setup_worker` moves workers to
    `HARVEST_WORKER_CWD`. The current directory changes while Ray starts: call this before other threads
    resolve relative paths.

    Workers run at the driver's priority (`RAY_worker_niceness=0`, unless set): Ray's default of
    nice 15 lets any other busy process on the machine starve the collectors and learners that do
    the run's work, while the driver waits for them.
    """
    os.environ.setdefault("RAY_worker_niceness", "0")
    with _loopback_stays_loopback(), _current_directory(PACKAGE_ROOT):
        return ray.init(_node_ip_address=LOOPBACK, **init_args)


def connect_ray(address: str, **init_args: Any) -> BaseContext:
    """`ray.init(address=...)` that also reaches a cluster listening on loopback only (`start_local_ray`).

    Ray would rewrite `127.0.0.1:PORT` (and what `auto` finds) to the machine's own address, where such
    a cluster does not listen; the driver takes its node's address from the GCS either way.
    """
    with _loopback_stays_loopback():
        return ray.init(address=address, **init_args)


def init_ray(cfg: RayConfig) -> str | None:
    """Start or join Ray; returns the dashboard URL (None without a dashboard)."""
    if ray.is_initialized():
        return None
    if cfg.address is None:
        cwd = os.getcwd()
        # Workers import Harvest's packages from the repo whether or not it is pip-installed, and
        # then a user's own env modules from the current folder.
        pythonpath = [
            cwd,
            *(os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry),
        ]
        dashboard_port = cfg.dashboard_port
        if cfg.include_dashboard and dashboard_port and port_taken(LOOPBACK, dashboard_port):
            logger.warning(
                "port {} is taken (another Ray's dashboard?): this run's dashboard gets a free port "
                "(ray.dashboard_port chooses one)",
                dashboard_port,
            )
            dashboard_port = 0
        context = start_local_ray(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
            object_store_memory=cfg.object_store_memory_bytes,
            namespace="harvest",
            logging_level=logging.WARNING,
            _metrics_export_port=cfg.metrics_export_port,
            runtime_env=worker_runtime_env(os.pathsep.join(pythonpath), working_dir=cwd),
        )
    else:
        context = connect_ray(cfg.address, namespace="harvest", logging_level=logging.WARNING)
    port = metrics_port()
    if port:
        logger.info("Prometheus metrics (harvest_*): http://127.0.0.1:{}/metrics", port)
    url = context.dashboard_url
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        logger.info("Ray dashboard: {}", url)
    return url or None


def metrics_port() -> int | None:
    """The Prometheus port of this node's Ray metrics agent (every node has one)."""
    node_id = ray.get_runtime_context().get_node_id()
    return next((node.get("MetricsExportPort") for node in ray.nodes() if node["NodeID"] == node_id), None)


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
