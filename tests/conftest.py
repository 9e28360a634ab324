"""Shared fixtures: one local Ray cluster for the whole session, shut down at the end."""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
import ray

from harvest.cluster.local import start_local_ray, worker_runtime_env


@pytest.fixture(scope="session")
def ray_cluster():
    # Loopback only, as `harvest run`'s own local Ray (tests/cluster/test_loopback.py).
    context = start_local_ray(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        namespace="harvest-tests",
        logging_level=logging.WARNING,
        runtime_env=worker_runtime_env(os.environ.get("PYTHONPATH")),
    )
    yield context
    ray.shutdown()


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def repo_root_run(monkeypatch, request):
    """(run id, run folder) of a run made as the README makes it: from the repo root, into the
    default relative `artifacts/` (paths handed to actors and engines must be made absolute for
    this to work); the folder is removed afterwards."""
    monkeypatch.chdir(REPO_ROOT)
    run_id = f"test-{re.sub(r'[^A-Za-z0-9_-]+', '-', request.node.name)[:48]}-{uuid.uuid4().hex[:6]}"
    run_dir = REPO_ROOT / "artifacts" / run_id
    yield run_id, run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
