"""Harvest's metrics on Ray's Prometheus endpoint: scraped the way Prometheus does, after a
real collection into durable shards, a sample and a stream consumer."""

import time
import urllib.request

import numpy as np
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from harvest.cluster.cli import main
from harvest.cluster.local import metrics_port
from harvest.cluster.status import by, read
from harvest.rollout.config import ReplayConfig
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.replay.stream import stream_experiences
from harvest.rollout.worker import RolloutWorker, schema_for
from tests.rollout.test_worker import COUNTING, ROLLOUT

pytestmark = pytest.mark.timeout(240)


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """Harvest's samples by name without the `ray_harvest_` prefix: [(labels, value)]."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_harvest_"):
                samples.setdefault(sample.name[len("ray_harvest_") :], []).append((sample.labels, sample.value))
    return samples


def total(samples, name: str, workers: set[str] | None = None, **labels: str) -> float:
    """Sum of a metric's samples with these labels, from these Ray workers only (the session's
    cluster also carries other tests' metrics)."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items()) and (workers is None or found["WorkerId"] in workers)
    )


def worker_id(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_worker_id()), timeout=30)


def test_replay_and_collector_metrics_reach_the_prometheus_endpoint(ray_cluster, tmp_path):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, COUNTING.id, seed=0)
    replay = start_replay(
        ReplayConfig(num_shards=2, capacity_rows=10_000, num_cpus=0.1, wal_dir=str(tmp_path)),
        schema_for(COUNTING, factory),
    )
    worker = (
        ray.remote(RolloutWorker).options(num_cpus=0.25).remote(COUNTING, ROLLOUT, factory, replay, 5, "metrics", 5)
    )
    try:
        result = ray.get(worker.collect.remote(300), timeout=120)
        sampled = replay.sample(64, np.random.default_rng(0)).num_rows
        stream = stream_experiences(replay, batch_size=50, max_buffered=1, name="metrics-test")
        consumed = sum(item.num_rows for item in stream.take(120))
        stats = replay.stats()
        shards = {worker_id(shard) for shard in replay.shards}
        collector = {worker_id(worker)}
        port = metrics_port()
        wanted = {
            "replay_inserted_rows_total",
            "replay_sampled_rows_total",
            "replay_size_rows",
            "replay_utilization",
            "replay_memory_bytes",
            "replay_insert_seconds_count",
            "replay_wal_write_seconds_count",
            "replay_consumer_lag_rows",
            "rollout_episode_return_count",
            "rollout_env_steps_total",
        }
        deadline = time.monotonic() + 90  # the metrics agent exports every ~10 s
        while True:
            samples = scrape(port)
            if (
                wanted <= set(samples)
                and total(samples, "replay_inserted_rows_total", shards) >= result.rows
                and total(samples, "replay_sampled_rows_total", shards) >= 64
                and total(samples, "rollout_episode_return_count", collector) >= len(result.episodes)
            ) or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        ray.kill(worker, no_restart=True)
        replay.kill()
    assert wanted <= set(samples), f"missing: {wanted - set(samples)}"
    assert (
        total(samples, "replay_inserted_rows_total", shards, source="collector 5") == result.rows == stats.inserted_rows
    )
    assert total(samples, "replay_sampled_rows_total", shards) == sampled == 64
    assert total(samples, "replay_size_rows", shards) == stats.size_rows
    assert total(samples, "replay_utilization", shards) == pytest.approx(stats.size_rows / 10_000)
    assert (
        total(samples, "replay_wal_write_seconds_count", shards)
        == total(samples, "replay_insert_seconds_count", shards)
        == sum(s.inserted_batches for s in stats.shards)
    )
    # The lag is measured where the reader cuts batches: at most its buffer (1 batch, + 1 in hand) ahead.
    lag = total(samples, "replay_consumer_lag_rows", consumer="metrics-test")
    assert stats.size_rows - consumed - 3 * 50 <= lag <= stats.size_rows - consumed
    returns = [episode.episode_return for episode in result.episodes]
    assert total(samples, "rollout_episode_return_count", collector) == len(returns) > 0
    for bound in (1, 10, 50, 100):  # cumulative bucket counts: returns (all positive here) up to each bound
        assert total(samples, "rollout_episode_return_bucket", collector, sign="positive", le=f"{bound:.1f}") == sum(
            value <= bound for value in returns
        )


def test_the_grafana_dashboard_queries_only_metrics_harvest_exports(tmp_path):
    import json
    import re

    from harvest.cluster import metrics
    from harvest.cluster.cli import main
    from harvest.cluster.dashboard import dashboard

    exported = set()
    for make in metrics.ALL_METRICS:
        source = __import__("inspect").getsource(make)
        exported.add("ray_" + re.search(r'"(harvest_[a-z_]+)"', source).group(1))
    assert main(["dashboard", "--out", str(tmp_path / "d.json")]) == 0
    board = json.loads((tmp_path / "d.json").read_text())
    assert board == json.loads(json.dumps(dashboard())) and board["uid"] == "harvest"
    used = set()
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        for target in panel["targets"]:
            names = set(re.findall(r"ray_harvest_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            used |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
    assert used <= exported, used - exported
    titles = " ".join(panel["title"] for panel in board["panels"]).lower()
    for topic in ("collection rate", "replay fill", "sample / insert", "learner throughput", "loss", "human / agent"):
        assert topic in titles


def test_harvest_status_prints_collectors_replay_and_memory_from_the_endpoint(ray_cluster, capsys):
    factory = ConfiguredPolicyFactory(ROLLOUT.policy, COUNTING.id, seed=0)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=10_000, num_cpus=0.1), schema_for(COUNTING, factory))
    worker = ray.remote(RolloutWorker).options(num_cpus=0.25).remote(COUNTING, ROLLOUT, factory, replay, 7, "status", 7)
    try:
        ray.get(worker.collect.remote(300), timeout=120)
        url = f"http://127.0.0.1:{metrics_port()}/metrics"
        deadline = time.monotonic() + 90  # the metrics agent exports every ~10 s
        while (
            "7" not in by(read([url]), "ray_harvest_rollout_env_steps_total", "collector")
            and time.monotonic() < deadline
        ):
            time.sleep(2)
        capsys.readouterr()
        assert main(["status", "--metrics", url]) == 0
    finally:
        ray.kill(worker, no_restart=True)
        replay.kill()
    out = capsys.readouterr().out
    for expected in (
        "Harvest status",
        "collector 7",
        "total rows",
        "replay shard 0",
        "replay shard 1",
        "stalls seen",
        "node memory",
    ):
        assert expected in out, (expected, out)
