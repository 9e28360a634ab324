"""Evaluation scenarios (env kwargs merged per scenario) and win rates, without Ray."""

from cluster.config import load_config
from cluster.pipeline import _merged, _win_rate
from rollout.evaluation import EvalResult


def test_scenario_overrides_merge_nested_env_kwargs():
    base = {"players": "both", "map": {"min_size": 8, "max_size": 10}, "rewards": {"win": 1.0, "city": 0.1}}
    merged = _merged(base, {"players": "first", "rewards": {"city": 0.0}})
    assert merged == {"players": "first", "map": {"min_size": 8, "max_size": 10},
                      "rewards": {"win": 1.0, "city": 0.0}}
    assert base["rewards"]["city"] == 0.1, "the run's own kwargs are left alone"


def test_win_rate_counts_returns_at_or_above_the_threshold():
    result = EvalResult("trained", [1.0, -1.0, 0.0, 1.0], [10, 10, 10, 10])
    assert _win_rate(result, 1.0) == {"win_rate": 0.5}
    assert _win_rate(result, None) == {}


def test_the_generals_example_config_validates():
    cfg = load_config("examples/generals_bc.yaml", [])
    assert cfg.env.id == "generals" and cfg.learner.model == "cnn"
    assert set(cfg.eval.scenarios) == {"vs_random", "vs_expert"} and cfg.eval.win_return == 1.0
