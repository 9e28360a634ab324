"""The Python API: `harvest.run` on a dict config with a user's own expert, the run's outputs
read back through `RunResult`, `harvest.load_policy` and `harvest.evaluate`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import harvest
from harvest.rollout.policies import PolicyOutput


class PoleBalancer:
    """A user's own expert for CartPole (any class with `version`, `extra_columns` and
    `compute_actions` is a `harvest.Policy`): push the cart the way the pole falls."""

    version = 0

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        assert isinstance(action_space, gym.spaces.Discrete)

    def extra_columns(self) -> dict:
        return {}

    def compute_actions(self, obs: np.ndarray) -> PolicyOutput:
        return PolicyOutput((obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64))


def test_import_harvest_loads_neither_ray_nor_torch():
    import subprocess
    import sys

    code = "import sys, harvest; harvest.__version__; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_a_bad_key_in_a_dict_config_is_named():
    with pytest.raises(harvest.ConfigError, match="rollout.stepz"):
        harvest.make_config({"rollout": {"stepz": 10}})
    assert harvest.make_config({"env": {"num_envs": 3}}, ["rollout.steps=77"]).rollout.steps == 77


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_harvest_run_from_python_with_a_users_expert_and_its_outputs(ray_cluster, tmp_path):
    config = {
        "run": {"output_dir": str(tmp_path)},
        "env": {"id": "CartPole-v1", "num_envs": 4},
        "rollout": {
            "num_collectors": 1,
            "steps": 3000,
            "batch_rows": 500,
            "num_cpus": 0.25,
            "policy": {"kind": "custom", "entry_point": "tests.cluster.test_api:PoleBalancer"},
        },
        "replay": {"num_shards": 1, "num_cpus": 0.1},
        "aggregation": {"num_cpus": 0.1},
        "learner": {"bc": {"epochs": 3}, "hidden_sizes": [32], "num_cpus": 0.5},
        "eval": {"episodes": 2, "num_workers": 1, "baselines": []},
    }
    result = harvest.run(config, overrides=["learner.lr=0.003"], run_id="api")
    assert isinstance(result, harvest.RunResult) and result.run_id == "api" and result.run_dir == tmp_path / "api"
    dataset = result.dataset()
    assert result.rows == dataset.manifest.rows >= 3000
    assert result.summary.collect.episode_return_mean > 100, "the user's expert balances the pole"
    assert set(result.evaluation) == {"trained"} and len(result.summary.eval) == 1
    assert result.checkpoint == tmp_path / "api" / "learner" / "best.safetensors" and result.checkpoint.is_file()

    policy = harvest.load_policy(result.checkpoint, env="CartPole-v1")
    obs = np.stack([gym.make("CartPole-v1").reset(seed=seed)[0] for seed in range(5)])
    actions = policy.compute_actions(obs).actions
    assert actions.shape == (5,) and set(actions.tolist()) <= {0, 1}
    with pytest.raises(harvest.CheckpointError, match="Pendulum-v1"):
        harvest.load_policy(result.checkpoint, env="Pendulum-v1")

    again = harvest.evaluate(result.run_dir, ["eval.episodes=1"])
    assert set(again) == {"trained"} and len(again["trained"].returns) == 1
    with pytest.raises(harvest.RunFolderError, match="api"):
        harvest.run(config, run_id="api")  # an existing run id is refused, not overwritten
