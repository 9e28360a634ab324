"""PPO fine-tuning with rollout actors playing the learner's weights, GAE, and `bc -> ppo`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.envs.config import EnvConfig
from harvest.learners.bc import BCLearner
from harvest.learners.checkpoint import load_checkpoint
from harvest.learners.config import BCConfig, LearnerConfig, LearnerEvalConfig, PPOConfig
from harvest.learners.critic import gae
from harvest.learners.ppo import PPOLearner
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.policies import CartPoleExpert
from tests.learners.test_bc import tensorboard_scalars
from tests.learners.test_dqfd import greedy_return, play

pytestmark = pytest.mark.timeout(600)


def test_gae_bootstraps_truncated_and_unfinished_episodes_and_stops_at_terminations():
    # Episode 1: 3 rows, terminated; episode 2: 2 rows, truncated; episode 3: 2 rows, still running.
    episode_id = np.array([1, 1, 1, 2, 2, 3, 3])
    step = np.array([0, 1, 2, 0, 1, 0, 1])
    reward = np.ones(7, np.float32)
    value = np.array([1, 2, 3, 4, 5, 6, 7], np.float32)
    next_value = np.array([2, 3, 99, 5, 10, 7, 20], np.float32)
    terminated = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    truncated = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    order = np.array([6, 2, 0, 4, 1, 5, 3])  # any row order
    gamma, lam = 0.9, 0.5
    adv, ret = gae(
        reward[order],
        value[order],
        next_value[order],
        terminated[order],
        truncated[order],
        episode_id[order],
        step[order],
        gamma,
        lam,
    )
    delta = reward + gamma * next_value * (1 - terminated) - value
    expected = delta.copy()
    for i in (1, 0):  # episode 1 backwards; row 2 terminated: no bootstrap (its V(s') is ignored)
        expected[i] += gamma * lam * expected[i + 1]
    expected[3] += gamma * lam * expected[4]  # episode 2: row 4 truncated, bootstraps V(s') = 10
    expected[5] += gamma * lam * expected[6]  # episode 3: row 6 bootstraps V(s') = 20
    np.testing.assert_allclose(adv, expected[order], rtol=1e-6)
    np.testing.assert_allclose(ret, (expected + value)[order], rtol=1e-6)


def test_bc_then_ppo_on_cartpole_reaches_475_within_100k_env_steps(ray_cluster, tmp_path):
    env = gym.make("CartPole-v1")
    rows = play(CartPoleExpert(env.observation_space, env.action_space), 2, 77, 0)  # two expert episodes
    write_dataset(
        [TransitionBatch(rows)],
        BatchSchema.for_spaces(env.observation_space, env.action_space),
        tmp_path / "data",
        AggregationConfig(formats=["parquet"]),
        run_id="t",
        env_id="CartPole-v1",
    )
    bc = BCLearner(
        LearnerConfig(hidden_sizes=[64, 64], bc=BCConfig(epochs=2, validation_fraction=0)),
        str(tmp_path / "data"),
        str(tmp_path / "bc"),
    ).train()
    weak = greedy_return(bc.final_checkpoint, 10)
    cfg = LearnerConfig(
        stages=["ppo"],
        hidden_sizes=[64, 64],
        num_cpus=1,
        init_checkpoint=bc.final_checkpoint,
        ppo=PPOConfig(env_steps=100_000, eval_every=2),
    )
    result = PPOLearner(cfg, EnvConfig(id="CartPole-v1", num_envs=8), str(tmp_path / "ppo"), "ppo-test").train()
    history = json.loads(Path(result.history_path).read_text())["iterations"]
    reached = [entry["env_steps"] for entry in history if (entry["eval_return"] or 0) >= 475]
    assert weak < 200, f"the BC start should be weak, got {weak}"
    assert reached and reached[0] <= 100_000, [(e["env_steps"], e["eval_return"]) for e in history]
    assert greedy_return(result.best_checkpoint, 10) >= 475
    assert [entry["policy_version"] for entry in history] == list(range(1, len(history) + 1))
    assert history[-1]["env_steps"] >= 100_000 and history[0]["episodes"] > 0
    best = load_checkpoint(result.best_checkpoint)
    assert best.info["algorithm"] == "ppo" and best.info["init_checkpoint"] == bc.final_checkpoint
    obs = {"obs": torch.randn(32, 4)}
    assert torch.equal(best.model.act(obs), load_checkpoint(result.best_checkpoint).model.act(obs))
    assert (tmp_path / "ppo" / "training_curve.png").stat().st_size > 0


def test_ppo_learns_box_actions_with_a_tanh_squashed_gaussian(ray_cluster, tmp_path):
    # ReachEnv: the action should equal the observed target; random actions score about -21 per
    # episode, always playing the centre about -5.3, the perfect policy 0.
    env = EnvConfig(id="tests.toy_envs:ReachEnv", num_envs=8)
    cfg = LearnerConfig(
        stages=["ppo"],
        hidden_sizes=[64, 64],
        num_cpus=1,
        lr=3e-3,
        ppo=PPOConfig(env_steps=20_000, eval_every=2, rows_per_collector=512),
        eval=LearnerEvalConfig(episodes=20),
    )
    result = PPOLearner(cfg, env, str(tmp_path / "ppo"), "ppo-box").train()
    history = json.loads(Path(result.history_path).read_text())["iterations"]
    assert history[0]["episode_return"] < -10, history[0]
    assert result.best_score > -1.0, [(e["env_steps"], e["eval_return"]) for e in history]
    assert history[-1]["entropy"] < history[0]["entropy"] - 1  # the learned std shrank
    best = load_checkpoint(result.best_checkpoint)
    assert best.model.log_std.max() < -0.5
    targets = torch.rand(256, 2) * 2 - 1
    greedy = best.model.act({"obs": targets})
    assert float((greedy - targets).square().sum(1).mean()) < 0.15
    assert torch.equal(greedy, load_checkpoint(result.best_checkpoint).model.act({"obs": targets}))


def test_harvest_run_stages_chain_bc_dqfd_and_ppo_from_each_best_checkpoint(ray_cluster, tmp_path):
    from harvest.cluster.config import load_config
    from harvest.cluster.run_folder import RunPaths
    from harvest.cluster.stages.train import train

    env = gym.make("CartPole-v1")
    paths = RunPaths(tmp_path / "run")
    rows = play(CartPoleExpert(env.observation_space, env.action_space), 2, 5, 0)
    write_dataset(
        [TransitionBatch(rows)],
        BatchSchema.for_spaces(env.observation_space, env.action_space),
        paths.dataset,
        AggregationConfig(formats=["parquet"]),
        run_id="t",
        env_id="CartPole-v1",
    )
    cfg = load_config(
        None,
        [
            "learner.stages=[bc, dqfd, ppo]",
            "learner.bc.epochs=1",
            "learner.hidden_sizes=[16]",
            "learner.dqfd.pretrain_steps=50",
            "learner.dqfd.log_every=50",
            "learner.eval.episodes=2",
            "learner.ppo.env_steps=3000",
            "learner.ppo.eval_every=1",
            "learner.eval.episodes=2",
            "env.num_envs=4",
            # evaluations in another setting of the env: 0 per step, -1 on failure
            "learner.eval.env_kwargs={sutton_barto_reward: true}",
        ],
    )
    result = train(cfg, paths, "stages")
    assert sorted(p.name for p in paths.learner.iterdir() if p.is_dir()) == ["1-bc", "2-dqfd", "3-ppo"]
    dqfd_history = json.loads((paths.learner / "2-dqfd" / "training_history.json").read_text())
    assert dqfd_history["config"]["init_checkpoint"] == str(paths.learner / "1-bc" / "best.safetensors")
    ppo_best = load_checkpoint(paths.learner / "3-ppo" / "best.safetensors")
    assert ppo_best.info["init_checkpoint"] == str(paths.learner / "2-dqfd" / "best.safetensors")
    assert result.best_checkpoint == str(paths.learner / "best.safetensors") and result.algorithm == "ppo"
    assert (paths.learner / "best.safetensors").read_bytes() == (
        paths.learner / "3-ppo" / "best.safetensors"
    ).read_bytes()
    ppo_history = json.loads((paths.learner / "training_history.json").read_text())
    assert ppo_history["algorithm"] == "ppo"
    assert all(-1 <= entry["eval_return"] <= 0 for entry in ppo_history["iterations"])
    assert all(entry["episode_return"] is None or entry["episode_return"] > 0 for entry in ppo_history["iterations"])
    scalars = tensorboard_scalars(paths.learner / "3-ppo")
    assert {
        "loss/policy",
        "loss/value",
        "entropy",
        "kl/initial",
        "return/episode",
        "eval/return",
        "lr",
        "throughput/env_steps_per_s",
    } <= set(scalars)
    assert all(tensorboard_scalars(paths.learner / stage) for stage in ("1-bc", "2-dqfd"))
    # The evaluation plays every stage's best checkpoint beside the last one.
    from harvest.cluster.stages.evaluate import evaluate

    cfg = load_config(
        None,
        [
            "learner.stages=[bc, dqfd, ppo]",
            "eval.episodes=2",
            "eval.num_workers=1",
            "eval.baselines=[random]",
            "env.num_envs=2",
        ],
    )
    results = evaluate(cfg, paths, "stages-eval")
    assert set(results) == {"trained", "1-bc", "2-dqfd", "random"}
    assert all(len(r.returns) == 2 for r in results.values())


GENERALS_TINY = [
    "env.num_envs=4",
    "env.kwargs.map={min_size: 6, max_size: 7, min_general_distance: 3}",
    "env.kwargs.max_steps=60",
    "rollout.num_collectors=1",
    "rollout.steps=2000",
    "rollout.batch_rows=512",
    "rollout.num_cpus=0.25",
    "replay.num_cpus=0.1",
    "learner.bc.epochs=1",
    "learner.conv_channels=[8]",
    "learner.num_cpus=0.5",
    "learner.ppo.env_steps=1000",
    "learner.ppo.num_collectors=2",
    "learner.ppo.rows_per_collector=256",
    "learner.ppo.minibatch_size=64",
    "learner.ppo.eval_every=1",
    "learner.eval.episodes=2",
    "learner.eval.max_steps=60",
    "eval.episodes=4",
    "eval.num_workers=1",
    "eval.baselines=[expert]",
    "eval.scenarios={vs_expert: {players: first, opponent: expert, max_steps: 60}}",
]


@pytest.mark.slow
def test_generals_bc_then_ppo_fine_tunes_against_the_expert_and_evaluates_both_stages(ray_cluster, repo_root_run):
    # examples/generals_bc_ppo.yaml, shrunk, from the repo root into artifacts/ (the example's run
    # for tests/test_examples.py): expert self-play -> BC -> PPO as player 0 against the expert.
    from harvest.cluster.cli import main

    run_id, run_dir = repo_root_run
    argv = [
        "run",
        "examples/generals_bc_ppo.yaml",
        "--run-id",
        run_id,
        *sum((["--set", item] for item in GENERALS_TINY), []),
    ]
    assert main(argv) == 0
    history = json.loads((run_dir / "learner" / "2-ppo" / "training_history.json").read_text())
    assert history["config"]["env_kwargs"] == {"players": "first", "opponent": "expert"}
    assert history["config"]["init_checkpoint"] == str(run_dir / "learner" / "1-bc" / "best.safetensors")
    assert history["iterations"][-1]["env_steps"] >= 1000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["eval"]) == {"trained @ vs_expert", "1-bc @ vs_expert", "expert @ vs_expert"}
    assert all(result["episodes"] == 4 and "win_rate" in result for result in summary["eval"].values())


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
@pytest.mark.skipif(
    os.environ.get("HARVEST_LONG_TESTS") != "1",
    reason="about 35 minutes on 2 CPUs (600k Generals env steps): set HARVEST_LONG_TESTS=1",
)
def test_generals_bc_then_ppo_wins_more_often_against_the_expert_than_bc_alone(tmp_path):
    # The example in its own Ray (all CPUs; the GPU with one), then a one-sided two-proportion
    # z-test on the 1,000 games each policy plays against the expert (the final PPO policy and
    # the clone). Measured on 2 CPUs (600k steps): 35.4 % vs 31.2 % (z = 1.99), 40.7 % vs 35.4 %
    # (z = 2.44), and this test 46.7 % vs 36.8 % (z = 4.49, 29 minutes); scoring the
    # best.safetensors picked on 50 games instead gave 35.7 % vs 35.4 %.
    repo = Path(__file__).resolve().parents[2]
    small = (os.cpu_count() or 0) < 12  # 4 collectors of 6,144 rows: the example's 24,576-row iterations
    sizing = (
        [
            "learner.ppo.env_steps=600000",
            "learner.ppo.num_collectors=4",
            "learner.ppo.rows_per_collector=6144",
            "learner.ppo.collector_num_cpus=0.3",
        ]
        if small
        else []
    )
    device = ["learner.num_gpus=1"] if torch.cuda.is_available() else []
    overrides = [f"run.output_dir={tmp_path}", *sizing, *device, "eval.baselines=[]"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "harvest",
            "run",
            "examples/generals_bc_ppo.yaml",
            "--run-id",
            "g",
            *sum((["--set", item] for item in overrides), []),
        ],
        cwd=repo,
        check=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())["eval"]
    bc, ppo = summary["1-bc @ vs_expert"], summary["trained @ vs_expert"]
    n = bc["episodes"] + ppo["episodes"]
    pooled = (bc["win_rate"] * bc["episodes"] + ppo["win_rate"] * ppo["episodes"]) / n
    z = (ppo["win_rate"] - bc["win_rate"]) / np.sqrt(pooled * (1 - pooled) * (1 / bc["episodes"] + 1 / ppo["episodes"]))
    assert z > 1.645, f"PPO {ppo['win_rate']:.1%} vs BC {bc['win_rate']:.1%} against the expert (z = {z:.2f})"
