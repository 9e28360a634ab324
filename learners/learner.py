"""The learners' contract: what every algorithm gives the driver, and the parts they share.

A learner is a plain class that Ray runs as an actor (`Learner`): the driver builds it from
the run (`actor_args`), shows a progress bar over its own work (`work`: a total and its unit),
polls `progress()` from another thread while `train()` runs, and gets an algorithm-neutral
`TrainResult` back. Every learner writes the same outputs into its folder (`LearnerOutputs`):
`best.safetensors`, `final.safetensors`, `training_history.json`, `training_curve.png` and
TensorBoard events. `learners.LEARNERS` names them: `{"bc": BCLearner, "dqfd": DQfDLearner,
"ppo": PPOLearner}`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from harvest.learners.plots import plot_training_curve
from harvest.learners.records import TrainingRecorder

if TYPE_CHECKING:
    from harvest.aggregation.storage import Location
    from harvest.envs.config import EnvConfig
    from harvest.learners.config import LearnerConfig

HISTORY_NAME = "training_history.json"
BEST_NAME = "best.safetensors"
FINAL_NAME = "final.safetensors"
CURVE_NAME = "training_curve.png"


@dataclass
class TrainProgress:
    """Where a learner is: `epoch` of `epochs` (its steps: epochs, updates or iterations) and
    `samples`, the work done in the unit of its `work()` (samples, updates or env steps)."""

    epoch: int
    epochs: int
    samples: int
    train_loss: float | None


class LearnerProgress:
    """A learner's `TrainProgress`, updated by `train()` and read from another thread."""

    def __init__(self, steps: int) -> None:
        self._progress = TrainProgress(0, steps, 0, None)
        self._lock = threading.Lock()

    def update(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._progress, name, value)

    def add_samples(self, count: int) -> None:
        with self._lock:
            self._progress.samples += count

    def snapshot(self) -> TrainProgress:
        with self._lock:
            return TrainProgress(**asdict(self._progress))


@dataclass
class TrainResult:
    """What any learner's `train()` returns; `summary()` is what the run's summary shows."""

    algorithm: str
    best_checkpoint: str
    final_checkpoint: str
    history_path: str
    best_step: int
    """The epoch, update or iteration (`step_name`) whose weights are the best checkpoint."""
    step_name: str
    best_score: float | None
    """What chose the best checkpoint (`score_name`): a validation loss, or an evaluation return."""
    score_name: str
    device: str
    trained_on: int
    """Rows trained on (BC: the training split; DQfD: the demonstrations) or env steps (PPO)."""
    history: list[Any] = field(default_factory=list)
    """The learner's own records (BC: an `EpochRecord` per epoch)."""
    details: dict[str, Any] = field(default_factory=dict)
    """The summary's algorithm-specific entries (e.g. BC's `validation_accuracy`)."""
    node_id: str = ""
    """The Ray node the learner ran on (set by the driver)."""

    def describe(self) -> str:
        score = "n/a" if self.best_score is None else f"{self.best_score:.4g}"
        return (
            f"best checkpoint ({self.algorithm}): {self.step_name} {self.best_step} ({self.score_name} {score}) "
            f"on {self.device}"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "best_checkpoint": self.best_checkpoint,
            "best_step": self.best_step,
            "step_name": self.step_name,
            "best_score": self.best_score,
            "score_name": self.score_name,
            "device": self.device,
            "trained_on": self.trained_on,
            "node": self.node_id,
            **self.details,
        }

    def moved(self, folder: Path) -> "TrainResult":
        """The same result with its outputs' paths in `folder` (the last stage's copied up)."""
        return dataclasses.replace(
            self,
            best_checkpoint=str(folder / BEST_NAME),
            final_checkpoint=str(folder / FINAL_NAME),
            history_path=str(folder / HISTORY_NAME),
        )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_accuracy: float | None
    samples_per_s: float
    seconds: float


def split_by_episode(episode_ids: np.ndarray, validation_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole episodes, about `validation_fraction` of them."""
    unique_ids = np.unique(episode_ids)
    if validation_fraction == 0 or unique_ids.size < 2:
        return np.zeros(episode_ids.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    num_validation = min(unique_ids.size - 1, max(1, round(validation_fraction * unique_ids.size)))
    validation_ids = rng.choice(unique_ids, size=num_validation, replace=False)
    return np.isin(episode_ids, validation_ids)


def epochs_result(
    algorithm: str,
    out_dir: Path,
    history: list[EpochRecord],
    best_epoch: int,
    train_rows: int,
    validation_rows: int,
    device: str,
) -> TrainResult:
    """A supervised stage's result (outputs in `out_dir`, records by epoch): the best epoch by
    validation loss, its accuracy and speed in the summary."""
    best = history[best_epoch - 1]
    return TrainResult(
        algorithm,
        str(out_dir / BEST_NAME),
        str(out_dir / FINAL_NAME),
        str(out_dir / HISTORY_NAME),
        best_epoch,
        "epoch",
        best.validation_loss,
        "validation loss",
        device,
        train_rows,
        history,
        {
            "best_epoch": best_epoch,
            "best_validation_loss": best.validation_loss,
            "validation_accuracy": best.validation_accuracy,
            "train_rows": train_rows,
            "validation_rows": validation_rows,
            "samples_per_s": best.samples_per_s,
        },
    )


def starting_from(cfg: LearnerConfig, previous: str | None) -> LearnerConfig:
    """`cfg` with `init_checkpoint` set to `previous` (the stage before's best checkpoint)."""
    return dataclasses.replace(cfg, init_checkpoint=previous) if previous else cfg


def check_starting_checkpoint(cfg: LearnerConfig, env: EnvConfig | None) -> None:
    """`learner.init_checkpoint` against the env it plays (with `learner.env_kwargs` over the
    env's): another env's checkpoint is one line (`CheckpointSpaceError`)."""
    if cfg.init_checkpoint and env is not None:
        from harvest.rollout.policies import check_checkpoint_spaces

        check_checkpoint_spaces(cfg.init_checkpoint, dataclasses.replace(env, kwargs={**env.kwargs, **cfg.env_kwargs}))


class LearnerOutputs:
    """The files of one training stage in `out_dir`: checkpoints, history, curve, TensorBoard."""

    def __init__(self, out_dir: str | Path, algorithm: str) -> None:
        self.out_dir, self.algorithm = Path(out_dir), algorithm
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.recorder = TrainingRecorder(self.out_dir, algorithm)

    @property
    def best(self) -> Path:
        return self.out_dir / BEST_NAME

    @property
    def final(self) -> Path:
        return self.out_dir / FINAL_NAME

    @property
    def history(self) -> Path:
        return self.out_dir / HISTORY_NAME

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        self.recorder.scalars(step, values)

    def finish(self, history: dict[str, Any], curve: Sequence[dict], title: str, **plot: Any) -> Path:
        """Write the history JSON and the curve PNG (`plot_training_curve(curve, ..., **plot)`), close TensorBoard."""
        self.recorder.close()
        self.history.write_text(json.dumps(history, indent=2))
        plot_training_curve(curve, self.out_dir / CURVE_NAME, title, **plot)
        return self.history


class Learner(Protocol):
    """What the driver asks of a learner class (`learners.LEARNERS`) and of its actor."""

    algorithm: str

    @classmethod
    def actor_args(
        cls, cfg: LearnerConfig, env: EnvConfig, dataset: Location, out_dir: str, run_id: str
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor's arguments for a stage of a run: the learner config, the run's env,
        its dataset, the stage's folder."""

    @classmethod
    def work(cls, cfg: LearnerConfig, dataset: Location) -> tuple[int, str]:
        """The total of its progress bar and the unit (`samples`, `updates`, `env steps`)."""

    @classmethod
    def after_stage(cls, cfg: LearnerConfig, previous: str | None) -> LearnerConfig:
        """Its config as a stage after another whose best checkpoint is `previous`."""

    @classmethod
    def check(cls, cfg: LearnerConfig, env: EnvConfig | None) -> None:
        """What can be checked in the driver before the actor starts (e.g. a starting
        checkpoint against the env it plays, None where learners cannot play the run's env)."""

    @classmethod
    def train_without_actor(cls, cfg: LearnerConfig, dataset: Location, out_dir: str) -> TrainResult | None:
        """A result when the stage trains another way (BC data-parallel on Ray Train); None: as an actor."""

    def progress(self) -> TrainProgress: ...

    def train(self) -> TrainResult: ...
