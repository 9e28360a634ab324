"""Evaluation scenarios (env kwargs merged per scenario), win rates and their intervals, without Ray."""

import numpy as np

from harvest.cluster.config import load_config
from harvest.cluster.stages.evaluate import merge_kwargs, win_rate
from harvest.rollout.evaluation import EvalResult


def test_scenario_overrides_merge_nested_env_kwargs():
    base = {"players": "both", "map": {"min_size": 8, "max_size": 10}, "rewards": {"win": 1.0, "city": 0.1}}
    merged = merge_kwargs(base, {"players": "first", "rewards": {"city": 0.0}})
    assert merged == {"players": "first", "map": {"min_size": 8, "max_size": 10}, "rewards": {"win": 1.0, "city": 0.0}}
    assert base["rewards"]["city"] == 0.1, "the run's own kwargs are left alone"


def test_win_rate_counts_returns_at_or_above_the_threshold():
    result = EvalResult("trained", [1.0, -1.0, 0.0, 1.0], [10, 10, 10, 10])
    assert win_rate(result, 1.0)["win_rate"] == 0.5
    assert win_rate(result, None) == {}


def test_the_generals_example_config_validates():
    cfg = load_config("examples/generals_bc.yaml", [])
    assert cfg.env.id == "generals" and cfg.learner.model == "cnn"
    assert set(cfg.eval.scenarios) == {"vs_random", "vs_expert"} and cfg.eval.win_return == 1.0


def test_eval_reports_confidence_intervals_for_means_and_win_rates():
    import pytest
    from rich.console import Console

    from harvest.cluster.stages.evaluate import eval_table
    from harvest.rollout.evaluation import wilson_interval

    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))  # 0 wins is not "certainly 0 %"
    assert wilson_interval(5, 10) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(20, 20)[1] == 1.0
    result = EvalResult("trained", [1.0, 0.0, 1.0, 1.0, -1.0, 1.0, 1.0, 0.0], [10] * 8)
    low, high = result.mean_ci95
    half = 1.96 * np.std(result.returns, ddof=1) / np.sqrt(8)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    wins = win_rate(result, win_return=1.0)
    assert wins["win_rate"] == 0.625 and wins["win_rate_ci95"] == list(wilson_interval(5, 8))
    console = Console(record=True, width=140)
    console.print(eval_table({"trained": result}, win_return=1.0))
    text = console.export_text()
    assert "0.50 ± 0.71" in text and f"[{low:.2f}, {high:.2f}]" in text and "62% [31%, 86%]" in text
