"""Shared fixtures: one local Ray cluster for the whole session, shut down at the end."""

from __future__ import annotations

import logging
import os

import pytest
import ray

from cluster.local import start_local_ray, worker_runtime_env


@pytest.fixture(scope="session")
def ray_cluster():
    # Loopback only, as `harvest run`'s own local Ray (tests/test_loopback.py).
    context = start_local_ray(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                              namespace="harvest-tests", logging_level=logging.WARNING,
                              runtime_env=worker_runtime_env(os.environ.get("PYTHONPATH")))
    yield context
    ray.shutdown()
