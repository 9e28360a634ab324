"""`harvest dagger`: behaviour cloning, then rounds of play → label → aggregate → retrain.

Round 0 is the run's own collection (the expert's or a person's demonstrations) and a BC
learner on it. Each round the current best policy plays `dagger.steps_per_round` steps in the
simulators while the critic (the env's scripted expert) labels every state it visits
(`label_action`); those states with the critic's actions become a corrections dataset
(`source: correction`, the action the agent took kept as `agent_action`); the model is then
fine-tuned from its last checkpoint on the demonstrations plus every round's corrections, at
`dagger.lr` with corrections weighted `dagger.correction_weight`. With `dagger.critic: person`
the play is shown frame by frame in the review window instead and the person's labels are the
corrections. After BC and after every
round the policy plays `dagger.eval_episodes` episodes (greedy, or sampled with `eval.deterministic:
false`, as it plays its rounds): `<run>/dagger/rounds.json`, a
table and `rounds.png` show whether the corrections helped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
from loguru import logger
from rich.table import Table

from harvest.aggregation.compact import compact_replay, write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.manifest import Manifest
from harvest.cluster.config import RunConfig
from harvest.cluster.logging import console, wait_with_progress
from harvest.cluster.pipeline import RunSummary, collect_and_compact
from harvest.cluster.run_folder import RunPaths
from harvest.cluster.stages.collect import collect
from harvest.cluster.stages.train import train
from harvest.envs.spaces import ColumnSpec
from harvest.learners.bc import BCLearner
from harvest.learners.learner import TrainResult
from harvest.learners.models import image_column
from harvest.learners.plots import plot_rounds
from harvest.learners.policy import load_torch_policy
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import PolicyConfig
from harvest.rollout.evaluation import evaluate_policies
from harvest.rollout.human.config import HumanConfig
from harvest.rollout.human.review import review_frames
from harvest.rollout.policies import LABEL_COLUMN, ConfiguredPolicyFactory


@dataclass
class DaggerRound:
    round: int
    checkpoint: str
    corrections: int
    """Correction rows added this round (0 for the first BC)."""
    training_rows: int
    """Demonstration and correction rows the round trained on."""
    mean_return: float
    std_return: float
    returns: list[float]
    seconds: float


def corrections_from(play: Dataset, out: Path, run_id: str) -> Manifest:
    """The states `play` visited with the critic's actions (`label_action`) as the actions: a
    dataset of `source: correction` rows, the agent's own action kept as `agent_action`."""
    if LABEL_COLUMN not in play.schema.columns:
        raise ValueError(f"{play.folder}: no {LABEL_COLUMN!r} column; the play was not labelled by a critic")
    columns = play.read_columns([*_core(play).columns, LABEL_COLUMN])
    return _write_corrections(play, columns, columns.pop(LABEL_COLUMN), out, run_id)


def reviewed_corrections(play: Dataset, out: Path, human: HumanConfig, every: int, run_id: str) -> Manifest:
    """A person reviews every `every`-th frame of `play` in the review window; the frames they
    labelled, with their actions, as a corrections dataset (as `corrections_from`)."""
    columns = play.read_columns(list(_core(play).columns))
    shown = np.arange(0, len(columns["episode_id"]), every)
    image = image_column(play.schema.observation_space)
    frames = columns[image][shown] if image is not None else columns[play.schema.obs_columns[0]][shown]
    review = review_frames(frames, columns["action"][shown], play.schema.action_space, human)
    logger.info(
        "review: {} frames labelled, {} skipped (the agent was right){}",
        len(review.labels),
        review.skipped,
        ", ended early" if review.ended_early else "",
    )
    picked = shown[sorted(review.labels)]
    kept = {name: column[picked] for name, column in columns.items()}
    labels = np.asarray([review.labels[index] for index in sorted(review.labels)])
    return _write_corrections(play, kept, labels.reshape((len(picked), *columns["action"].shape[1:])), out, run_id)


def _core(play: Dataset) -> BatchSchema:
    return BatchSchema.for_spaces(play.schema.observation_space, play.schema.action_space)


def _write_corrections(
    play: Dataset, columns: dict[str, np.ndarray], labels: np.ndarray, out: Path, run_id: str
) -> Manifest:
    schema = play.schema
    columns = dict(columns)
    columns["agent_action"], columns["action"] = columns["action"], labels.astype(columns["action"].dtype)
    columns["source"] = np.full(len(labels), "correction", dtype=object)
    corrected = BatchSchema.for_spaces(
        schema.observation_space,
        schema.action_space,
        extras={"source": ColumnSpec(object, ()), "agent_action": _core(play).columns["action"]},
    )
    return write_dataset(
        [TransitionBatch(columns)],
        corrected,
        out,
        AggregationConfig(formats=["parquet"]),
        run_id=run_id,
        env_id=play.manifest.env_id,
        parents=[str(play.folder)],
    )


def _scored(cfg: RunConfig, checkpoint: str, run_id: str, episodes: int) -> tuple[float, float, list[float]]:
    policy = ConfiguredPolicyFactory(
        PolicyConfig(kind="torch", checkpoint=checkpoint, deterministic=cfg.eval.deterministic),
        cfg.env.id,
        seed=cfg.run.seed,
        load_torch=load_torch_policy,
    )
    with console.status(f"[bold]eval[/] {episodes} episodes"):
        result = evaluate_policies(
            {"policy": policy}, cfg.env, cfg.rollout, episodes, cfg.eval.num_workers, run_id, seed=cfg.run.seed + 10_000
        )["policy"]
    return result.mean_return, result.std_return, result.returns


def _fine_tune(
    cfg: RunConfig, datasets: list[Path | str], weights: list[float], checkpoint: str, out_dir: Path
) -> TrainResult:
    d = cfg.learner.dagger
    learner_cfg = dataclasses.replace(
        cfg.learner, algorithm="bc", stages=[], lr=d.lr, epochs=d.epochs, init_checkpoint=checkpoint
    )
    learner = (
        ray.remote(BCLearner)
        .options(num_cpus=learner_cfg.num_cpus, num_gpus=learner_cfg.num_gpus, max_concurrency=2)
        .remote(learner_cfg, [str(p) for p in datasets], str(out_dir), weights)
    )
    rows = sum(Dataset.open(folder).manifest.rows for folder in datasets)
    try:
        (result,) = wait_with_progress(
            [learner.train.remote()],
            "train (DAgger)",
            "samples",
            int(rows * (1 - learner_cfg.validation_fraction)) * d.epochs,
            poll=lambda: ray.get(learner.progress.remote(), timeout=30).samples,
            timeout_s=3600,
        )
    finally:
        ray.kill(learner, no_restart=True)
    return result


def dagger(cfg: RunConfig, run_id: str, paths: RunPaths) -> list[DaggerRound]:
    """Demonstrations, BC, then `learner.dagger.rounds` rounds of corrections; the rounds' scores."""
    d = cfg.learner.dagger
    folder = paths.root / "dagger"
    folder.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_id, str(paths.root))
    collect_and_compact(cfg, run_id, paths, summary)
    started = time.perf_counter()
    checkpoint = train(cfg, paths, run_id).best_checkpoint
    mean, std, returns = _scored(cfg, checkpoint, run_id, d.eval_episodes)
    rows = Dataset.open(paths.dataset).manifest.rows
    rounds = [DaggerRound(0, checkpoint, 0, rows, mean, std, returns, time.perf_counter() - started)]
    logger.info("DAgger round 0 (BC on {:,} demonstration rows): return {:.1f} ± {:.1f}", rows, mean, std)
    datasets: list[Path | str] = [str(paths.dataset)]
    weights = [1.0]
    play_aggregation = dataclasses.replace(
        cfg.aggregation, formats=["parquet"], output=None, rotate_every_s=None, filter=None, partition_by=[]
    )
    for number in range(1, d.rounds + 1):
        started = time.perf_counter()
        round_dir = folder / f"round-{number}"
        play_cfg = dataclasses.replace(
            cfg,
            human=None,
            aggregation=play_aggregation,
            rollout=dataclasses.replace(
                cfg.rollout,
                steps=d.steps_per_round,
                mode="step",
                policy=PolicyConfig(
                    kind="torch",
                    checkpoint=checkpoint,
                    deterministic=cfg.eval.deterministic,
                    label_with="expert" if d.critic == "expert" else None,
                    label_mix=d.beta * d.beta_decay ** (number - 1) if d.critic == "expert" else 0.0,
                ),
            ),
        )
        replay, _ = collect(play_cfg, f"{run_id}-dagger-{number}", RunPaths(round_dir))
        try:
            compact_replay(
                list(replay.shards),
                replay.schema,
                round_dir / "play",
                play_aggregation,
                f"{run_id}-dagger-{number}",
                cfg.env.id,
            )
        finally:
            replay.kill()
        play = Dataset.open(round_dir / "play")
        if d.critic == "person":
            corrections = reviewed_corrections(
                play, round_dir / "corrections", cfg.human or HumanConfig(), d.review_every, f"{run_id}-dagger-{number}"
            )
        else:
            corrections = corrections_from(play, round_dir / "corrections", f"{run_id}-dagger-{number}")
        datasets.append(str(round_dir / "corrections"))
        weights.append(d.correction_weight)
        result = _fine_tune(cfg, datasets, weights, checkpoint, round_dir / "learner")
        checkpoint = result.best_checkpoint
        mean, std, returns = _scored(cfg, checkpoint, run_id, d.eval_episodes)
        rows += corrections.rows
        rounds.append(
            DaggerRound(number, checkpoint, corrections.rows, rows, mean, std, returns, time.perf_counter() - started)
        )
        logger.info(
            "DAgger round {}: {:,} corrections ({}), return {:.1f} ± {:.1f}",
            number,
            corrections.rows,
            _disagreement(round_dir / "corrections"),
            mean,
            std,
        )
    (folder / "rounds.json").write_text(json.dumps([dataclasses.asdict(r) for r in rounds], indent=2))
    plot_rounds(
        folder / "rounds.png",
        [(r.round, r.mean_return, r.std_return) for r in rounds],
        f"DAgger on {cfg.env.id} ({d.critic} critic)",
    )
    console.print(rounds_table(rounds))
    return rounds


def _disagreement(corrections: Path) -> str:
    """How far the critic's labels are from what the agent did: the share of differing actions
    (Discrete), or the mean absolute difference per action component (Box)."""
    dataset = Dataset.open(corrections)
    columns = dataset.read_columns(["action", "agent_action"])
    label, agent = np.asarray(columns["action"]), np.asarray(columns["agent_action"])
    if not len(label):
        return "no rows"
    if isinstance(dataset.schema.action_space, gym.spaces.Box):
        return "mean |label - action| " + str(
            np.round(np.abs(label - agent).reshape(len(label), -1).mean(0), 3).tolist()
        )
    return f"the critic disagreed on {(label != agent).reshape(len(label), -1).any(-1).mean():.0%}"


def rounds_table(rounds: list[DaggerRound]) -> Table:
    table = Table(title="DAgger", title_justify="left")
    for column in ("round", "corrections", "training rows", "return mean ± std", "time"):
        table.add_column(column, justify="right")
    for r in rounds:
        table.add_row(
            "BC" if r.round == 0 else str(r.round),
            f"{r.corrections:,}",
            f"{r.training_rows:,}",
            f"{r.mean_return:.1f} ± {r.std_return:.1f}",
            f"{r.seconds:.0f} s",
        )
    return table
