"""The main path: `run()` is collect -> compact -> train -> evaluate, each a module of
`cluster/stages/`; `collect_and_compact`, `teleop` and `collect_only` are the shorter paths of
`harvest teleop` and `harvest collect`, and `RunSummary` what a run reports.

Every stage reads and writes the run folder `artifacts/<run-id>/`, so each also runs alone
(`harvest collect | compact | train | eval`) on the previous stage's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from loguru import logger

from harvest.aggregation.manifest import Manifest, has_manifest
from harvest.aggregation.rotate import Rotation
from harvest.aggregation.shard_rows import snapshot_replay
from harvest.cluster.config import RunConfig, dump_config
from harvest.cluster.live import LiveConfig
from harvest.cluster.logging import console, summary_table
from harvest.cluster.run_folder import RunPaths
from harvest.cluster.sessions import review_sessions
from harvest.cluster.stages.collect import CollectSummary, collect
from harvest.cluster.stages.compact import compact, finished_dataset
from harvest.cluster.stages.evaluate import PolicySummary, eval_summary, evaluate
from harvest.cluster.stages.train import train, train_summary
from harvest.rollout.config import EpisodeFilter
from harvest.rollout.human.config import HumanConfig
from harvest.rollout.replay.replay import Replay


@dataclass
class RunSummary:
    run_id: str
    run_dir: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    collect: CollectSummary | None = None
    dataset_rows: int | None = None
    dataset_episodes: int | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, PolicySummary] | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str))

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """`stage_seconds[stage]`: how long the block took."""
        started = time.perf_counter()
        yield
        self.stage_seconds[stage] = time.perf_counter() - started

    def reuse_dataset(self, paths: RunPaths) -> bool:
        """A resumed run whose dataset is complete: take its collect summary and dataset counts
        from before, and say so (False: the dataset must be collected and compacted)."""
        finished = finished_dataset(paths)
        if finished is None:
            return False
        logger.info("resuming: the dataset is complete ({:,} rows); training and evaluating", finished.rows)
        previous = json.loads(paths.summary.read_text()) if paths.summary.is_file() else {}
        self.stage_seconds = previous.get("stage_seconds", {})
        self.collect = CollectSummary(**previous["collect"]) if previous.get("collect") else None
        self.dataset_rows, self.dataset_episodes = finished.rows, finished.episodes
        return True


def run(
    cfg: RunConfig, run_id: str, paths: RunPaths, live: LiveConfig | None = None, resume: bool = False
) -> RunSummary:
    """Collect, compact, train and evaluate one run (applying config edits while it collects).
    With `resume`, an interrupted run goes on: a finished dataset is kept, a collection goes on
    from its durable shards, and training from the learner's last epoch."""
    summary = RunSummary(run_id, str(paths.root))
    if not (resume and summary.reuse_dataset(paths)):
        collect_and_compact(cfg, run_id, paths, summary, live, resume)
    with summary.timed("train"):
        summary.train = train_summary(train(cfg, paths, run_id, resume))
    with summary.timed("eval"):
        summary.eval = eval_summary(evaluate(cfg, paths, run_id), cfg.eval.win_return)
    summary.write(paths.summary)
    return summary


def collect_and_compact(
    cfg: RunConfig,
    run_id: str,
    paths: RunPaths,
    summary: RunSummary,
    live: LiveConfig | None = None,
    resume: bool = False,
) -> Manifest:
    """Fill the replay, then write the dataset (rotating it during the collection when
    `aggregation.rotate_every_s` says so); stage times and sizes go into `summary`."""
    timer = time.perf_counter()
    rotations: list[Rotation] = []

    # rotators keep their state beside the durable shards, which a resumed run needs anyway
    rotation_state = Path(cfg.replay.wal_dir).expanduser() / "rotation" if cfg.replay.wal_dir else None

    def rotating(replay: Replay) -> Rotation:  # rotation by time: the dataset grows while collecting
        rotations.append(
            Rotation(
                replay, paths.dataset, cfg.aggregation, run_id, cfg.env.id, state_dir=rotation_state, resume=resume
            )
        )
        return rotations[-1]

    if (
        resume
        and cfg.aggregation.rotate_every_s
        and has_manifest(paths.dataset)
        and (rotation_state is None or not any(rotation_state.glob("rotator-*.arrow")))
    ):
        raise RuntimeError(
            f"{paths.dataset}: its rotation had started writing the dataset, but no rotator state is "
            f"left to go on from (it lives in <replay.wal_dir>/rotation/; replay.wal_dir is "
            f"{cfg.replay.wal_dir}); run it again under a new id"
        )
    replay, summary.collect = collect(
        cfg, run_id, paths, during=rotating if cfg.aggregation.rotate_every_s else None, live=live, resume=resume
    )
    summary.stage_seconds["collect"] = time.perf_counter() - timer
    if live is not None:  # edits made while collecting (filters, collector count) hold from here on
        cfg = live.current
        paths.config.write_text(dump_config(cfg))
    discarded = review_sessions(cfg, summary.collect.human_sessions)
    if discarded:
        if rotations:
            logger.warning(
                "episodes {} were discarded after rotation wrote them; `harvest edit delete` removes "
                "them from the dataset",
                discarded,
            )
        else:
            criteria = cfg.aggregation.filter or EpisodeFilter()
            cfg = dataclasses.replace(
                cfg,
                aggregation=dataclasses.replace(
                    cfg.aggregation,
                    filter=dataclasses.replace(criteria, exclude_episodes=[*criteria.exclude_episodes, *discarded]),
                ),
            )
    try:
        timer = time.perf_counter()
        manifest = compact(
            list(replay.shards), replay.schema, cfg, run_id, paths, rotation=rotations[0] if rotations else None
        )
        summary.stage_seconds["compact"] = time.perf_counter() - timer
    finally:
        replay.kill()
    summary.dataset_rows, summary.dataset_episodes = manifest.rows, manifest.episodes
    return manifest


def teleop(cfg: RunConfig, run_id: str, paths: RunPaths) -> RunSummary:
    """`harvest teleop`: a person's session (and the simulators beside it) into the replay, then
    the dataset; train later with `harvest train <run>`."""
    if cfg.human is None:
        cfg = dataclasses.replace(cfg, human=HumanConfig())
    summary = RunSummary(run_id, str(paths.root))
    collect_and_compact(cfg, run_id, paths, summary)
    summary.write(paths.summary)
    return summary


def collect_only(
    cfg: RunConfig, run_id: str, paths: RunPaths, live: LiveConfig | None = None, resume: bool = False
) -> RunSummary:
    """`harvest collect`: fill the replay, then snapshot it to `replay/` for a later `harvest compact`."""
    if cfg.aggregation.rotate_every_s:
        logger.warning(
            "aggregation.rotate_every_s applies to `harvest run`; `harvest collect` snapshots the "
            "replay once, at the end"
        )
    summary = RunSummary(run_id, str(paths.root))
    timer = time.perf_counter()
    replay, summary.collect = collect(cfg, run_id, paths, live=live, resume=resume)
    if live is not None:
        paths.config.write_text(dump_config(live.current))
    try:
        with console.status("[bold]snapshot[/] writing the replay to Arrow IPC"):
            snapshot_replay(replay, paths.replay_snapshot)
    finally:
        replay.kill()
    summary.stage_seconds["collect"] = time.perf_counter() - timer
    summary.write(paths.summary)
    return summary


def print_summary(summary: RunSummary) -> None:
    rows: list[tuple[str, str]] = [("run", summary.run_id), ("outputs", summary.run_dir)]
    for stage, seconds in summary.stage_seconds.items():
        rows.append((f"{stage} time", f"{seconds:.1f} s"))
    if summary.collect:
        c = summary.collect
        rows.append(("collected", f"{c.rows:,} rows, {c.episodes} episodes, {c.rows_per_s:,.0f} rows/s"))
        if c.episode_return_mean is not None:
            rows.append(("collection return", f"{c.episode_return_mean:.1f} (mean)"))
        for session in c.human_sessions:
            returns = [episode["return"] for episode in session["episodes"]]
            rows.append(
                (
                    f"session {session['operator']}",
                    f"{session['frames']:,} frames, {len(returns)} episodes (return "
                    f"{np.mean(returns) if returns else float('nan'):.1f}), {session['achieved_fps']:.1f} FPS "
                    f"(target {session['target_fps']:.0f}, {session['late_frames']} late), ended by "
                    f"{session['ended_by']}",
                )
            )
            if session["session_folder"]:
                rows.append(("session folder", session["session_folder"]))
    if summary.dataset_rows is not None:
        rows.append(("dataset", f"{summary.dataset_rows:,} rows, {summary.dataset_episodes} episodes"))
    if summary.train:
        t = summary.train
        score = "n/a" if t["best_score"] is None else f"{t['best_score']:.4g}"
        accuracy = "" if t.get("validation_accuracy") is None else f", accuracy {t['validation_accuracy']:.3f}"
        rows.append(
            (
                "learner",
                f"{t['algorithm'].upper()}, best {t['step_name']} {t['best_step']}, "
                f"{t['score_name']} {score}{accuracy} on {t['device']}",
            )
        )
    if summary.eval:
        for name, result in summary.eval.items():
            wins = f", win rate {result['win_rate']:.0%}" if "win_rate" in result else ""
            rows.append(
                (
                    f"eval {name}",
                    f"{result['mean_return']:.2f} ± {result['std_return']:.2f} ({result['episodes']} episodes{wins})",
                )
            )
        if "expert" in summary.eval and "trained" in summary.eval and summary.eval["expert"]["mean_return"]:
            ratio = summary.eval["trained"]["mean_return"] / summary.eval["expert"]["mean_return"]
            rows.append(("trained / expert", f"{ratio:.1%}"))
    console.print(summary_table("Harvest run", rows))
