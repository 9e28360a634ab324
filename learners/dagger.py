"""DAgger's rounds: play → label → aggregate → retrain, after a first behaviour cloning.

Each round the current best policy plays `dagger.steps_per_round` steps in the simulators (a
fleet of the env kind's collectors) while the critic (the env's scripted expert) labels every
state it visits (`label_action`); those states with the critic's actions become a corrections
dataset (`source: correction`, the action the agent took kept as `agent_action`); the model is
then fine-tuned from its last checkpoint on the demonstrations plus every round's corrections,
at `dagger.lr` with corrections weighted `dagger.correction_weight`. With `dagger.critic:
person` the play is shown frame by frame in the review window instead and the person's labels
are the corrections. After the first BC and after every round the policy plays
`learner.eval.episodes` episodes (greedy, or sampled with `eval.deterministic: false`, as it
plays its rounds): `rounds.json` and `rounds.png` in the DAgger folder show whether the
corrections helped. `harvest dagger` (cluster/dagger.py) collects and clones first, then calls
`dagger_rounds`.
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

from harvest.aggregation.compact import compact_replay, write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.manifest import Manifest
from harvest.aggregation.storage import Location
from harvest.cluster.logging import console, wait_with_progress
from harvest.envs.config import EnvConfig
from harvest.envs.spaces import ColumnSpec
from harvest.learners.bc import BCLearner
from harvest.learners.config import DaggerConfig, LearnerConfig
from harvest.learners.learner import TrainResult
from harvest.learners.models import image_column
from harvest.learners.plots import plot_rounds
from harvest.learners.policy import load_torch_policy
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig, WatchdogConfig
from harvest.rollout.env_kinds import CollectorSetup, env_kind
from harvest.rollout.evaluation import evaluate_policies
from harvest.rollout.human.config import HumanConfig
from harvest.rollout.human.review import review_frames
from harvest.rollout.policies import LABEL_COLUMN, ConfiguredPolicyFactory
from harvest.rollout.replay.replay import Replay, start_replay


@dataclass(frozen=True)
class DaggerSetup:
    """What the rounds play, store, train and score with (a run config's sections)."""

    env: EnvConfig
    rollout: RolloutConfig
    replay: ReplayConfig
    aggregation: AggregationConfig
    watchdog: WatchdogConfig
    learner: LearnerConfig
    dagger: DaggerConfig
    human: HumanConfig | None
    deterministic: bool
    """The policy plays (and is scored by) its most likely action; false samples from it."""
    eval_workers: int
    """Rollout actors that play the scoring episodes."""
    seed: int
    run_id: str

    def __post_init__(self) -> None:
        if self.learner.eval.episodes < 1:
            raise ValueError("learner.eval.episodes: DAgger scores every round by evaluation; give at least 1")


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


def dagger_rounds(
    setup: DaggerSetup, demonstrations: Path | Location, checkpoint: str, folder: Path
) -> list[DaggerRound]:
    """Score the first BC's `checkpoint`, then `dagger.rounds` rounds of corrections, each in
    `folder/round-N/`; the rounds' scores, also written to `folder/rounds.json` and `rounds.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mean, std, returns = _scored(setup, checkpoint)
    rows = Dataset.open(demonstrations).manifest.rows
    rounds = [DaggerRound(0, checkpoint, 0, rows, mean, std, returns, time.perf_counter() - started)]
    logger.info("DAgger round 0 (BC on {:,} demonstration rows): return {:.1f} ± {:.1f}", rows, mean, std)
    datasets, weights = [str(demonstrations)], [1.0]
    for number in range(1, setup.dagger.rounds + 1):
        started = time.perf_counter()
        round_dir = folder / f"round-{number}"
        corrections = _corrections(setup, _played(setup, checkpoint, number, round_dir), round_dir, number)
        datasets.append(str(round_dir / "corrections"))
        weights.append(setup.dagger.correction_weight)
        checkpoint = _fine_tune(setup, datasets, weights, checkpoint, round_dir / "learner").best_checkpoint
        mean, std, returns = _scored(setup, checkpoint)
        rows += corrections.rows
        seconds = time.perf_counter() - started
        rounds.append(DaggerRound(number, checkpoint, corrections.rows, rows, mean, std, returns, seconds))
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
        f"DAgger on {setup.env.id} ({setup.dagger.critic} critic)",
    )
    return rounds


def _played(setup: DaggerSetup, checkpoint: str, number: int, round_dir: Path) -> Dataset:
    """Round `number`'s play: the policy (the critic driving a `beta` share of steps) plays
    `steps_per_round` steps through a fleet, the critic labelling each state; compacted to `play/`."""
    d, expert = setup.dagger, setup.dagger.critic == "expert"
    policy = PolicyConfig(
        kind="torch",
        checkpoint=checkpoint,
        deterministic=setup.deterministic,
        label_with="expert" if expert else None,
        label_mix=d.beta * d.beta_decay ** (number - 1) if expert else 0.0,
    )
    rollout = dataclasses.replace(setup.rollout, steps=d.steps_per_round, mode="step", policy=policy)
    run_id = f"{setup.run_id}-dagger-{number}"
    kind = env_kind(setup.env)
    factory = ConfiguredPolicyFactory(policy, setup.env.id, seed=setup.seed, load_torch=load_torch_policy)
    replay = start_replay(setup.replay, kind.schema(setup.env, factory))
    try:
        collectors = CollectorSetup(
            setup.env, rollout, ray.put(replay), run_id, setup.seed, round_dir, load_torch_policy
        )
        with kind.start_fleet(collectors, replay, setup.watchdog) as fleet:
            kind.fill(fleet, rollout)
        _compacted(setup, replay, round_dir / "play", run_id)
    finally:
        replay.kill()
    return Dataset.open(round_dir / "play")


def _compacted(setup: DaggerSetup, replay: Replay, out: Path, run_id: str) -> Manifest:
    """The play's rows as one Parquet dataset (no rotation, filter, partitions or other output)."""
    aggregation = dataclasses.replace(
        setup.aggregation, formats=["parquet"], output=None, rotate_every_s=None, filter=None, partition_by=[]
    )
    return compact_replay(list(replay.shards), replay.schema, out, aggregation, run_id, setup.env.id)


def _corrections(setup: DaggerSetup, play: Dataset, round_dir: Path, number: int) -> Manifest:
    out, run_id = round_dir / "corrections", f"{setup.run_id}-dagger-{number}"
    if setup.dagger.critic == "person":
        return reviewed_corrections(play, out, setup.human or HumanConfig(), setup.dagger.review_every, run_id)
    return corrections_from(play, out, run_id)


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


def _scored(setup: DaggerSetup, checkpoint: str) -> tuple[float, float, list[float]]:
    """Mean and spread of `learner.eval.episodes` returns of the checkpoint, and the returns."""
    episodes = setup.learner.eval.episodes
    policy = ConfiguredPolicyFactory(
        PolicyConfig(kind="torch", checkpoint=checkpoint, deterministic=setup.deterministic),
        setup.env.id,
        seed=setup.seed,
        load_torch=load_torch_policy,
    )
    with console.status(f"[bold]eval[/] {episodes} episodes"):
        result = evaluate_policies(
            {"policy": policy},
            setup.env,
            setup.rollout,
            episodes,
            setup.eval_workers,
            setup.run_id,
            seed=setup.seed + 10_000,
        )["policy"]
    return result.mean_return, result.std_return, result.returns


def _fine_tune(
    setup: DaggerSetup, datasets: list[str], weights: list[float], checkpoint: str, out_dir: Path
) -> TrainResult:
    """BC from `checkpoint` at `dagger.lr` for `dagger.epochs` on every dataset so far (weighted)."""
    d = setup.dagger
    learner_cfg = dataclasses.replace(
        setup.learner,
        stages=["bc"],
        lr=d.lr,
        bc=dataclasses.replace(setup.learner.bc, epochs=d.epochs),
        init_checkpoint=checkpoint,
    )
    learner = (
        ray.remote(BCLearner)
        .options(num_cpus=learner_cfg.num_cpus, num_gpus=learner_cfg.num_gpus, max_concurrency=2)
        .remote(learner_cfg, datasets, str(out_dir), weights)
    )
    rows = sum(Dataset.open(folder).manifest.rows for folder in datasets)
    try:
        (result,) = wait_with_progress(
            [learner.train.remote()],
            "train (DAgger)",
            "samples",
            int(rows * (1 - learner_cfg.bc.validation_fraction)) * d.epochs,
            poll=lambda: ray.get(learner.progress.remote(), timeout=30).samples,
            timeout_s=3600,
        )
    finally:
        ray.kill(learner, no_restart=True)
    return result


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
