"""DQfD: n-step targets, the learner's phases and records, and DQfD beating behaviour cloning
on CartPole demonstrations diluted with random play (the same data for both)."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.learners.bc import BCLearner
from harvest.learners.checkpoint import load_checkpoint
from harvest.learners.config import BCConfig, DQfDConfig, LearnerConfig, LearnerEvalConfig
from harvest.learners.dqfd import DQfDLearner, n_step_returns
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.policies import CartPoleExpert, RandomPolicy
from tests.learners.test_bc import tensorboard_scalars

pytestmark = pytest.mark.timeout(600)


def test_n_step_returns_match_a_hand_computation_in_any_row_order():
    # Episode 7: 4 rows, terminated at the end; episode 3: 3 rows, truncated; episode 5: a gap after step 1.
    episode_id = np.array([7, 7, 7, 7, 3, 3, 3, 5, 5, 5])
    step = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 3])
    reward = np.arange(1, 11, dtype=np.float32)
    terminated = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    truncated = np.array([0, 0, 0, 0, 0, 0, 1, 0, 0, 0], bool)
    order = np.random.default_rng(0).permutation(10)
    got = n_step_returns(
        reward[order], terminated[order], truncated[order], episode_id[order], step[order], n=3, gamma=0.5
    )
    back = np.argsort(order)  # got is in the shuffled order; put it back
    returns, last, discount, done = (got.returns[back], order[got.last[back]], got.discount[back], got.done[back])
    np.testing.assert_allclose(returns, [1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4, 5 + 3 + 1.75, 6 + 3.5, 7, 8 + 4.5, 9, 10])
    np.testing.assert_array_equal(last, [2, 3, 3, 3, 6, 6, 6, 8, 8, 9])  # the gap ends episode 5's window
    np.testing.assert_allclose(discount, [0.125, 0.125, 0.25, 0.5, 0.125, 0.25, 0.5, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(done, [0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def play(policy, episodes: int, seed: int, first_episode_id: int) -> dict[str, np.ndarray]:
    env = gym.make("CartPole-v1")
    rows = []
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        for step in range(10_000):
            action = int(policy.compute_actions(obs[None]).actions[0])
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, action, reward, next_obs, terminated, truncated, first_episode_id + index, step))
            obs = next_obs
            if terminated or truncated:
                break
    obs, action, reward, next_obs, terminated, truncated, episode_id, step = map(np.array, zip(*rows))
    count = len(rows)
    return {
        "obs": obs.astype(np.float32),
        "action": action.astype(np.int64),
        "reward": reward.astype(np.float32),
        "next_obs": next_obs.astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "episode_id": episode_id.astype(np.int64),
        "step": step.astype(np.int64),
        "collector_id": np.zeros(count, np.int64),
        "policy_version": np.zeros(count, np.int64),
        "timestamp": np.zeros(count, "datetime64[ns]"),
    }


def mixed_dataset(folder: Path, seed: int, expert_episodes: int = 5, random_episodes: int = 45) -> Path:
    """The issue's data: a few expert episodes among many random-policy ones, as one dataset."""
    env = gym.make("CartPole-v1")
    expert = play(CartPoleExpert(env.observation_space, env.action_space), expert_episodes, 1000 * seed, 0)
    randomly = play(
        RandomPolicy(env.observation_space, env.action_space, seed=seed), random_episodes, 1000 * seed + 500, 100
    )
    batch = TransitionBatch({name: np.concatenate([expert[name], randomly[name]]) for name in expert})
    write_dataset(
        [batch],
        BatchSchema.for_spaces(env.observation_space, env.action_space),
        folder,
        AggregationConfig(formats=["parquet"]),
        run_id="dqfd-test",
        env_id="CartPole-v1",
    )
    return folder


def greedy_return(checkpoint: str, episodes: int = 10) -> float:
    model = load_checkpoint(checkpoint).model
    env, returns = gym.make("CartPole-v1"), []
    for index in range(episodes):
        obs, _ = env.reset(seed=90_000 + index)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = int(model.act({"obs": torch.as_tensor(obs[None])})[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_dqfd_beats_behaviour_cloning_on_demonstrations_diluted_with_random_play(tmp_path):
    torch.set_num_threads(1)
    bc_returns, dqfd_returns = [], []
    for seed in range(3):
        data = mixed_dataset(tmp_path / f"data{seed}", seed)
        bc = BCLearner(LearnerConfig(seed=seed, bc=BCConfig(epochs=30)), str(data), str(tmp_path / f"bc{seed}")).train()
        dqfd_cfg = DQfDConfig(pretrain_steps=2000, log_every=1000)
        no_eval = LearnerEvalConfig(episodes=0)
        dqfd = DQfDLearner(
            LearnerConfig(
                stages=["dqfd"], dqfd=dqfd_cfg, eval=no_eval, seed=seed, batch_size=64, hidden_sizes=[64, 64]
            ),
            str(data),
            str(tmp_path / f"dqfd{seed}"),
        ).train()
        bc_returns.append(greedy_return(bc.best_checkpoint))
        dqfd_returns.append(greedy_return(dqfd.best_checkpoint))
    # Measured: BC 51 / 398 / 57 (its best-validation checkpoint), DQfD 480-500 on each seed.
    assert np.mean(dqfd_returns) > np.mean(bc_returns), (dqfd_returns, bc_returns)
    assert np.mean(dqfd_returns) >= 400, dqfd_returns


def test_dqfd_interacts_mixes_its_own_rows_in_and_writes_its_records(tmp_path):
    data = mixed_dataset(tmp_path / "data", seed=4, expert_episodes=2, random_episodes=5)
    cfg = LearnerConfig(
        stages=["dqfd"],
        batch_size=32,
        hidden_sizes=[32],
        seed=1,
        dqfd=DQfDConfig(
            pretrain_steps=100,
            online_env_steps=400,
            log_every=100,
            demo_ratio=None,
        ),
        eval=LearnerEvalConfig(episodes=2, max_steps=200),
    )
    result = DQfDLearner(cfg, str(data), str(tmp_path / "out")).train()
    history = json.loads(Path(result.history_path).read_text())
    steps = history["steps"]
    assert [entry["phase"] for entry in steps] == ["pretrain"] + ["online"] * 4
    assert steps[0]["demo_fraction"] == 1.0 and steps[-1]["demo_fraction"] < 1.0, "the agent's rows are sampled"
    assert steps[-1]["env_steps"] == 400 and steps[-1]["step"] == 500
    assert all(entry["eval_return"] is not None for entry in steps)
    assert result.best_score == max(entry["eval_return"] for entry in steps)
    assert (tmp_path / "out" / "training_curve.png").stat().st_size > 0
    scalars = tensorboard_scalars(tmp_path / "out")
    assert [step for step, _ in scalars["loss/margin"]] == [100, 200, 300, 400, 500]
    assert {"loss/td", "loss/n_step", "eval/return", "replay/demo_fraction", "lr"} <= set(scalars)
    first, second = load_checkpoint(result.best_checkpoint), load_checkpoint(result.best_checkpoint)
    obs = {"obs": torch.randn(64, 4)}
    assert torch.equal(first.model.act(obs), second.model.act(obs)), "a checkpoint reloads to the same actions"
    assert first.info["algorithm"] == "dqfd"


def test_dqfd_refuses_continuous_actions_with_a_pointer_to_discretising(tmp_path):
    schema = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))
    from tests.rollout.test_batch import random_batch

    write_dataset(
        [random_batch(schema, 20)],
        schema,
        tmp_path / "data",
        AggregationConfig(formats=["parquet"]),
        run_id="t",
        env_id="Pendulum-v1",
    )
    with pytest.raises(ValueError, match="DQfD needs a Discrete action space.*set learner.action_set"):
        DQfDLearner(LearnerConfig(stages=["dqfd"]), str(tmp_path / "data"), str(tmp_path / "out"))
