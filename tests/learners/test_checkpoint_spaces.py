"""A checkpoint meets the env it is to play: other spaces are refused before any episode, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from harvest.envs.config import EnvConfig
from harvest.learners.checkpoint import save_checkpoint
from harvest.learners.models import ModelSpec, build_policy_model
from harvest.learners.policy import load_torch_policy
from harvest.rollout.config import PolicyConfig, RolloutConfig
from harvest.rollout.evaluation import evaluate_policies
from harvest.rollout.policies import (
    CheckpointError,
    CheckpointSpaceError,
    ConfiguredPolicyFactory,
    check_checkpoint_spaces,
)
from harvest.rollout.worker import RolloutWorker

REPO = Path(__file__).resolve().parents[2]
THREE_ACTIONS = "tests.toy_envs:ThreeActionEnv"


def cartpole_checkpoint(path: Path, action_set: list | None = None) -> Path:
    """An untrained CartPole policy, written by the learners' own writer."""
    env = gym.make("CartPole-v1")
    spec = ModelSpec("mlp", [8])
    info = {} if action_set is None else {"action_set": action_set}
    return save_checkpoint(path, build_policy_model(env.observation_space, env.action_space, spec), spec, 0, info)


def torch_factory(checkpoint: Path, env_id: str) -> ConfiguredPolicyFactory:
    return ConfiguredPolicyFactory(
        PolicyConfig(kind="torch", checkpoint=str(checkpoint)), env_id, seed=0, load_torch=load_torch_policy
    )


MISMATCHES = [
    # (env, the env's side of the message)
    (EnvConfig(id=THREE_ACTIONS, num_envs=1), "has obs Box(4,) float32 / action Discrete(3)"),
    (EnvConfig(id="Acrobot-v1", num_envs=1), "has obs Box(6,) float32 / action Discrete(3)"),
]


@pytest.mark.parametrize("env_cfg, env_side", MISMATCHES, ids=["more-actions", "other-obs"])
def test_the_driver_check_names_both_spaces_in_one_line(tmp_path, env_cfg, env_side):
    checkpoint = cartpole_checkpoint(tmp_path / "learner" / "best.safetensors")
    with pytest.raises(CheckpointSpaceError) as raised:
        check_checkpoint_spaces(checkpoint, env_cfg)
    message = str(raised.value)
    assert message == (
        f"{checkpoint}: trained for obs Box(4,) float32 / action Discrete(2), but env {env_cfg.id} {env_side}"
    )
    assert "\n" not in message and isinstance(raised.value, ValueError)


def test_the_same_spaces_pass_and_box_bounds_may_differ(tmp_path):
    checkpoint = cartpole_checkpoint(tmp_path / "best.safetensors")
    check_checkpoint_spaces(checkpoint, EnvConfig(id="CartPole-v1", num_envs=3, vectorization="async"))
    wide = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)  # other bounds, same shape and dtype
    torch_factory(checkpoint, "CartPole-v1").check_spaces(wide, gym.spaces.Discrete(2))
    with pytest.raises(CheckpointSpaceError, match=r"obs Box\(4,\) float64"):
        torch_factory(checkpoint, "CartPole-v1").check_spaces(
            gym.spaces.Box(-1.0, 1.0, (4,), np.float64), gym.spaces.Discrete(2)
        )
    with pytest.raises(CheckpointSpaceError, match=r"action Discrete\(2, start=1\)"):
        torch_factory(checkpoint, "CartPole-v1").check_spaces(wide, gym.spaces.Discrete(2, start=1))


def test_a_checkpoint_over_an_action_set_plays_a_box_env_of_the_sets_shape(tmp_path):
    checkpoint = cartpole_checkpoint(tmp_path / "best.safetensors", action_set=[[-1.0, 0.0], [1.0, 0.0]])
    obs = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    torch_factory(checkpoint, "toy").check_spaces(obs, gym.spaces.Box(-1, 1, (2,), np.float32))
    with pytest.raises(CheckpointSpaceError, match=r"action Box\(3,\) float32$"):
        torch_factory(checkpoint, "toy").check_spaces(obs, gym.spaces.Box(-1, 1, (3,), np.float32))


def test_a_missing_or_foreign_file_is_a_checkpoint_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint file"):
        check_checkpoint_spaces(tmp_path / "nope.safetensors", EnvConfig())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable"):
        check_checkpoint_spaces(junk, EnvConfig())


def test_the_worker_refuses_the_checkpoint_when_it_loads_the_policy(tmp_path):
    # The second guard, in the collector itself (here a plain object, no Ray): before its first reset.
    checkpoint = cartpole_checkpoint(tmp_path / "best.safetensors")
    played = tmp_path / "played"
    env_cfg = EnvConfig(id=THREE_ACTIONS, num_envs=1, kwargs={"played_file": str(played)})
    with pytest.raises(
        CheckpointSpaceError,
        match=r"env tests.toy_envs:ThreeActionEnv has obs Box\(4,\) float32 "
        r"/ action Discrete\(3\)",
    ):
        RolloutWorker(env_cfg, RolloutConfig(), torch_factory(checkpoint, env_cfg.id), None, 0, "spaces")
    assert not played.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("env_id", [THREE_ACTIONS, "Acrobot-v1"], ids=["more-actions", "other-obs"])
def test_evaluation_refuses_before_any_actor_starts(ray_cluster, tmp_path, env_id):
    # Before: three actions played silently (a return for `trained`), another obs shape died in a
    # RayTaskError about tensor sizes. Now the driver raises the error itself (not a Ray wrapper),
    # and no env of the evaluation was ever reset.
    checkpoint = cartpole_checkpoint(tmp_path / "best.safetensors")
    played = tmp_path / "played"
    env_cfg = EnvConfig(id=env_id, num_envs=1, kwargs={"played_file": str(played)} if env_id == THREE_ACTIONS else {})
    with pytest.raises(CheckpointSpaceError) as raised:
        evaluate_policies(
            {"trained": torch_factory(checkpoint, env_id)},
            env_cfg,
            RolloutConfig(num_cpus=0.25),
            num_episodes=2,
            num_workers=1,
            run_id="spaces",
            timeout_s=120,
        )
    assert type(raised.value) is CheckpointSpaceError, type(raised.value)
    assert f"but env {env_id} has obs" in str(raised.value)
    assert not played.exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_harvest_eval_in_another_env_exits_2_with_one_line_and_plays_nothing(tmp_path):
    # A run folder as `harvest train` leaves it (config + learner/best.safetensors), evaluated
    # with `--set env.id=` an env of three actions.
    run_dir = tmp_path / "runs" / "cartpole"
    (run_dir / "learner").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "env:\n  id: CartPole-v1\n  num_envs: 1\neval:\n  episodes: 2\n"
        "  num_workers: 1\n  baselines: [random]\nrollout:\n  num_cpus: 0.25\n"
        "ray:\n  num_cpus: 1\n  include_dashboard: false\n"
    )
    checkpoint = cartpole_checkpoint(run_dir / "learner" / "best.safetensors")
    played = tmp_path / "played"
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    kwargs = json.dumps({"played_file": str(played)})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harvest",
            "eval",
            str(run_dir),
            "--set",
            f"env.id={THREE_ACTIONS}",
            "--set",
            f"env.kwargs={kwargs}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    expected = (
        f"{checkpoint}: trained for obs Box(4,) float32 / action Discrete(2), but env {THREE_ACTIONS} has "
        f"obs Box(4,) float32 / action Discrete(3)"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not played.exists() and not (run_dir / "eval.json").exists()


@pytest.mark.parametrize("algorithm", ["ppo", "dqfd"])
def test_a_ppo_or_dqfd_stage_from_another_envs_checkpoint_exits_2_before_its_learner_starts(
    ray_cluster, tmp_path, capfd, algorithm
):
    from harvest.cluster.cli import main

    run_dir = tmp_path / "runs" / "acrobot"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("env:\n  id: Acrobot-v1\n  num_envs: 1\n")
    checkpoint = cartpole_checkpoint(tmp_path / "cartpole.safetensors")
    code = main(
        [
            "train",
            str(run_dir),
            "--set",
            f"learner.stages=[{algorithm}]",
            "--set",
            f"learner.init_checkpoint={checkpoint}",
        ]
    )
    err = capfd.readouterr().err
    assert code == 2, err[-3000:]
    assert (
        f"{checkpoint}: trained for obs Box(4,) float32 / action Discrete(2), but env Acrobot-v1 has obs "
        "Box(6,) float32 / action Discrete(3)"
    ) in err and "Traceback" not in err, err[-3000:]
    assert "learner (" not in err, "no learner actor was started"
