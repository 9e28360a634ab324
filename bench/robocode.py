"""Robocode collection speed: K RobocodeCollector actors (engine + Python + replay) vs the bare engines.

    python bench/robocode.py [--collectors 1 2] [--rounds 30] [--repeats 2]

Both sides play the same seeded battles (`sample.SpinBot` vs `sample.Target`, lockstep):

* bare: K engine JVMs (Harvest's runner and agent) running the battles with their output
  going to a file, no Python reading it: the engine's own turns per second;
* harvest: K `RobocodeCollector` Ray actors, one JVM each, parsing every turn, recovering
  actions and pushing the rows into 2 replay shards (acknowledged).

Prints turns per second of each and the ratio `harvest / bare` for every K; then one
collector with the real battle window on its own Xvfb display (`gui: true`) beside the same
collector headless, on the same battles.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.cluster.local import start_local_ray, worker_runtime_env  # noqa: E402
from harvest.envs.robocode.host import RobocodeInstall, compile_runner, engine_command, prepare_home  # noqa: E402
from harvest.rollout.config import ReplayConfig  # noqa: E402
from harvest.rollout.replay.replay import start_replay  # noqa: E402
from harvest.rollout.robocode_collector import RobocodeBattles, RobocodeCollector, robocode_schema  # noqa: E402

CACHE = Path("~/.cache/harvest/robocode").expanduser()


def bare_turns_per_s(num_engines: int, rounds: int, seed: int, workdir: Path) -> float:
    """K engines at once, each running one `rounds`-round battle into a file; total turns per second."""
    install = RobocodeInstall.find()
    classes = compile_runner(install, CACHE)
    processes, outputs = [], []
    for index in range(num_engines):
        home = prepare_home(install, workdir / f"bare-{index}")
        output = (workdir / f"bare-{index}.jsonl").open("wb")
        process = subprocess.Popen(
            engine_command(install, classes, home),
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.DEVNULL,
            cwd=home,
        )
        processes.append(process)
        outputs.append(output)
    time.sleep(0.1)
    while any((workdir / f"bare-{index}.jsonl").stat().st_size == 0 for index in range(num_engines)):
        time.sleep(0.05)  # every JVM has printed its ready line
    started = time.perf_counter()
    for process in processes:
        process.stdin.write(f"BATTLE robots=sample.SpinBot,sample.Target rounds={rounds} seed={seed}\n".encode())
        process.stdin.flush()
    # QUIT aborts a running battle, so it is sent once each engine has printed its battle_end.
    pending = set(range(num_engines))
    while pending:
        time.sleep(0.02)
        pending = {index for index in pending if not _ended(workdir / f"bare-{index}.jsonl")}
    seconds = time.perf_counter() - started
    for process in processes:
        process.stdin.write(b"QUIT\n")
        process.stdin.flush()
        process.wait(timeout=60)
    for output in outputs:
        output.close()
    turns = sum((workdir / f"bare-{index}.jsonl").read_bytes().count(b'"t":"turn"') for index in range(num_engines))
    return turns / seconds


def _ended(path: Path) -> bool:
    """Whether the engine writing `path` has printed its battle_end line (read from the tail)."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        return b'"t":"battle_end"' in handle.read()


def harvest_turns_per_s(num_collectors: int, rounds: int, seed: int, workdir: Path, gui: bool = False) -> float:
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=1_000_000, num_cpus=0.1), robocode_schema())
    battles = RobocodeBattles(rounds_per_battle=rounds, seed=seed, gui=gui)
    actor = ray.remote(RobocodeCollector)
    collectors = [
        actor.options(num_cpus=0.5).remote(battles, replay, index, 100 + index, str(workdir / f"h-{index}"), str(CACHE))
        for index in range(num_collectors)
    ]
    ray.get([collector.collect.remote(1) for collector in collectors], timeout=600)  # warm-up: one battle each
    started = time.perf_counter()
    results = ray.get([collector.collect.remote(1) for collector in collectors], timeout=600)  # one battle each
    seconds = time.perf_counter() - started
    for collector in collectors:
        ray.get(collector.close.remote(), timeout=60)
        ray.kill(collector, no_restart=True)
    replay.kill()
    return sum(result.turns for result in results) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per measured battle")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-gui", dest="gui", action="store_false", help="skip the GUI vs headless comparison")
    args = parser.parse_args()
    start_local_ray(
        num_cpus=max(2, max(args.collectors)),
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env=worker_runtime_env(os.environ.get("PYTHONPATH")),
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-robocode-") as tmp:
        for k in args.collectors:
            bare, harvest = [], []
            for repeat in range(args.repeats):
                # Harvest's second battle has seed + 1 (the first warms up): the bare engines play that one too.
                bare.append(bare_turns_per_s(k, args.rounds, 1000 * repeat + 1, Path(tmp) / f"k{k}-r{repeat}"))
                harvest.append(harvest_turns_per_s(k, args.rounds, 1000 * repeat, Path(tmp) / f"k{k}-r{repeat}"))
            rows.append((k, statistics.median(bare), statistics.median(harvest), bare, harvest))
        gui_rows = []
        for repeat in range(args.repeats if args.gui else 0):
            gui_rows.append(
                (
                    harvest_turns_per_s(1, args.rounds, 1000 * repeat, Path(tmp) / f"gui-r{repeat}", gui=True),
                    harvest_turns_per_s(1, args.rounds, 1000 * repeat, Path(tmp) / f"hl-r{repeat}"),
                )
            )
    ray.shutdown()
    print(
        f"machine: {os.cpu_count()} cores; sample.SpinBot vs sample.Target, lockstep, {args.rounds}-round battles, "
        f"medians of {args.repeats}"
    )
    print(f"{'K':>3}  {'bare engines turns/s':>21}  {'harvest turns/s':>16}  {'ratio':>6}")
    for k, bare, harvest, bare_runs, harvest_runs in rows:
        print(
            f"{k:>3}  {bare:>21,.0f}  {harvest:>16,.0f}  {harvest / bare:>6.2f}   "
            f"(bare runs {', '.join(f'{v:,.0f}' for v in bare_runs)}; "
            f"harvest runs {', '.join(f'{v:,.0f}' for v in harvest_runs)})"
        )
    if gui_rows:
        gui, headless = (statistics.median(values) for values in zip(*gui_rows))
        print(
            f"\n1 collector, battle window on Xvfb vs headless: gui {gui:,.0f} turns/s, headless {headless:,.0f} "
            f"turns/s, ratio {gui / headless:.2f}   (gui runs {', '.join(f'{g:,.0f}' for g, _ in gui_rows)}; "
            f"headless runs {', '.join(f'{h:,.0f}' for _, h in gui_rows)})"
        )


if __name__ == "__main__":
    main()
