"""Env kinds: an env family registers what it brings, and the driver runs it without naming it.

`tests/custom_kind.py` is a family from outside the library (coin flips, with a collector of its
own, typed kwargs, its eval env and an expert baseline that is not a policy): `harvest run` on
it goes through every stage, and no module of `cluster/` had to change for it.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from harvest.cluster.config import ConfigError, load_config
from harvest.envs.config import EnvConfig
from harvest.rollout.env_kinds import EnvKind, env_kind, register_env_kind, unregister_env_kind
from tests.custom_kind import CoinKind

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("robocode", "generals", "car_racing", "carracing", "cartpole", "coin")
"""Names of env families (Harvest's own, and the test's): the driver's code names none of them."""
DRIVER = [
    REPO / "cluster" / name
    for name in ("pipeline.py", "api.py", "config.py", "run_folder.py", "live.py", "jobs.py", "local.py")
] + sorted((REPO / "cluster" / "stages").glob("*.py"))


@pytest.fixture()
def coin_kind():
    kind = register_env_kind(CoinKind())
    yield kind
    unregister_env_kind(kind)


def test_the_registered_kind_claims_its_env_and_gymnasium_the_rest(coin_kind):
    assert env_kind(EnvConfig(id="coin")) is coin_kind
    assert env_kind(EnvConfig(id="robocode")).name == "robocode"  # installed as an entry point
    assert type(env_kind(EnvConfig(id="CartPole-v1"))) is EnvKind


def test_a_kinds_typed_kwargs_are_checked_when_the_config_loads(coin_kind):
    with pytest.raises(ConfigError, match=r"env\.kwargs\.p_heads: Input should be less than or equal to 1"):
        load_config(None, ["env.id=coin", "env.kwargs={p_heads: 2}"])
    with pytest.raises(ConfigError, match=r"human: nobody flips coins by hand here"):
        load_config(None, ["env.id=coin", "human={}"])
    assert load_config(None, ["env.id=coin", "env.kwargs={p_heads: 0.7}"]).env.kwargs == {"p_heads": 0.7}


@pytest.mark.timeout(600)
def test_harvest_run_on_a_kind_registered_from_outside_the_library(ray_cluster, coin_kind, tmp_path):
    overrides = [
        "env.id=coin",
        "env.kwargs={p_heads: 0.9, episode_length: 8}",
        "rollout.num_collectors=2",
        "rollout.steps=4000",
        "rollout.batch_rows=512",
        "rollout.num_cpus=0.25",
        "replay.num_cpus=0.1",
        "aggregation.num_cpus=0.1",
        "learner.bc.epochs=3",
        "learner.hidden_sizes=[16]",
        "learner.num_cpus=0.5",
        "eval.episodes=20",
        "eval.num_workers=1",
        "eval.baselines=[expert, random]",
        f"run.output_dir={tmp_path}",
    ]
    assert main(["run", "--run-id", "coins", *sum((["--set", item] for item in overrides), [])]) == 0
    summary = json.loads((tmp_path / "coins" / "summary.json").read_text())
    dataset = Dataset.open(tmp_path / "coins" / "dataset")
    assert summary["collect"]["rows"] == dataset.manifest.rows >= 4000
    assert summary["collect"]["episodes"] == dataset.manifest.episodes == dataset.manifest.rows // 8
    assert sorted(dataset.manifest.collectors) == [0, 1]
    evaluation = summary["eval"]
    assert set(evaluation) == {"trained", "expert", "random"}
    # the clone guesses heads as the expert does; a random guess is right half the time
    assert evaluation["trained"]["mean_return"] > evaluation["random"]["mean_return"] + 1.5
    assert evaluation["expert"]["episodes"] == 20


def _driver_words(paths: list[Path]):
    """(path, line, text) of every name, attribute, import and string in `paths`' code; their
    documentation (docstrings and `help=` texts) aside."""
    for path in paths:
        tree = ast.parse(path.read_text())
        prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        prose |= {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "help"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                text = node.value
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                text = " ".join([getattr(node, "module", None) or "", *(alias.name for alias in node.names)])
            else:
                continue
            yield path, node.lineno, text


def test_the_driver_names_no_env_family():
    """Nothing in the driver's code names an env family: what differs between families is
    asked of their `EnvKind`."""
    found = []
    for path, line, text in _driver_words(DRIVER):
        hits = [family for family in FAMILIES if family in text.lower().replace("-", "_")]
        if hits:
            found.append(f"{path.relative_to(REPO)}:{line} names {hits}: {text[:80]!r}")
    assert not found, "\n".join(sorted(set(found)))


def test_the_driver_names_no_algorithm():
    """Nothing in the driver's code names a learning algorithm (as a word or a part of a
    snake_case or CamelCase name): what differs between them is asked of their `Learner` class
    in `learners.LEARNERS`, and their settings are their own config sections."""
    algorithm = re.compile(r"(?:^|[^a-z])(bc|dqfd|ppo)(?:[^a-z]|$)")
    found = []
    for path, line, text in _driver_words([*DRIVER, REPO / "cluster" / "sessions.py", REPO / "cluster" / "dagger.py"]):
        words = re.sub(r"([a-z])([A-Z])", r"\1_\2", text).replace("BCL", "BC_L").lower()
        hits = algorithm.findall(words)
        if hits:
            found.append(f"{path.relative_to(REPO)}:{line} names {sorted(set(hits))}: {text[:80]!r}")
    assert not found, "\n".join(sorted(set(found)))
