"""Box-action envs played and learned over a discrete set of their actions (DQfD needs one)."""

import gymnasium as gym
import numpy as np
import pytest

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.envs.action_sets import PRESETS, DiscreteActions, nearest_index, resolve_action_set
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_env, make_vector_env
from harvest.learners.bc import BCLearner
from harvest.learners.config import BCConfig, DQfDConfig, LearnerConfig, LearnerEvalConfig
from harvest.learners.dqfd import DQfDLearner
from harvest.learners.policy import load_torch_policy
from harvest.rollout.batch import BatchSchema, TransitionBatch
from tests.toy_envs import ReachEnv

GRID = [[x, y] for x in (-1.0, 0.0, 1.0) for y in (-1.0, 0.0, 1.0)]
REACH = "tests.toy_envs:ReachEnv"


def test_the_driving_preset_is_the_keyboards_combinations_and_wraps_car_racing():
    driving = resolve_action_set("driving", gym.make("CarRacing-v3").action_space)
    assert driving.shape == (9, 3) and {tuple(a) for a in driving.tolist()} >= {(-1, 1, 0), (0, 0, 0.8), (1, 0, 0)}
    env = make_env(EnvConfig(id="CarRacing-v3", action_set="driving", frame_stack=2))
    assert env.action_space == gym.spaces.Discrete(9) and env.observation_space.shape == (2, 96, 96, 3)
    vector = make_vector_env(EnvConfig(id="CarRacing-v3", num_envs=2, action_set="driving"))
    assert vector.single_action_space == gym.spaces.Discrete(9)
    assert DiscreteActions(ReachEnv(), GRID).action(4).tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(nearest_index(np.array([[0.9, -0.2], [-0.4, -0.6]]), np.array(GRID))[0], [7, 3])
    assert PRESETS["driving"][0] == [-1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("flying", "no preset 'flying'"),
        ([[1.0, 2.0]], "at least 2 action vectors"),
        ([[0.0], [1.0]], r"actions of shape \(1,\) do not fit"),
        ([[5.0, 0.0], [0.0, 0.0]], r"actions \[0\] lie outside"),
    ],
)
def test_a_set_that_does_not_fit_the_space_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_action_set(spec, ReachEnv.action_space)


def reach_dataset(folder, rows: int = 4000):
    """ReachEnv rows whose actions are the target rounded to the grid (what a 9-key player gives)."""
    schema = BatchSchema.for_spaces(ReachEnv.observation_space, ReachEnv.action_space)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (rows + 1, 2)).astype(np.float32)
    action = np.round(obs[:-1]).astype(np.float32)
    episode = np.arange(rows) // 8
    columns = {
        "obs": obs[:-1],
        "action": action,
        "reward": -np.square(action - obs[:-1]).sum(1).astype(np.float32),
        "next_obs": obs[1:],
        "terminated": np.zeros(rows, bool),
        "truncated": np.arange(rows) % 8 == 7,
        "episode_id": episode,
        "step": np.arange(rows) % 8,
        "collector_id": np.zeros(rows, np.int64),
        "policy_version": np.zeros(rows, np.int64),
        "timestamp": np.datetime64("2026-11-25T12:00:00", "ns") + np.arange(rows).astype("timedelta64[ms]"),
    }
    write_dataset(
        [TransitionBatch(columns)], schema, folder, AggregationConfig(formats=["parquet"]), run_id="reach", env_id=REACH
    )
    return folder


def reach_return(checkpoint: str, episodes: int = 20) -> float:
    policy = load_torch_policy(checkpoint, env_action_space=ReachEnv.action_space)
    env = ReachEnv()
    total = 0.0
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        for _ in range(8):
            action = policy.compute_actions(obs[None]).actions[0]
            assert ReachEnv.action_space.contains(action) and action.tolist() in GRID
            obs, reward, *_ = env.step(action)
            total += reward
    return total / episodes


def test_bc_learns_a_box_dataset_over_an_action_set_and_plays_it_in_the_box_env(tmp_path):
    data = reach_dataset(tmp_path / "data")
    result = BCLearner(
        LearnerConfig(action_set=GRID, hidden_sizes=[64], lr=3e-3, bc=BCConfig(epochs=6)),
        str(data),
        str(tmp_path / "bc"),
    ).train()
    assert result.history[-1].validation_accuracy > 0.9
    assert reach_return(result.best_checkpoint) > -2.0, "the grid at best: -1.33 per episode; random: about -21"


def test_dqfd_learns_a_box_dataset_over_an_action_set(tmp_path):
    data = reach_dataset(tmp_path / "data")
    cfg = LearnerConfig(
        stages=["dqfd"],
        action_set=GRID,
        hidden_sizes=[64],
        lr=1e-3,
        batch_size=64,
        dqfd=DQfDConfig(pretrain_steps=1500, n_step=3, log_every=500),
        eval=LearnerEvalConfig(episodes=5),
    )
    learner = DQfDLearner(cfg, str(data), str(tmp_path / "dqfd"), EnvConfig(id=REACH))
    result = learner.train()
    assert learner.env_cfg.action_set == GRID and result.best_score > -3.0
    assert reach_return(result.best_checkpoint) > -3.0
