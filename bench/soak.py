"""Soak: a long collection with actors killed on a schedule; every acknowledged row must be in the dataset.

    python bench/soak.py [--minutes 30] [--kill-every-s 30] [--collectors 3] [--out bench/soak]

Runs Harvest's own collection (`harvest run`'s collect and compact, rotating the dataset
every 10 s) on a local Ray: CartPole with the expert, durable replay shards, collectors and
shards restartable. Every `--kill-every-s` a random collector or shard process gets SIGKILL.
The collection is sized to last about `--minutes` (from a kill-free calibration run, which is
also the reference rate). At the end it prints rows acknowledged beside rows in the dataset
(they must be equal), kills, restarts, stalls, the rates with and without kills, and writes
the memory of each kind of process over time as `<out>/soak-memory.png`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.cluster import (
    pipeline,  # noqa: E402
    run_folder,  # noqa: E402
)
from harvest.cluster.config import parse_config  # noqa: E402
from harvest.cluster.local import start_local_ray, worker_runtime_env  # noqa: E402
from harvest.cluster.logging import setup_logging  # noqa: E402

KINDS = ("RolloutWorker", "ReplayShard", "ShardRotator")


def soak_config(root: Path, collectors: int, steps: int, watchdog_s: float) -> dict:
    return {
        "run": {"output_dir": str(root / "artifacts")},
        "env": {"id": "CartPole-v1", "num_envs": 8},
        "rollout": {
            "num_collectors": collectors,
            "steps": steps,
            "batch_rows": 2000,
            "num_cpus": 0.25,
            "max_restarts": 1000,
        },
        # rows only wait in the ring until the next rotation writes them (every 10 s)
        "replay": {
            "num_shards": 2,
            "capacity_rows": min(steps, 2_000_000),
            "num_cpus": 0.1,
            "wal_dir": str(root / "wal"),
            "checkpoint_every_rows": 1_000_000,
            "max_restarts": -1,
        },
        "aggregation": {"rotate_every_s": 10, "num_cpus": 0.1, "formats": ["parquet"]},
        "watchdog": {"stall_after_s": watchdog_s, "check_every_s": 5},
    }


def processes_by_kind() -> dict[str, list[psutil.Process]]:
    """Ray names an actor's process `ray::<Class>...`."""
    found: dict[str, list[psutil.Process]] = {kind: [] for kind in KINDS}
    for process in psutil.process_iter(["cmdline"]):
        title = (process.info["cmdline"] or [""])[0]
        for kind in KINDS:
            if title.startswith(f"ray::{kind}"):
                found[kind].append(process)
    return found


class Killer(threading.Thread):
    """SIGKILLs a random collector or shard every `every_s` seconds until stopped."""

    def __init__(self, every_s: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.every_s, self.rng, self.stop = every_s, random.Random(seed), threading.Event()
        self.kills: list[tuple[float, str, int]] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(self.every_s):
            kind = self.rng.choice(["RolloutWorker", "ReplayShard"])
            victims = processes_by_kind()[kind]
            if victims:
                victim = self.rng.choice(victims)
                try:
                    victim.send_signal(signal.SIGKILL)
                    self.kills.append((time.monotonic() - started, kind, victim.pid))
                except psutil.NoSuchProcess:
                    pass


class MemorySampler(threading.Thread):
    """RSS of each kind of actor process (and the driver) every `every_s` seconds."""

    def __init__(self, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.stop = every_s, threading.Event()
        self.samples: list[dict[str, float]] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(self.every_s):
            sample = {"t": time.monotonic() - started, "driver": psutil.Process().memory_info().rss}
            for kind, processes in processes_by_kind().items():
                total = 0
                for process in processes:
                    try:
                        total += process.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                sample[kind] = total
            self.samples.append(sample)


def plot_memory(samples: list[dict[str, float]], kills: list[tuple[float, str, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    times = [s["t"] / 60 for s in samples]
    for kind in ("driver", *KINDS):
        ax.plot(times, [s[kind] / 2**20 for s in samples], label=kind)
    for at, kind, _ in kills:
        ax.axvline(at / 60, color="red" if kind == "ReplayShard" else "grey", alpha=0.3, lw=0.8)
    ax.set_xlabel("minutes (vertical lines: kills; red = shard, grey = collector)")
    ax.set_ylabel("resident memory, MiB (sum per kind)")
    ax.set_title("Harvest soak: memory over time")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(cfg_dict: dict, run_id: str) -> tuple[pipeline.RunSummary, float]:
    """`harvest run`'s collect and compact (rotating), as the pipeline runs them."""
    cfg = parse_config({**cfg_dict, "run": {**cfg_dict["run"], "id": run_id}}, "<soak>")
    run_id, paths = run_folder.prepare_run(cfg)
    summary = pipeline.RunSummary(run_id, str(paths.root))
    started = time.perf_counter()
    pipeline.collect_and_compact(cfg, run_id, paths, summary)
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every-s", type=float, default=30.0)
    parser.add_argument("--collectors", type=int, default=3)
    parser.add_argument("--watchdog-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibration-rows",
        type=int,
        default=3_000_000,
        help="rows of the kill-free reference run (enough to reach the steady rate)",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "soak"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING")
    start_local_ray(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        object_store_memory=512 * 2**20,
        runtime_env=worker_runtime_env(os.environ.get("PYTHONPATH")),
    )
    with tempfile.TemporaryDirectory(prefix="harvest-soak-") as tmp:
        root = Path(tmp)
        calibration, seconds = collect(
            soak_config(root / "calibration", args.collectors, args.calibration_rows, args.watchdog_s), "calibration"
        )
        reference_rate = calibration.collect.rows / calibration.collect.seconds
        steps = int(reference_rate * args.minutes * 60)
        print(
            f"calibration: {calibration.collect.rows:,} rows in {calibration.collect.seconds:.1f}s, no kills "
            f"({reference_rate:,.0f} rows/s); soaking for ~{args.minutes:g} min = {steps:,} rows",
            flush=True,
        )
        killer, sampler = Killer(args.kill_every_s, args.seed), MemorySampler()
        killer.start()
        sampler.start()
        try:
            summary, seconds = collect(soak_config(root / "soak", args.collectors, steps, args.watchdog_s), "soak")
        finally:
            killer.stop.set()
            sampler.stop.set()
            killer.join()
            sampler.join()
    ray.shutdown()
    collected = summary.collect
    kills = {kind: sum(1 for _, k, _ in killer.kills if k == kind) for kind in ("RolloutWorker", "ReplayShard")}
    plot = out / "soak-memory.png"
    plot_memory(sampler.samples, killer.kills, plot)
    peak = (
        {kind: max(s[kind] for s in sampler.samples) / 2**20 for kind in ("driver", *KINDS)} if sampler.samples else {}
    )
    report = {
        "minutes": seconds / 60,
        "rows_acknowledged": collected.rows,
        "rows_in_dataset": summary.dataset_rows,
        "equal": collected.rows == summary.dataset_rows,
        "kills": kills,
        "collector_restarts": sum(collected.restarts),
        "stalls": len(collected.stalls),
        "rows_per_s_with_kills": collected.rows / collected.seconds,
        "rows_per_s_reference": reference_rate,
        "peak_rss_mib": peak,
        "memory_plot": str(plot),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    print(
        f"soak: {report['minutes']:.1f} min, {kills['RolloutWorker']} collector and {kills['ReplayShard']} shard "
        f"kills, {report['collector_restarts']} collector restarts, {report['stalls']} stalls detected"
    )
    print(
        f"rows acknowledged {collected.rows:,} | rows in the dataset {summary.dataset_rows:,} | "
        f"{'EQUAL' if report['equal'] else 'DIFFERENT'}"
    )
    print(
        f"rate with kills {report['rows_per_s_with_kills']:,.0f} rows/s vs the kill-free reference "
        f"{reference_rate:,.0f} rows/s ({report['rows_per_s_with_kills'] / reference_rate:.2f})"
    )
    print("peak RSS (MiB): " + ", ".join(f"{kind} {value:.0f}" for kind, value in peak.items()))
    print(f"memory over time: {plot}")
    sys.exit(0 if report["equal"] else 1)


if __name__ == "__main__":
    main()
