"""Behaviour-cloning throughput: Harvest's `BCLearner` vs a bare torch loop, same data, same model.

    python bench/learner.py [--rows 200000] [--epochs 3] [--batch-size 256]

Rows are CartPole transitions played by the scripted expert, written as a real dataset
folder by the compaction code. The reference is a minimal torch loop (index, forward,
cross-entropy, step) over the same tensors on the same device, measured in the same run.
Runs on CUDA when torch sees a GPU, else on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregation.compact import write_dataset  # noqa: E402
from aggregation.config import AggregationConfig  # noqa: E402
from envs.config import EnvConfig  # noqa: E402
from envs.registry import make_vector_env  # noqa: E402
from learners.bc import BCLearner, bc_loss  # noqa: E402
from learners.config import LearnerConfig  # noqa: E402
from learners.models import build_policy_model  # noqa: E402
from rollout.batch import BatchSchema  # noqa: E402
from rollout.cutter import EpisodeIds, TransitionCutter  # noqa: E402
from rollout.policies import CartPoleExpert  # noqa: E402


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
            rows = permutation[start:start + cfg.batch_size]
            loss = bc_loss(model, {"obs": obs[rows]}, action[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(obs.shape[0] / (time.perf_counter() - started))
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    cfg = LearnerConfig(epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.1,
                        num_cpus=float(torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = expert_dataset(Path(tmp), args.rows)
        result = BCLearner(cfg, str(dataset), str(Path(tmp) / "learner")).train()
        harvest = statistics.median([r.samples_per_s for r in result.history[1:]] or
                                    [result.history[0].samples_per_s])
        # The learner trains on the 90 % train split; the reference on all rows (per-sample rates compare).
        reference = bare_torch_samples_per_s(dataset, cfg, device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.rows:,} CartPole rows, MLP {cfg.hidden_sizes}, batch {cfg.batch_size}")
    print(f"bare torch loop: {reference:,.0f} samples/s")
    print(f"harvest BCLearner: {harvest:,.0f} samples/s (validation accuracy {result.history[-1].validation_accuracy:.3f})")
    print(f"ratio harvest / bare = {harvest / reference:.2f}")


if __name__ == "__main__":
    main()
