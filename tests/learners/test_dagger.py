"""DAgger: the critic labels the states the agent visits; corrections fine-tune the clone."""

import json

import numpy as np
import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main


@pytest.mark.timeout(600)
def test_dagger_with_the_scripted_critic_fixes_a_weak_clone(ray_cluster, tmp_path):
    overrides = [
        f"run.output_dir={tmp_path}",
        "rollout.steps=1000",
        "rollout.num_collectors=1",
        "env.num_envs=2",
        "rollout.num_cpus=0.25",
        "replay.num_cpus=0.1",
        "aggregation.num_cpus=0.1",
        "learner.bc.epochs=2",
        "learner.hidden_sizes=[64, 64]",
        "learner.bc.validation_fraction=0",
        "learner.num_cpus=0.5",
        "dagger.rounds=2",
        "dagger.steps_per_round=2000",
        "learner.eval.episodes=10",
        "dagger.lr=0.001",
        "dagger.epochs=5",
        "eval.num_workers=1",
    ]
    assert main(["dagger", "--run-id", "dagger", *sum((["--set", item] for item in overrides), [])]) == 0
    folder = tmp_path / "dagger" / "dagger"
    rounds = json.loads((folder / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2] and (folder / "rounds.png").stat().st_size > 5_000
    assert rounds[0]["mean_return"] < 200, "two expert episodes give a weak clone (greedy)"
    assert rounds[-1]["mean_return"] > rounds[0]["mean_return"] + 200
    assert rounds[2]["training_rows"] == 1000 + rounds[1]["corrections"] + rounds[2]["corrections"]

    play = Dataset.open(folder / "round-1" / "play").read_columns(["action", "label_action", "policy_version"])
    corrections = Dataset.open(folder / "round-1" / "corrections")
    fixed = corrections.read_columns(["action", "agent_action", "source"])
    assert corrections.manifest.parents == [str(folder / "round-1" / "play")]
    assert set(fixed["source"]) == {"correction"} and len(fixed["action"]) == len(play["action"])
    np.testing.assert_array_equal(np.sort(fixed["action"]), np.sort(play["label_action"]))
    assert (fixed["action"] != fixed["agent_action"]).mean() > 0.1, "the critic corrects the weak clone"


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_a_labelled_policy_records_the_critics_action_and_plays_it_with_the_mixing_probability(mix):
    import gymnasium as gym

    from harvest.rollout.config import PolicyConfig
    from harvest.rollout.policies import LABEL_COLUMN, ConfiguredPolicyFactory, LabeledPolicy

    space = gym.spaces.Box(-1, 1, (4,), np.float32)
    policy = ConfiguredPolicyFactory(
        PolicyConfig(kind="random", label_with="expert", label_mix=mix), "CartPole-v1", seed=0
    )(space, gym.spaces.Discrete(2))
    assert isinstance(policy, LabeledPolicy) and LABEL_COLUMN in policy.extra_columns()
    obs = np.random.default_rng(1).uniform(-0.2, 0.2, (4000, 4)).astype(np.float32)
    out = policy.compute_actions(obs)
    expert = ConfiguredPolicyFactory(PolicyConfig(kind="expert"), "CartPole-v1")(space, gym.spaces.Discrete(2))
    np.testing.assert_array_equal(out.extras[LABEL_COLUMN], expert.compute_actions(obs).actions)
    agree = (out.actions == out.extras[LABEL_COLUMN]).mean()
    assert abs(agree - (mix + (1 - mix) * 0.5)) < 0.04, "random agrees half the time; the critic's rows always"
