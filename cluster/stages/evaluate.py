"""The evaluate stage: the trained policy, earlier stages' and the baselines, in every scenario."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypedDict

import numpy as np
from loguru import logger
from rich.table import Table

from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console
from harvest.cluster.run_folder import RunPaths
from harvest.learners.policy import load_torch_policy
from harvest.rollout.config import PolicyConfig
from harvest.rollout.env_kinds import env_kind
from harvest.rollout.evaluation import EvalResult, evaluate_policies, wilson_interval
from harvest.rollout.policies import ConfiguredPolicyFactory, PolicyFactory


class WinRate(TypedDict, total=False):
    """Where `eval.win_return` defines a win: the share of episodes won and its 95 % (Wilson) interval."""

    win_rate: float
    win_rate_ci95: list[float]


class PolicySummary(WinRate):
    """One policy's line in the run summary."""

    mean_return: float
    std_return: float
    episodes: int


def evaluate(cfg: RunConfig, paths: RunPaths, run_id: str) -> dict[str, EvalResult]:
    """Play the trained policy and the baselines for `eval.episodes` episodes each (in every
    `eval.scenarios` entry, if there are any). With several `learner.stages`, each earlier
    stage's checkpoint plays too (as `1-bc`, ...), so the table shows what every stage added."""
    checkpoint = paths.learner / f"{cfg.eval.checkpoint}.safetensors"
    kind = env_kind(cfg.env)
    eval_env = kind.eval_env(cfg.env, cfg.eval.env, cfg.run.seed)
    own_expert = kind.own_expert and "expert" in cfg.eval.baselines
    checkpoints = {"trained": checkpoint}
    for index, stage in enumerate(cfg.learner.stages[:-1], 1):
        stage_checkpoint = paths.learner / f"{index}-{stage}" / f"{cfg.eval.checkpoint}.safetensors"
        if stage_checkpoint.is_file():
            checkpoints[f"{index}-{stage}"] = stage_checkpoint
    policies: dict[str, PolicyFactory] = {
        name: ConfiguredPolicyFactory(
            PolicyConfig(kind="torch", checkpoint=str(path.resolve()), deterministic=cfg.eval.deterministic),
            eval_env.id,
            seed=cfg.run.seed,
            load_torch=load_torch_policy,
        )
        for name, path in checkpoints.items()
    }
    for baseline in cfg.eval.baselines:
        if not (own_expert and baseline == "expert"):
            policies[baseline] = ConfiguredPolicyFactory(PolicyConfig(kind=baseline), eval_env.id, seed=cfg.run.seed)
    scenarios = {
        name: dataclasses.replace(eval_env, kwargs=merge_kwargs(eval_env.kwargs, overrides))
        for name, overrides in cfg.eval.scenarios.items()
    } or {"": eval_env}
    results: dict[str, EvalResult] = {}
    for scenario, env_cfg in scenarios.items():
        where = f" {scenario}" if scenario else ""
        with console.status(f"[bold]eval{where}[/] {cfg.eval.episodes} episodes x {len(policies)} policies"):
            scenario_results = evaluate_policies(
                policies,
                env_cfg,
                cfg.rollout,
                cfg.eval.episodes,
                cfg.eval.num_workers,
                run_id,
                seed=cfg.run.seed + 10_000,
            )
            if own_expert:
                scenario_results["expert"] = kind.expert_baseline(
                    cfg.env,
                    env_cfg,
                    cfg.eval.episodes,
                    cfg.eval.num_workers,
                    cfg.run.seed,
                    cfg.rollout.num_cpus,
                    paths.root,
                )
        results.update(
            {f"{name}{' @ ' + scenario if scenario else ''}": result for name, result in scenario_results.items()}
        )
    report = {
        name: {
            "mean_return": r.mean_return,
            "std_return": r.std_return,
            "mean_return_ci95": list(r.mean_ci95),
            "mean_length": r.mean_length,
            "returns": r.returns,
            **win_rate(r, cfg.eval.win_return),
        }
        for name, r in results.items()
    }
    paths.eval.write_text(json.dumps(report, indent=2))
    for name, result in results.items():
        wins = win_rate(result, cfg.eval.win_return)
        logger.info(
            "eval {}: return {:.2f} ± {:.2f} over {} episodes{}",
            name,
            result.mean_return,
            result.std_return,
            len(result.returns),
            f", win rate {wins['win_rate']:.0%}" if wins else "",
        )
    console.print(eval_table(results, cfg.eval.win_return))
    return results


def merge_kwargs(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, nested dicts key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            merge_kwargs(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def win_rate(result: EvalResult, win_return: float | None) -> WinRate:
    if win_return is None or not result.returns:
        return {}
    wins = int(np.sum(np.asarray(result.returns) >= win_return))
    low, high = wilson_interval(wins, len(result.returns))
    return {"win_rate": wins / len(result.returns), "win_rate_ci95": [low, high]}


def eval_table(results: dict[str, EvalResult], win_return: float | None) -> Table:
    """Policies by rows: episodes, mean ± std, the mean's 95 % interval, and the win rate with
    its 95 % (Wilson) interval where `eval.win_return` defines a win."""
    table = Table(title="Evaluation", title_justify="left")
    for column in (
        "policy",
        "episodes",
        "return mean ± std",
        "95 % CI of the mean",
        *(["win rate [95 % CI]"] if win_return is not None else []),
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, result in results.items():
        low, high = result.mean_ci95
        row = [
            name,
            str(len(result.returns)),
            f"{result.mean_return:.2f} ± {result.std_return:.2f}",
            f"[{low:.2f}, {high:.2f}]",
        ]
        if win_return is not None:
            wins = win_rate(result, win_return)
            row.append(
                f"{wins['win_rate']:.0%} [{wins['win_rate_ci95'][0]:.0%}, {wins['win_rate_ci95'][1]:.0%}]"
                if wins
                else "-"
            )
        table.add_row(*row)
    return table


def eval_summary(results: dict[str, EvalResult], win_return: float | None = None) -> dict[str, PolicySummary]:
    return {
        name: {
            "mean_return": r.mean_return,
            "std_return": r.std_return,
            "episodes": len(r.returns),
            **win_rate(r, win_return),
        }
        for name, r in results.items()
    }
