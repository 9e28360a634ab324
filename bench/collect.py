"""End-to-end collection speed: K rollout actors + sharded replay vs the raw `make_vec` loop.

    python bench/collect.py [--collectors 2] [--num-envs 256] [--batch-rows 65536] [--seconds 4]

The reference is measured in the same run: one process stepping the same vector env with
the same policy and storing nothing. Harvest's figure counts rows acknowledged by the
replay (cut, validated, stored). The ratio `harvest / (K × raw)` is 1.0 when K collectors
lose nothing to batching, Ray calls and replay inserts.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.cluster.local import start_local_ray, worker_runtime_env  # noqa: E402
from harvest.envs.config import EnvConfig  # noqa: E402
from harvest.rollout.allocator import keep_batch_buffers_on_heap  # noqa: E402
from harvest.rollout.batch import BatchSchema  # noqa: E402
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig  # noqa: E402
from harvest.rollout.cutter import EpisodeIds, TransitionCutter  # noqa: E402
from harvest.rollout.policies import CartPoleExpert, ConfiguredPolicyFactory  # noqa: E402
from harvest.rollout.replay.replay import start_replay  # noqa: E402
from harvest.rollout.worker import RolloutWorker, schema_for  # noqa: E402


def raw_steps_per_s(env_id: str, num_envs: int, seconds: float) -> float:
    """Env steps per second of a bare single-process `make_vec` loop playing the expert."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    policy = CartPoleExpert(env.single_observation_space, env.single_action_space)
    obs, _ = env.reset(seed=0)
    for _ in range(50):  # warm-up
        obs, *_ = env.step(policy.compute_actions(obs).actions)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            obs, *_ = env.step(policy.compute_actions(obs).actions)
        steps += 100 * num_envs
    return steps / (time.perf_counter() - started)


def _raw_worker(args: tuple[str, int, float]) -> float:
    return raw_steps_per_s(*args)


def concurrent_raw_steps_per_s(env_id: str, num_envs: int, seconds: float, processes: int) -> float:
    """Total env steps per second of `processes` raw loops running at once (what the cores really give)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        return sum(pool.map(_raw_worker, [(env_id, num_envs, seconds)] * processes))


def cutting_rows_per_s(env_id: str, num_envs: int, batch_rows: int, num_shards: int, seconds: float) -> float:
    """Rows per second of the same loop plus Harvest's row cutting, in one process (no Ray, no replay)."""
    keep_batch_buffers_on_heap()  # as a RolloutWorker does
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    policy = CartPoleExpert(env.single_observation_space, env.single_action_space)
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
    cutter = TransitionCutter(
        schema, num_envs, batch_rows, env.metadata["autoreset_mode"], 0, EpisodeIds(0), num_shards=num_shards
    )
    obs, _ = env.reset(seed=0)
    cutter.reset(obs)
    rows_before, started = cutter.rows_cut, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            actions = policy.compute_actions(obs).actions
            obs, reward, terminated, truncated, info = env.step(actions)
            cutter.add_step(obs, actions, reward, terminated, truncated, info)
    return (cutter.rows_cut + cutter.buffered_rows - rows_before) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--collectors", type=int, default=2)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--batch-rows", type=int, default=131_072)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=512,
        help="a small store is reused, so batches land on pages already mapped",
    )
    args = parser.parse_args()

    concurrent = concurrent_raw_steps_per_s(args.env, args.num_envs, args.seconds, args.collectors)
    cutting = [
        cutting_rows_per_s(args.env, args.num_envs, args.batch_rows, args.shards, args.seconds)
        for _ in range(args.repeats)
    ]

    start_local_ray(
        num_cpus=max(2, args.collectors),
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=args.object_store_mb * 2**20,
        runtime_env=worker_runtime_env(os.environ.get("PYTHONPATH")),
    )
    env_cfg = EnvConfig(id=args.env, num_envs=args.num_envs)
    rollout = RolloutConfig(
        num_collectors=args.collectors,
        batch_rows=args.batch_rows,
        max_pushes_in_flight=4,
        num_cpus=0.5,
        policy=PolicyConfig(kind="expert"),
    )
    factory = ConfiguredPolicyFactory(rollout.policy, args.env)
    replay = start_replay(
        ReplayConfig(num_shards=args.shards, capacity_rows=500_000, num_cpus=0.1), schema_for(env_cfg, factory)
    )
    worker_actor = ray.remote(RolloutWorker)
    workers = [
        worker_actor.options(num_cpus=0.5).remote(env_cfg, rollout, factory, replay, i, "bench", i)
        for i in range(args.collectors)
    ]
    ray.get([w.collect.remote(args.batch_rows * 2) for w in workers], timeout=600)  # warm-up
    # Raw and Harvest alternate, so a slower or faster phase of a shared host hits both alike;
    # each ratio compares a Harvest run with the raw runs just before and after it.
    raw = [raw_steps_per_s(args.env, args.num_envs, args.seconds)]
    harvest, ratios = [], []
    for _ in range(args.repeats):
        rows_per_collector = int(raw[-1] * args.seconds)
        started = time.perf_counter()
        results = ray.get([w.collect.remote(rows_per_collector) for w in workers], timeout=600)
        harvest.append(sum(r.rows for r in results) / (time.perf_counter() - started))
        raw.append(raw_steps_per_s(args.env, args.num_envs, args.seconds))
        ratios.append(harvest[-1] / (args.collectors * (raw[-2] + raw[-1]) / 2))
    stats = replay.stats()
    for worker in workers:
        ray.kill(worker, no_restart=True)
    replay.kill()
    ray.shutdown()

    raw_median, harvest_median = statistics.median(raw), statistics.median(harvest)
    print(
        f"machine: {os.cpu_count()} cores; env {args.env}, {args.collectors} collectors x {args.num_envs} envs, "
        f"{args.shards} shards, batches of {args.batch_rows:,} rows; {stats.inserted_rows:,} rows stored"
    )
    print(f"raw make_vec loop (1 process): {raw_median:,.0f} steps/s   (runs: {', '.join(f'{r:,.0f}' for r in raw)})")
    print(
        f"raw make_vec loop, {args.collectors} processes at once: {concurrent:,.0f} steps/s in total "
        f"(= {concurrent / raw_median:.2f} x one process: the machine's real ceiling)"
    )
    print(
        f"harvest row cutting only (1 process, no Ray): {statistics.median(cutting):,.0f} rows/s   "
        f"(ratio to raw {statistics.median(cutting) / raw_median:.2f})"
    )
    print(
        f"harvest ({args.collectors} collectors + replay): {harvest_median:,.0f} rows/s   "
        f"(runs: {', '.join(f'{h:,.0f}' for h in harvest)})"
    )
    print(
        f"ratio harvest / ({args.collectors} x raw) = {statistics.median(ratios):.2f}   "
        f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}; harvest / concurrent raw = {harvest_median / concurrent:.2f})"
    )


if __name__ == "__main__":
    main()
