"""`harvest status`: what running Harvest runs are doing, in the terminal, from the dashboard's metrics.

    harvest status [--address auto] [--metrics URL ...] [--watch SECONDS]

It reads the Prometheus endpoint of every node of the Ray cluster (the same `ray_harvest_*`
metrics the Grafana dashboard shows, plus Ray's own object-store and node-memory gauges) and
prints one table: collectors (rate, memory held), replay shards (rows, fill, memory), the
sample/insert ratio, learners (throughput, loss), stalls the watchdog sees now, restarts, and
object-store and node memory. With `--watch` it redraws every N seconds, rates taken between
two reads; once, rates are not known yet and counters are shown as totals. Counters are summed
over every process that reported them (a restarted collector's incarnations included).
"""

from __future__ import annotations

import argparse
import logging
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

Samples = dict[str, list[tuple[dict[str, str], float]]]
RAY_GAUGES = ("ray_object_store_memory", "ray_node_mem_used", "ray_node_mem_total")


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="live state of running runs (collectors, replay, learners, stalls, memory)")
    p.add_argument(
        "--address",
        default="auto",
        help="the Ray cluster whose nodes' metrics to read (default: the one running on this machine)",
    )
    p.add_argument(
        "--metrics",
        action="append",
        default=[],
        help="a Prometheus endpoint to read instead (http://HOST:PORT/metrics; repeatable)",
    )
    p.add_argument("--watch", type=float, help="redraw every this many seconds until Ctrl-C")


def endpoints(address: str) -> list[str]:
    """The metrics endpoints of the cluster's live nodes (asks Ray once, then disconnects)."""
    import ray

    from harvest.cluster.local import connect_ray

    connect_ray(address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        return [
            f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in ray.nodes()
            if node["Alive"] and node.get("MetricsExportPort")
        ]
    finally:
        ray.shutdown()


def read(urls: list[str]) -> Samples:
    """Harvest's samples (and Ray's memory gauges) from every endpoint, by metric name."""
    samples: Samples = defaultdict(list)
    for url in urls:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_harvest_") or sample.name in RAY_GAUGES:
                    samples[sample.name].append((sample.labels, sample.value))
    return samples


def by(samples: Samples, name: str, tag: str) -> dict[str, float]:
    """A metric summed per value of one tag (over processes and nodes)."""
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        totals[labels.get(tag, "")] += value
    return dict(totals)


def total(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def status_table(now: Samples, before: Samples | None, seconds: float) -> Table:
    """The table of one read (`before`: the previous read, `seconds` before, for rates)."""

    def rate(name: str, tag: str) -> dict[str, str]:
        current = by(now, name, tag)
        if before is None or seconds <= 0:
            return {key: f"{value:,.0f} total" for key, value in current.items()}
        previous = by(before, name, tag)
        return {key: f"{(value - previous.get(key, 0.0)) / seconds:,.0f}/s" for key, value in current.items()}

    table = Table(title="Harvest status", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    wanted = total(now, "ray_harvest_collectors")
    if "ray_harvest_collectors" in now:
        table.add_row("collectors wanted", f"{wanted:.0f}")
    held = by(now, "ray_harvest_rollout_local_bytes", "collector")
    for collector, rows in sorted(
        rate("ray_harvest_rollout_env_steps_total", "collector").items(), key=lambda item: int(item[0] or 0)
    ):
        table.add_row(f"collector {collector}", f"{rows} rows, {held.get(collector, 0) / 2**20:.1f} MB held")
    sizes = by(now, "ray_harvest_replay_size_rows", "shard")
    fill = by(now, "ray_harvest_replay_utilization", "shard")
    memory = by(now, "ray_harvest_replay_memory_bytes", "shard")
    for shard in sorted(sizes, key=lambda key: int(key or 0)):
        table.add_row(
            f"replay shard {shard}",
            f"{sizes[shard]:,.0f} rows, {fill.get(shard, 0):.0%} full, {memory.get(shard, 0) / 2**20:.1f} MB",
        )
    inserted, sampled = (
        total(now, "ray_harvest_replay_inserted_rows_total"),
        total(now, "ray_harvest_replay_sampled_rows_total"),
    )
    if inserted:
        table.add_row("sample / insert", f"{sampled / inserted:.2f} ({sampled:,.0f} sampled, {inserted:,.0f} inserted)")
    losses = by(now, "ray_harvest_learner_loss", "learner")
    for learner, samples in rate("ray_harvest_learner_samples_total", "learner").items():
        table.add_row(f"learner {learner}", f"{samples} samples, loss {losses.get(learner, float('nan')):.4f}")
    stalled = [(labels, value) for labels, value in now.get("ray_harvest_stalled", []) if value > 0]
    for labels, _ in stalled:
        table.add_row("[red]stalled", f"{labels.get('component')} waiting for {labels.get('waiting_for')}")
    table.add_row("stalls seen", f"{total(now, 'ray_harvest_stalls_total'):.0f} ({len(stalled)} now)")
    table.add_row(
        "restarts",
        ", ".join(
            f"{component} {count:.0f}"
            for component, count in by(now, "ray_harvest_actor_restarts_total", "component").items()
        )
        or "none",
    )
    store = total(now, "ray_object_store_memory")
    if store:
        table.add_row("object store", f"{store / 2**20:,.0f} MB in use (all nodes)")
    used, node_total = total(now, "ray_node_mem_used"), total(now, "ray_node_mem_total")
    if node_total:
        table.add_row("node memory", f"{used / 2**30:.1f} of {node_total / 2**30:.1f} GiB ({used / node_total:.0%})")
    return table


def status(args: argparse.Namespace) -> int:
    console = Console()
    urls = args.metrics or endpoints(args.address)
    if not urls:
        console.print("no metrics endpoints found (is a Ray cluster running? pass --metrics URL)")
        return 1
    before, then = None, time.monotonic()
    now = read(urls)
    if not any(name.startswith("ray_harvest_") for name in now):
        console.print(f"no Harvest metrics at {', '.join(urls)} yet (they appear ~10 s after a run starts)")
    if not args.watch:
        console.print(status_table(now, None, 0.0))
        return 0
    with Live(status_table(now, None, 0.0), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(args.watch)
                before, now, seconds = now, read(urls), time.monotonic() - then
                then = time.monotonic()
                live.update(status_table(now, before, seconds))
        except KeyboardInterrupt:
            return 0
