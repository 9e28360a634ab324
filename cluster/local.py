"""Connect to Ray: a local cluster for laptops, or an existing one by address."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from loguru import logger

from cluster.config import RaySection

REPO_ROOT = Path(__file__).resolve().parents[1]


def worker_runtime_env(extra_pythonpath: str | None = None) -> dict:
    """The runtime_env Harvest's local Ray gives every worker: imports and logging."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), extra_pythonpath]))
    return {"env_vars": {"PYTHONPATH": pythonpath},
            "worker_process_setup_hook": "cluster.logging.setup_worker_logging"}


def init_ray(cfg: RaySection) -> str | None:
    """Start or join Ray; returns the dashboard URL (None without a dashboard)."""
    if ray.is_initialized():
        return None
    if cfg.address is None:
        context = ray.init(
            num_cpus=cfg.num_cpus, include_dashboard=cfg.include_dashboard, dashboard_host="127.0.0.1",
            dashboard_port=cfg.dashboard_port, object_store_memory=cfg.object_store_memory_bytes,
            namespace="harvest", logging_level=logging.WARNING, _metrics_export_port=cfg.metrics_export_port,
            # Workers import Harvest's packages from the repo whether or not it is pip-installed,
            # and a user's own env modules from the current folder.
            runtime_env=worker_runtime_env(os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))))
    else:
        context = ray.init(address=cfg.address, namespace="harvest", logging_level=logging.WARNING)
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
