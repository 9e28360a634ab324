"""Learner benchmarks, each beside a reference measured in the same run.

    python bench/learners.py [--rows 200000] [--epochs 3] [--batch-size 256]
                             [--ppo-steps 300000] [--rllib-python PATH] [--skip-bc | --skip-ppo]

1. BC throughput: Harvest's `BCLearner` vs a bare torch loop, same data, same model. Rows are
   CartPole transitions played by the scripted expert, written as a real dataset folder by the
   compaction code; the reference is a minimal torch loop (index, forward, cross-entropy,
   step) over the same tensors on the same device. CUDA when torch sees a GPU.
2. PPO from scratch on CartPole-v1: env steps and wall time until an iteration's episodes
   average >= 475, Harvest's `PPOLearner` (2 rollout actors x 8 envs, 2 x 1,024 rows per
   iteration) beside RLlib's PPO with the same env-runner count, envs per runner and batch
   (2 x 8 envs, train batch 2,048, minibatch 64, 4 epochs, lr 1e-3). RLlib pins an older
   gymnasium, so it runs in its own venv: `--rllib-python` (default `.venv-rllib/bin/python`;
   `make bench` builds it); without it, its row is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.aggregation.compact import write_dataset  # noqa: E402
from harvest.aggregation.config import AggregationConfig  # noqa: E402
from harvest.envs.config import EnvConfig  # noqa: E402
from harvest.envs.registry import make_vector_env  # noqa: E402
from harvest.learners.bc import BCLearner  # noqa: E402
from harvest.learners.config import BCConfig, LearnerConfig  # noqa: E402
from harvest.learners.losses import bc_loss  # noqa: E402
from harvest.learners.models import build_policy_model  # noqa: E402
from harvest.rollout.batch import BatchSchema  # noqa: E402
from harvest.rollout.cutter import EpisodeIds, TransitionCutter  # noqa: E402
from harvest.rollout.policies import CartPoleExpert  # noqa: E402


def expert_dataset(folder: Path, rows: int) -> Path:
    env = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=64))
    policy = CartPoleExpert(env.single_observation_space, env.single_action_space)
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space)
    cutter = TransitionCutter(schema, 64, 65_536, env.metadata["autoreset_mode"], 0, EpisodeIds(1))
    obs, _ = env.reset(seed=0)
    cutter.reset(obs)
    batches = []
    while sum(b.num_rows for b in batches) < rows:
        actions = policy.compute_actions(obs).actions
        obs, reward, terminated, truncated, info = env.step(actions)
        batch = cutter.add_step(obs, actions, reward, terminated, truncated, info)
        if batch is not None:
            batches.append(batch)
    write_dataset(batches, schema, folder / "dataset", AggregationConfig(formats=["parquet"]), "bench", "CartPole-v1")
    return folder / "dataset"


def bare_torch_samples_per_s(dataset: Path, cfg: LearnerConfig, device: torch.device) -> float:
    """The reference: the same model, batch size and optimizer in the leanest loop."""
    learner = BCLearner(cfg, str(dataset), "/tmp/unused")
    columns = learner.dataset.read_columns(["obs", "action"])
    obs = torch.from_numpy(np.array(columns["obs"])).to(device)
    action = torch.from_numpy(np.array(columns["action"])).to(device)
    schema = learner.dataset.schema
    model = build_policy_model(schema.observation_space, schema.action_space, cfg.hidden_sizes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rates = []
    for _ in range(cfg.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        permutation = torch.randperm(obs.shape[0], device=device)
        for start in range(0, obs.shape[0], cfg.batch_size):
            rows = permutation[start : start + cfg.batch_size]
            loss = bc_loss(model, {"obs": obs[rows]}, action[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(obs.shape[0] / (time.perf_counter() - started))
    return statistics.median(rates[1:] or rates)


RLLIB_SCRIPT = """
import json, sys, time
import ray
from ray.rllib.algorithms.ppo import PPOConfig
ray.init(num_cpus=int(sys.argv[2]), include_dashboard=False, log_to_driver=False)
config = (PPOConfig().environment("CartPole-v1")
          .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
          .training(lr=1e-3, train_batch_size_per_learner=2048, minibatch_size=64, num_epochs=4,
                    gamma=0.99, lambda_=0.95, clip_param=0.2, vf_loss_coeff=0.5, entropy_coeff=0.0))
algo = config.build_algo()
started, steps, ret = time.perf_counter(), 0, None
while steps < int(sys.argv[1]):
    result = algo.train()
    steps = result["num_env_steps_sampled_lifetime"]
    ret = result["env_runners"].get("episode_return_mean")
    if ret is not None and ret >= 475:
        break
print(json.dumps({"env_steps": int(steps), "seconds": time.perf_counter() - started,
                  "return": None if ret is None else float(ret), "reached": bool(ret is not None and ret >= 475)}))
algo.stop()
ray.shutdown()
"""


def harvest_ppo(max_steps: int) -> dict:
    """Harvest's PPO from fresh weights until an iteration's episodes average >= 475."""
    import logging

    import ray

    from harvest.cluster.local import start_local_ray
    from harvest.learners.config import PPOConfig
    from harvest.learners.ppo import PPOLearner

    start_local_ray(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = LearnerConfig(
                stages=["ppo"],
                hidden_sizes=[64, 64],
                lr=1e-3,
                num_cpus=1,
                ppo=PPOConfig(
                    env_steps=max_steps,
                    num_collectors=2,
                    rows_per_collector=1024,
                    minibatch_size=64,
                    epochs=4,
                    eval_every=1_000_000,
                    value_warmup_iterations=0,
                    stop_at_return=475,
                ),
            )
            started = time.perf_counter()
            result = PPOLearner(cfg, EnvConfig(id="CartPole-v1", num_envs=8), tmp, "bench").train()
            seconds = time.perf_counter() - started
            history = json.loads(Path(result.history_path).read_text())["iterations"]
    finally:
        ray.shutdown()
    last = history[-1]
    return {
        "env_steps": last["env_steps"],
        "seconds": seconds,
        "return": last["episode_return"],
        "reached": (last["episode_return"] or 0) >= 475,
    }


def rllib_ppo(python: Path, max_steps: int) -> dict | str:
    """RLlib's PPO in its own venv; a reason string where it cannot run."""
    if not python.exists():
        return f"no RLlib venv at {python} (make bench builds .venv-rllib)"
    done = subprocess.run(
        [str(python), "-c", RLLIB_SCRIPT, str(max_steps), str(os.cpu_count())],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        return f"RLlib failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def ppo_table(max_steps: int, rllib_python: Path) -> None:
    rows = {"harvest PPOLearner": harvest_ppo(max_steps), "RLlib PPO 2.60": rllib_ppo(rllib_python, max_steps)}
    print(
        f"PPO from scratch on CartPole-v1 until an iteration's episodes average >= 475 (at most {max_steps:,} "
        "env steps); 2 collectors / env runners x 8 envs, batch 2,048, minibatch 64, 4 epochs"
    )
    print(f"{'library':<22} {'reached':>8} {'env steps':>10} {'wall s':>8} {'env steps/s':>12}")
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"{name:<22} {'-':>8}   {row}")
            continue
        print(
            f"{name:<22} {str(row['reached']):>8} {row['env_steps']:>10,} {row['seconds']:>8.1f} "
            f"{row['env_steps'] / row['seconds']:>12,.0f}"
        )
    harvest, rllib = rows["harvest PPOLearner"], rows["RLlib PPO 2.60"]
    if not isinstance(rllib, str) and harvest["reached"] and rllib["reached"]:
        print(
            f"harvest / RLlib: {rllib['env_steps'] / harvest['env_steps']:.2f}x fewer env steps, "
            f"{rllib['seconds'] / harvest['seconds']:.2f}x less wall time"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="alternating BC measurement pairs")
    parser.add_argument("--ppo-steps", type=int, default=300_000)
    parser.add_argument(
        "--rllib-python", type=Path, default=Path(__file__).resolve().parents[1] / ".venv-rllib" / "bin" / "python"
    )
    parser.add_argument("--skip-bc", action="store_true")
    parser.add_argument("--skip-ppo", action="store_true")
    args = parser.parse_args()
    if not args.skip_bc:
        bc_table(args)
    if not args.skip_ppo:
        print()
        ppo_table(args.ppo_steps, args.rllib_python)


def bc_table(args: argparse.Namespace) -> None:
    """Harvest and the bare loop take turns `--repeats` times, so a slow phase of the host hits
    both; the ratio is taken per pair and its median printed."""
    cfg = LearnerConfig(
        batch_size=args.batch_size,
        num_cpus=float(torch.get_num_threads()),
        bc=BCConfig(epochs=args.epochs, validation_fraction=0.1),
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harvest, reference = [], []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = expert_dataset(Path(tmp), args.rows)
        for repeat in range(args.repeats):
            result = BCLearner(cfg, str(dataset), str(Path(tmp) / f"learner{repeat}")).train()
            harvest.append(
                statistics.median([r.samples_per_s for r in result.history[1:]] or [result.history[0].samples_per_s])
            )
            # The learner trains on the 90 % train split; the reference on all rows (per-sample rates compare).
            reference.append(bare_torch_samples_per_s(dataset, cfg, device))
    ratios = [h / r for h, r in zip(harvest, reference)]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; {args.rows:,} CartPole rows, MLP {cfg.hidden_sizes}, batch {cfg.batch_size}; "
        f"{args.repeats} alternating pairs"
    )
    print(
        f"bare torch loop: {statistics.median(reference):,.0f} samples/s (each: "
        f"{', '.join(f'{r:,.0f}' for r in reference)})"
    )
    print(
        f"harvest BCLearner: {statistics.median(harvest):,.0f} samples/s (each: "
        f"{', '.join(f'{h:,.0f}' for h in harvest)}; validation accuracy {result.history[-1].validation_accuracy:.3f})"
    )
    print(f"ratio harvest / bare = {statistics.median(ratios):.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
