"""Behaviour cloning: fit a policy network to the actions in a dataset.

`BCLearner` is a plain class; `cluster` runs it as an actor (with a GPU when the config
asks for one). Reading: pyarrow streams only the observation, action and episode columns
into memory, then every epoch shuffles the training rows into minibatches on the device.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from loguru import logger
from torch import nn

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.storage import Location
from harvest.cluster import metrics
from harvest.learners.checkpoint import load_checkpoint, save_checkpoint
from harvest.learners.resume import LAST_NAME, load_training_state, resumable, save_training_state, training_owner
from harvest.envs.action_sets import resolve_action_set
from harvest.learners.action_sets import action_set_info, map_to_action_set
from harvest.learners.augment import augment_images
from harvest.learners.config import AugmentConfig, LearnerConfig
from harvest.learners.models import ConvPolicyModel, PolicyModel, build_policy_model, image_column, resolve_model_spec
from harvest.learners.plots import plot_training_curve
from harvest.learners.precision import Precision
from harvest.learners.records import TrainingRecorder

HISTORY_NAME = "training_history.json"
BEST_NAME = "best.safetensors"
FINAL_NAME = "final.safetensors"
CURVE_NAME = "training_curve.png"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_accuracy: float | None
    samples_per_s: float
    seconds: float


@dataclass
class TrainResult:
    best_checkpoint: str
    final_checkpoint: str
    history_path: str
    best_epoch: int
    best_validation_loss: float
    train_rows: int
    validation_rows: int
    device: str
    history: list[EpochRecord]
    algorithm: str = "bc"
    best_eval_return: float | None = None
    """DQfD: the best checkpoint's greedy evaluation return during training (it picks the best)."""
    node_id: str = ""
    """The Ray node the learner ran on (set by the pipeline)."""


@dataclass
class TrainProgress:
    epoch: int
    epochs: int
    samples: int
    train_loss: float | None


def split_by_episode(episode_ids: np.ndarray, validation_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole episodes, about `validation_fraction` of them."""
    unique_ids = np.unique(episode_ids)
    if validation_fraction == 0 or unique_ids.size < 2:
        return np.zeros(episode_ids.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    num_validation = min(unique_ids.size - 1, max(1, round(validation_fraction * unique_ids.size)))
    validation_ids = rng.choice(unique_ids, size=num_validation, replace=False)
    return np.isin(episode_ids, validation_ids)


class BCLearner:
    """Behaviour cloning on a compacted dataset.

    Args:
        cfg: the run's `learner:` section.
        dataset_dir: a dataset written by compaction (`_manifest.json` + Parquet), a folder or a URI.
        out_dir: where `best.safetensors`, `final.safetensors` and `training_history.json` go.
    """

    def __init__(self, cfg: LearnerConfig, dataset_dir: str | Location | list[str | Location], out_dir: str,
                 dataset_weights: list[float] | None = None) -> None:
        self.cfg = cfg
        folders = dataset_dir if isinstance(dataset_dir, list) else [dataset_dir]
        self.datasets = [Dataset.open(folder, verify=cfg.verify_dataset) for folder in folders]
        self.dataset = self.datasets[0]
        self.dataset_weights = list(dataset_weights) if dataset_weights is not None else [1.0] * len(folders)
        if len(self.dataset_weights) != len(self.datasets):
            raise ValueError(f"BCLearner: {len(self.datasets)} datasets but {len(self.dataset_weights)} weights")
        for other in self.datasets[1:]:
            mine, theirs = self.dataset.schema, other.schema
            if (mine.observation_space, mine.action_space) != (theirs.observation_space, theirs.action_space):
                raise ValueError(f"{other.folder}: spaces {theirs.observation_space} / {theirs.action_space} differ "
                                 f"from {self.dataset.folder}'s {mine.observation_space} / {mine.action_space}")
        self.out_dir = Path(out_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = Precision(cfg.precision, self.device)
        if cfg.num_cpus >= 1:
            torch.set_num_threads(int(cfg.num_cpus))
        self._log = logger.bind(actor="BCLearner")
        self.action_set: np.ndarray | None = None
        """`learner.action_set` resolved (set by `train`): the checkpoints record it."""
        self._progress = TrainProgress(0, cfg.epochs, 0, None)
        self._lock = threading.Lock()

    def progress(self) -> TrainProgress:
        """Where training is (safe to call from another thread while `train` runs)."""
        with self._lock:
            return TrainProgress(**asdict(self._progress))

    def train(self) -> TrainResult:
        cfg, schema = self.cfg, self.dataset.schema
        torch.manual_seed(cfg.seed)
        obs_names, action_names = schema.obs_columns, schema.action_columns
        if len(action_names) != 1:
            raise ValueError(f"{self.dataset.folder}: BC supports one action column, got {action_names} "
                             "(Dict action spaces are not supported yet)")
        flags = list(cfg.skip_rows_where)
        not_flags = [name for name in flags if name in schema.columns and schema.columns[name].dtype != np.bool_]
        if not_flags or any(name not in schema.columns for name in flags):
            raise ValueError(f"{self.dataset.folder}: learner.skip_rows_where: {flags} must name boolean columns; "
                             f"the dataset's boolean columns are "
                             f"{[n for n, spec in schema.columns.items() if spec.dtype == np.bool_]}")
        parts = [dataset.read_columns([*obs_names, *action_names, "episode_id", *flags], cfg.max_rows)
                 for dataset in self.datasets]
        columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        row_weight = np.concatenate([np.full(len(part["episode_id"]), weight, np.float32)
                                     for part, weight in zip(parts, self.dataset_weights)])
        action_space = schema.action_space
        if cfg.action_set is not None:  # a Box dataset learned as Discrete over a set of its actions
            self.action_set = resolve_action_set(cfg.action_set, schema.action_space, "learner.action_set")
            columns[action_names[0]] = map_to_action_set(columns[action_names[0]], self.action_set,
                                                         self.dataset.folder, self._log)
            action_space = gym.spaces.Discrete(len(self.action_set))
        num_rows = len(columns["episode_id"])
        if num_rows < 2:
            raise ValueError(f"{self.dataset.folder}: {num_rows} rows; BC needs at least 2")
        validation_mask = split_by_episode(columns["episode_id"], cfg.validation_fraction, cfg.seed)
        skipped = np.zeros(num_rows, bool)
        for name in flags:
            skipped |= columns[name]
        if skipped.all():
            raise ValueError(f"{self.dataset.folder}: every row has one of {flags} set; nothing to train on")
        self.model_spec = resolve_model_spec(cfg.model, schema.observation_space, action_space,
                                             cfg.hidden_sizes, cfg.conv_channels)
        model = build_policy_model(schema.observation_space, action_space, self.model_spec).to(self.device)
        tensors = {name: torch.from_numpy(np.array(columns[name])).to(self.device) for name in [*obs_names, *action_names]}
        weights = torch.from_numpy(row_weight).to(self.device) if (row_weight != 1).any() else None
        train_index = torch.as_tensor(np.flatnonzero(~validation_mask & ~skipped), device=self.device)
        validation_index = torch.as_tensor(np.flatnonzero(validation_mask & ~skipped), device=self.device)
        if cfg.init_checkpoint:  # fine-tuning (DAgger rounds): the checkpoint's weights and normalizer
            self._load_initial(model, cfg.init_checkpoint)
        else:
            self._fit_normalizer(model, tensors, obs_names, train_index)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = -(-train_index.numel() // cfg.batch_size)
        schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * cfg.epochs))
                    if cfg.lr_schedule == "cosine" else None)
        action = tensors[action_names[0]]
        scale = None
        if isinstance(model, PolicyModel) and isinstance(action_space, gym.spaces.Box):
            fixed = model.fix_constant_actions(action[train_index])
            if fixed:
                self._log.info("action dimensions {} are the same in every demonstration; played as given", fixed)
            if cfg.continuous_loss == "standardized":
                scale = action_scale(action[train_index], action_space)
                self._log.info("action scale (standardized MSE): {}", [round(float(v), 4) for v in scale])
        self._log.info("training BC on {} ({} rows: {} train, {} validation{}) on {}, {}",
                       self.dataset.folder, num_rows, train_index.numel(), validation_index.numel(),
                       f", {int(skipped.sum())} skipped ({' | '.join(flags)})" if flags else "", self.device,
                       self.precision.name)
        history: list[EpochRecord] = []
        best_loss, best_epoch = float("inf"), 0
        recorder = TrainingRecorder(self.out_dir, "bc")
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        image_name = image_column(schema.observation_space)
        if image_name is None and cfg.augment != AugmentConfig():
            raise ValueError(f"{self.dataset.folder}: learner.augment needs an image observation; this dataset's "
                             f"observation is {schema.observation_space}")
        last_path, first_epoch, resumed_after = self.out_dir / LAST_NAME, 1, []
        owner = training_owner("bc", self.dataset)
        if cfg.resume and resumable(last_path, owner, self._log):
            state = load_training_state(last_path, model, optimizer, schedule, generator)
            history = [EpochRecord(**record) for record in state.extra["history"]]
            best_loss, best_epoch = state.extra["best_loss"], state.extra["best_epoch"]
            first_epoch = state.epoch + 1
            resumed_after = [*state.extra.get("resumed_after", []), state.epoch]
            with self._lock:
                self._progress.samples = state.extra["samples"]
            self._log.warning("resuming from {} after epoch {} of {}", last_path, state.epoch, cfg.epochs)
        for epoch in range(first_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            model.train()
            permutation = train_index[torch.randperm(train_index.numel(), device=self.device, generator=generator)]
            losses = []
            for start in range(0, permutation.numel(), cfg.batch_size):
                rows = permutation[start:start + cfg.batch_size]
                obs = {name: tensors[name][rows] for name in obs_names}
                if image_name is not None:
                    obs[image_name] = augment_images(obs[image_name], cfg.augment, generator)
                with self.precision.autocast():
                    loss = bc_loss(model, obs, action[rows], scale, None if weights is None else weights[rows])
                optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss)
                self.precision.step(optimizer)
                if schedule is not None:
                    schedule.step()
                losses.append(loss.detach())
                with self._lock:
                    self._progress.samples += rows.numel()
            train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            validation_loss, validation_accuracy = self._validate(model, tensors, obs_names, action,
                                                                  validation_index if validation_index.numel()
                                                                  else train_index)
            seconds = time.perf_counter() - started
            record = EpochRecord(epoch, train_loss, validation_loss, validation_accuracy,
                                 train_index.numel() / seconds, seconds)
            history.append(record)
            recorder.scalars(epoch, {"loss/train": train_loss, "loss/validation": validation_loss,
                                     "accuracy/validation": validation_accuracy,
                                     "throughput/samples_per_s": record.samples_per_s,
                                     "lr": optimizer.param_groups[0]["lr"]})
            metrics.learner_samples().inc(train_index.numel(), tags={"learner": "bc"})
            metrics.learner_loss().set(train_loss, tags={"learner": "bc"})
            with self._lock:
                self._progress.epoch, self._progress.train_loss = epoch, train_loss
            if validation_loss < best_loss:
                best_loss, best_epoch = validation_loss, epoch
                self._save(model, BEST_NAME, epoch, record)
            self._log.info("epoch {}/{}: train loss {:.4f}, validation loss {:.4f}{}, {:.0f} samples/s",
                           epoch, cfg.epochs, train_loss, validation_loss,
                           "" if validation_accuracy is None else f", accuracy {validation_accuracy:.3f}",
                           record.samples_per_s)
            if cfg.resume:
                save_training_state(last_path, epoch, model, optimizer, schedule, generator, {
                    "history": [asdict(r) for r in history], "best_loss": best_loss, "best_epoch": best_epoch,
                    "samples": self._progress.samples, "resumed_after": resumed_after}, owner=owner)
        recorder.close()
        self._save(model, FINAL_NAME, cfg.epochs, history[-1])
        last_path.unlink(missing_ok=True)  # finished: a later `harvest train` starts afresh
        history_path = self.out_dir / HISTORY_NAME
        epochs = [asdict(r) for r in history]
        history_path.write_text(json.dumps({"config": asdict(cfg), "device": str(self.device),
                                            "precision": self.precision.name, "best_epoch": best_epoch,
                                            "resumed_after": resumed_after, "epochs": epochs}, indent=2))
        plot_training_curve(epochs, self.out_dir / CURVE_NAME, f"BC on {self.dataset.manifest.env_id}")
        return TrainResult(str(self.out_dir / BEST_NAME), str(self.out_dir / FINAL_NAME), str(history_path),
                           best_epoch, best_loss, int(train_index.numel()), int(validation_index.numel()),
                           str(self.device), history)

    def _load_initial(self, model: PolicyModel | ConvPolicyModel, path: str) -> None:
        loaded = load_checkpoint(path, str(self.device))
        if loaded.spec != self.model_spec or type(loaded.model) is not type(model):
            raise ValueError(f"learner.init_checkpoint {path}: its model {loaded.spec} is not the one this config "
                             f"builds ({self.model_spec}); fine-tuning needs the same architecture")
        model.load_state_dict(loaded.model.state_dict())
        self._log.info("fine-tuning from {}", path)

    @staticmethod
    def _fit_normalizer(model: PolicyModel | ConvPolicyModel, tensors: dict[str, torch.Tensor], obs_names: list[str],
                        train_index: torch.Tensor) -> None:
        if not isinstance(model, PolicyModel):
            return  # the CNN reads boards already scaled to [0, 1]
        with torch.no_grad():
            sample = train_index[:100_000]
            features = model.encoder.features({name: tensors[name][sample] for name in obs_names})
            model.encoder.mean.copy_(features.mean(0))
            model.encoder.std.copy_(features.std(0).clamp_min(1e-6) if features.shape[0] > 1
                                    else torch.ones_like(model.encoder.std))

    @torch.no_grad()
    def _validate(self, model: PolicyModel | ConvPolicyModel, tensors: dict[str, torch.Tensor], obs_names: list[str],
                  action: torch.Tensor, index: torch.Tensor) -> tuple[float, float | None]:
        model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, index.numel(), 8192):
            rows = index[start:start + 8192]
            obs = {name: tensors[name][rows] for name in obs_names}
            total_loss += float(bc_loss(model, obs, action[rows])) * rows.numel()
            if not isinstance(model.action_space, gym.spaces.Box):
                predicted = model.act(obs, deterministic=True)
                correct += int((predicted == action[rows]).reshape(rows.numel(), -1).all(-1).sum())
            count += rows.numel()
        accuracy = None if isinstance(model.action_space, gym.spaces.Box) else correct / max(count, 1)
        return total_loss / max(count, 1), accuracy

    def _save(self, model: PolicyModel | ConvPolicyModel, name: str, epoch: int, record: EpochRecord) -> None:
        save_checkpoint(self.out_dir / name, model, self.model_spec, version=epoch,
                        info={"algorithm": "bc", "epoch": epoch, "dataset": str(self.dataset.folder),
                              "validation_loss": record.validation_loss,
                              "validation_accuracy": record.validation_accuracy,
                              **action_set_info(self.action_set)})


def bc_loss(model: PolicyModel | ConvPolicyModel, obs: dict[str, torch.Tensor], action: torch.Tensor,
            action_scale: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy for discrete actions (summed over MultiDiscrete parts), MSE for Box actions
    (each dimension divided by `action_scale` when given); a weighted mean with `weight` per row."""
    return loss_from_output(model(obs), model.action_space, action, action_scale, weight)


def loss_from_output(out: torch.Tensor, space: gym.Space, action: torch.Tensor,
                     action_scale: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`bc_loss` from the model's output (for wrappers such as DDP that must do the forward)."""
    out = out.float()  # under autocast the head's output may be bf16/fp16; losses are taken in fp32
    if isinstance(space, gym.spaces.Discrete):
        per_row = nn.functional.cross_entropy(out, action.long() - int(space.start), reduction="none")
    elif isinstance(space, gym.spaces.MultiDiscrete):
        targets = (action.long() - torch.as_tensor(space.start, device=action.device)).reshape(action.shape[0], -1)
        parts = out.split(space.nvec.reshape(-1).tolist(), dim=-1)
        per_row = sum(nn.functional.cross_entropy(logits, targets[:, i], reduction="none")
                      for i, logits in enumerate(parts))
    else:
        error = out - action.reshape(action.shape[0], -1).float()
        if action_scale is not None:
            error = error / action_scale
        per_row = error.square().mean(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def action_scale(actions: torch.Tensor, space: gym.spaces.Box, floor_fraction: float = 0.01) -> torch.Tensor:
    """Per-dimension spread of demonstrated Box actions: their standard deviation, at least
    `floor_fraction` of the dimension's range (1e-3 where unbounded), so a dimension the
    expert never varies (a gun that never turns) is fitted as tightly as the others."""
    flat = actions.reshape(actions.shape[0], -1).float()
    spread = torch.as_tensor((space.high - space.low).reshape(-1), dtype=torch.float32, device=flat.device)
    floor = torch.where(torch.isfinite(spread), spread * floor_fraction, torch.full_like(spread, 1e-3))
    std = flat.std(0) if flat.shape[0] > 1 else torch.zeros_like(floor)
    return torch.maximum(std, floor)
