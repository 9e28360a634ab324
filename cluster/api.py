"""Harvest's Python API: the jobs of the `harvest` command as functions (`harvest.run`, ...).

    >>> import harvest
    >>> result = harvest.run("examples/cartpole_bc.yaml", overrides=["rollout.steps=5000"])
    >>> result.dataset().manifest.rows, result.evaluation["trained"]["mean_return"]

Each function starts a local Ray (or joins `ray.address`) unless Ray is already initialized in
this process, logs to the run's `harvest.log` as the command does, and shuts down the Ray it
started. Errors are raised (`ConfigError`, `RunFolderError`, `DatasetError`, ...), where the
command turns them into exit codes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

from loguru import logger

from harvest.cluster.config import ConfigError, RunConfig, apply_overrides, load_config, parse_config, resolve_paths
from harvest.cluster.logging import setup_logging

if TYPE_CHECKING:
    from harvest.aggregation.dataset import Dataset
    from harvest.aggregation.manifest import Manifest
    from harvest.cluster.live import LiveConfig
    from harvest.cluster.pipeline import RunSummary
    from harvest.cluster.run_folder import RunPaths
    from harvest.cluster.stages.evaluate import PolicySummary
    from harvest.envs.config import EnvConfig
    from harvest.learners.learner import TrainResult
    from harvest.rollout.evaluation import EvalResult
    from harvest.rollout.policies import Policy

ConfigLike = RunConfig | str | Path | Mapping[str, Any] | None
"""A run config: a YAML file's path, a dict of sections as in such a file, a `RunConfig`, or
None for the embedded default (CartPole behaviour cloning)."""

RunMode = Literal["new", "resume", "overwrite", "stage"]


def make_config(source: ConfigLike = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The validated `RunConfig` of `source` with `overrides` ("key.path=value", YAML values)
    applied; relative paths are made absolute against the current folder.

    Raises:
        ConfigError: the config or an override is invalid (the key named).
    """
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        return resolve_paths(
            parse_config(apply_overrides(source.to_dict(), list(overrides)), "<RunConfig> (with overrides)")
        )
    if isinstance(source, Mapping):
        data = apply_overrides(dict(source), list(overrides)) if overrides else dict(source)
        return resolve_paths(parse_config(data, "<dict>"))
    if source is not None and not isinstance(source, (str, Path)):
        raise ConfigError(f"config: expected a path, a dict or a RunConfig, got {type(source).__name__}")
    return load_config(source, list(overrides))


@dataclass(frozen=True)
class RunResult:
    """What a run (or `collect`) made: its folder and summary, and readers of its outputs."""

    run_id: str
    run_dir: Path
    summary: RunSummary

    @property
    def rows(self) -> int | None:
        """Rows in the run's dataset (None before compaction)."""
        return self.summary.dataset_rows

    @property
    def evaluation(self) -> dict[str, PolicySummary]:
        """Per policy (`trained`, `expert`, `random`, ...): mean_return, std_return, episodes (and
        win_rate, win_rate_ci95 where `eval.win_return` is set)."""
        return dict(self.summary.eval or {})

    @property
    def checkpoint(self) -> Path | None:
        """The trained policy's best checkpoint (None when nothing was trained)."""
        return Path(self.summary.train["best_checkpoint"]) if self.summary.train else None

    def dataset(self, verify: bool = True) -> Dataset:
        """The run's dataset (its folder, or its prefix in `aggregation.output`)."""
        from harvest.aggregation.dataset import Dataset
        from harvest.cluster.run_folder import RunPaths

        cfg = load_config(self.run_dir / "config.yaml")
        return Dataset.open(RunPaths(self.run_dir, cfg.aggregation.output).dataset, verify=verify)


@contextlib.contextmanager
def session(
    cfg: RunConfig, mode: RunMode = "new", command: str = "run", stage_overrides: Sequence[str] = ()
) -> Iterator[tuple[str, RunPaths]]:
    """The run's id and folder (claimed for `mode`), its log, and Ray while the block runs: a
    local Ray is started (or `ray.address` joined) unless this process has one, and shut down
    after the block if it was started here. The process's SIGTERM handler stays its own (Ray
    would replace it with one that aborts the process without unwinding)."""
    import ray

    from harvest.cluster import run_folder
    from harvest.cluster.local import init_ray, shutdown_ray

    check_before_ray(cfg)
    run_id, paths = run_folder.prepare_run(cfg, mode, command)
    setup_logging(cfg.run.log_level, paths.log)
    logger.info("run {} → {}", run_id, paths.root)
    if mode == "stage":
        run_folder.record_stage(paths.root, command, list(stage_overrides))
    started_ray = not ray.is_initialized()
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    init_ray(cfg.ray)
    if main_thread and sigterm is not None:  # Ray's core worker installs a SIGTERM handler that aborts the process
        signal.signal(signal.SIGTERM, sigterm)
    try:
        yield run_id, paths
    finally:
        if started_ray:
            shutdown_ray()
    logger.info("outputs in {}", paths.root)


def check_before_ray(cfg: RunConfig) -> None:
    """What can be checked in the driver is, before Ray starts (which takes seconds): the env ids."""
    from harvest.envs.registry import check_env_id
    from harvest.rollout.env_kinds import env_kind

    env_kind(cfg.env).check_env(cfg.env)
    if cfg.eval.env is not None:
        check_env_id(cfg.eval.env)


def run(
    config: ConfigLike = None,
    overrides: Sequence[str] = (),
    *,
    run_id: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    live: LiveConfig | None = None,
) -> RunResult:
    """Collect, compact, train and evaluate one run (`harvest run`); `resume` goes on with an
    interrupted run of the same `run.id`, `overwrite` replaces a run folder of that id."""
    from harvest.cluster import pipeline

    cfg = _with_run_id(make_config(config, overrides), run_id)
    with session(cfg, _mode(resume, overwrite), "run") as (run_id_, paths):
        summary = pipeline.run(cfg, run_id_, paths, live, resume)
    return RunResult(run_id_, paths.root, summary)


def collect(
    config: ConfigLike = None,
    overrides: Sequence[str] = (),
    *,
    run_id: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    live: LiveConfig | None = None,
) -> RunResult:
    """Collect into the replay and snapshot it into the run folder (`harvest collect`); `compact`
    turns the snapshot into the dataset later."""
    from harvest.cluster import pipeline

    cfg = _with_run_id(make_config(config, overrides), run_id)
    with session(cfg, _mode(resume, overwrite), "collect") as (run_id_, paths):
        summary = pipeline.collect_only(cfg, run_id_, paths, live, resume)
    return RunResult(run_id_, paths.root, summary)


def stage_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The config a stage (`compact`, `train`, `evaluate`) runs with: the run folder's own
    `config.yaml`, its id and output folder, then `overrides`."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"{config_path}: no such file; expected a run folder made by `harvest collect` or `harvest run`"
        )
    return load_config(config_path, [f"run.id={run_dir.name}", f"run.output_dir={run_dir.parent}", *overrides])


def compact(run_dir: str | Path, overrides: Sequence[str] = ()) -> Manifest:
    """Write the dataset of a collected run from its replay snapshot (`harvest compact`)."""
    from harvest.cluster.stages import compact as compact_stage

    cfg = stage_config(run_dir, overrides)
    with session(cfg, "stage", "compact", overrides) as (run_id, paths):
        return compact_stage.compact_snapshot(cfg, run_id, paths)


def train(run_dir: str | Path, overrides: Sequence[str] = (), *, verify: bool = True) -> TrainResult:
    """Train the run's learner (every stage of `learner.stages`) on its dataset (`harvest train`)."""
    from harvest.cluster.stages import train as train_stage

    overrides = [*overrides, *([] if verify else ["learner.verify_dataset=false"])]
    cfg = stage_config(run_dir, overrides)
    with session(cfg, "stage", "train", overrides) as (run_id, paths):
        return train_stage.train(cfg, paths, run_id)


def evaluate(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, EvalResult]:
    """Evaluate the run's trained policy beside its baselines (`harvest eval`)."""
    from harvest.cluster.stages import evaluate as evaluate_stage

    cfg = stage_config(run_dir, overrides)
    with session(cfg, "stage", "eval", overrides) as (run_id, paths):
        return evaluate_stage.evaluate(cfg, paths, run_id)


def load_policy(
    checkpoint: str | Path, env: str | EnvConfig | None = None, deterministic: bool = True, seed: int | None = None
) -> Policy:
    """A trained policy from a learner checkpoint (`learner/best.safetensors`), on the CPU:
    `policy.compute_actions(obs).actions` for a batch of observations of the env it learned.
    Given `env` (a Gymnasium id, "module:Class" or an `EnvConfig`), the checkpoint is first
    checked against that env's spaces, and a policy learned over an action set plays its Box
    actions.

    Raises:
        CheckpointError: the file is not a Harvest checkpoint, or its spaces are not `env`'s.
    """
    from harvest.envs.config import EnvConfig
    from harvest.learners.policy import load_torch_policy
    from harvest.rollout.policies import check_spaces, env_spaces

    action_space = None
    if env is not None:
        env_cfg = env if isinstance(env, EnvConfig) else EnvConfig(id=env)
        observation_space, action_space = env_spaces(env_cfg)
        check_spaces(checkpoint, env_cfg.id, observation_space, action_space)
    return load_torch_policy(str(checkpoint), deterministic=deterministic, seed=seed, env_action_space=action_space)


def _mode(resume: bool, overwrite: bool) -> RunMode:
    if resume and overwrite:
        raise ConfigError("resume and overwrite: a run either goes on or starts again, not both")
    return "resume" if resume else "overwrite" if overwrite else "new"


def _with_run_id(cfg: RunConfig, run_id: str | None) -> RunConfig:
    return cfg if run_id is None else make_config(cfg, [f"run.id={run_id}"])
