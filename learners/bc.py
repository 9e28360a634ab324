"""Behaviour cloning: fit a policy network to the actions in a dataset.

`BCLearner` is a plain class; `cluster` runs it as an actor (with a GPU when the config
asks for one). Reading: pyarrow streams only the observation, action and episode columns
into memory, then every epoch shuffles the training rows into minibatches on the device.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from loguru import logger

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.storage import Location
from harvest.cluster import metrics
from harvest.envs.action_sets import resolve_action_set
from harvest.envs.config import EnvConfig
from harvest.learners.action_sets import action_set_info, map_to_action_set
from harvest.learners.augment import augment_images
from harvest.learners.checkpoint import load_checkpoint, save_checkpoint
from harvest.learners.config import AugmentConfig, LearnerConfig
from harvest.learners.learner import (
    BEST_NAME,
    FINAL_NAME,
    EpochRecord,
    LearnerOutputs,
    LearnerProgress,
    TrainProgress,
    TrainResult,
    epochs_result,
    split_by_episode,
)
from harvest.learners.losses import action_scale, bc_loss
from harvest.learners.models import (
    ConvPolicyModel,
    PolicyModel,
    build_policy_model,
    fit_normalizer,
    image_column,
    resolve_model_spec,
)
from harvest.learners.precision import Precision
from harvest.learners.resume import LAST_NAME, load_training_state, resumable, save_training_state, training_owner


class BCLearner:
    """Behaviour cloning on a compacted dataset.

    Args:
        cfg: the run's `learner:` section.
        dataset_dir: a dataset written by compaction (`_manifest.json` + Parquet), a folder or a URI.
        out_dir: where `best.safetensors`, `final.safetensors` and `training_history.json` go.
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        dataset_dir: str | Location | list[str | Location],
        out_dir: str,
        dataset_weights: list[float] | None = None,
    ) -> None:
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
                raise ValueError(
                    f"{other.folder}: spaces {theirs.observation_space} / {theirs.action_space} differ "
                    f"from {self.dataset.folder}'s {mine.observation_space} / {mine.action_space}"
                )
        self.out_dir = Path(out_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = Precision(cfg.precision, self.device)
        if cfg.num_cpus >= 1:
            torch.set_num_threads(int(cfg.num_cpus))
        self._log = logger.bind(actor="BCLearner")
        self.action_set: np.ndarray | None = None
        """`learner.action_set` resolved (set by `train`): the checkpoints record it."""
        self._progress = LearnerProgress(cfg.bc.epochs)

    algorithm = "bc"

    @classmethod
    def actor_args(
        cls, cfg: LearnerConfig, env: EnvConfig, dataset: Location, out_dir: str, run_id: str
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (cfg, dataset, out_dir), {}

    @classmethod
    def work(cls, cfg: LearnerConfig, dataset: Location) -> tuple[int, str]:
        """Samples: the training split's rows (of `max_rows` at most) times the epochs."""
        rows = Dataset.open(dataset).manifest.rows
        if cfg.max_rows:
            rows = min(rows, cfg.max_rows)
        return int(rows * (1 - cfg.bc.validation_fraction)) * cfg.bc.epochs, "samples"

    @classmethod
    def after_stage(cls, cfg: LearnerConfig, previous: str | None) -> LearnerConfig:
        return cfg  # BC learns from the dataset alone

    @classmethod
    def check(cls, cfg: LearnerConfig, env: EnvConfig | None) -> None:
        pass

    @classmethod
    def train_without_actor(cls, cfg: LearnerConfig, dataset: Location, out_dir: str) -> TrainResult | None:
        """`learner.bc.num_workers` > 1: data-parallel on Ray Train workers."""
        if cfg.bc.num_workers <= 1:
            return None
        from harvest.learners.distributed import train_bc_data_parallel

        return train_bc_data_parallel(cfg, dataset, out_dir)

    def progress(self) -> TrainProgress:
        """Where training is (safe to call from another thread while `train` runs)."""
        return self._progress.snapshot()

    def train(self) -> TrainResult:
        cfg, schema = self.cfg, self.dataset.schema
        torch.manual_seed(cfg.seed)
        obs_names, action_names = schema.obs_columns, schema.action_columns
        if len(action_names) != 1:
            raise ValueError(
                f"{self.dataset.folder}: BC supports one action column, got {action_names} "
                "(Dict action spaces are not supported yet)"
            )
        flags = list(cfg.bc.skip_rows_where)
        not_flags = [name for name in flags if name in schema.columns and schema.columns[name].dtype != np.bool_]
        if not_flags or any(name not in schema.columns for name in flags):
            raise ValueError(
                f"{self.dataset.folder}: learner.bc.skip_rows_where: {flags} must name boolean columns; "
                f"the dataset's boolean columns are "
                f"{[n for n, spec in schema.columns.items() if spec.dtype == np.bool_]}"
            )
        parts = [
            dataset.read_columns([*obs_names, *action_names, "episode_id", *flags], cfg.max_rows)
            for dataset in self.datasets
        ]
        columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        row_weight = np.concatenate(
            [np.full(len(part["episode_id"]), weight, np.float32) for part, weight in zip(parts, self.dataset_weights)]
        )
        action_space = schema.action_space
        if cfg.action_set is not None:  # a Box dataset learned as Discrete over a set of its actions
            self.action_set = resolve_action_set(cfg.action_set, schema.action_space, "learner.action_set")
            columns[action_names[0]] = map_to_action_set(
                columns[action_names[0]], self.action_set, self.dataset.folder, self._log
            )
            action_space = gym.spaces.Discrete(len(self.action_set))
        num_rows = len(columns["episode_id"])
        if num_rows < 2:
            raise ValueError(f"{self.dataset.folder}: {num_rows} rows; BC needs at least 2")
        validation_mask = split_by_episode(columns["episode_id"], cfg.bc.validation_fraction, cfg.seed)
        skipped = np.zeros(num_rows, bool)
        for name in flags:
            skipped |= columns[name]
        if skipped.all():
            raise ValueError(f"{self.dataset.folder}: every row has one of {flags} set; nothing to train on")
        self.model_spec = resolve_model_spec(
            cfg.model, schema.observation_space, action_space, cfg.hidden_sizes, cfg.conv_channels
        )
        model = build_policy_model(schema.observation_space, action_space, self.model_spec).to(self.device)
        tensors = {
            name: torch.from_numpy(np.array(columns[name])).to(self.device) for name in [*obs_names, *action_names]
        }
        weights = torch.from_numpy(row_weight).to(self.device) if (row_weight != 1).any() else None
        train_index = torch.as_tensor(np.flatnonzero(~validation_mask & ~skipped), device=self.device)
        validation_index = torch.as_tensor(np.flatnonzero(validation_mask & ~skipped), device=self.device)
        if cfg.init_checkpoint:  # fine-tuning (DAgger rounds): the checkpoint's weights and normalizer
            self._load_initial(model, cfg.init_checkpoint)
        else:
            fit_normalizer(model, tensors, obs_names, train_index)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.bc.weight_decay)
        steps_per_epoch = -(-train_index.numel() // cfg.batch_size)
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * cfg.bc.epochs))
            if cfg.bc.lr_schedule == "cosine"
            else None
        )
        action = tensors[action_names[0]]
        scale = None
        if isinstance(model, PolicyModel) and isinstance(action_space, gym.spaces.Box):
            fixed = model.fix_constant_actions(action[train_index])
            if fixed:
                self._log.info("action dimensions {} are the same in every demonstration; played as given", fixed)
            if cfg.bc.continuous_loss == "standardized":
                scale = action_scale(action[train_index], action_space)
                self._log.info("action scale (standardized MSE): {}", [round(float(v), 4) for v in scale])
        self._log.info(
            "training BC on {} ({} rows: {} train, {} validation{}) on {}, {}",
            self.dataset.folder,
            num_rows,
            train_index.numel(),
            validation_index.numel(),
            f", {int(skipped.sum())} skipped ({' | '.join(flags)})" if flags else "",
            self.device,
            self.precision.name,
        )
        history: list[EpochRecord] = []
        best_loss, best_epoch = float("inf"), 0
        outputs = LearnerOutputs(self.out_dir, "bc")
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        image_name = image_column(schema.observation_space)
        if image_name is None and cfg.augment != AugmentConfig():
            raise ValueError(
                f"{self.dataset.folder}: learner.augment needs an image observation; this dataset's "
                f"observation is {schema.observation_space}"
            )
        last_path, first_epoch, resumed_after = self.out_dir / LAST_NAME, 1, []
        owner = training_owner("bc", self.dataset)
        if cfg.resume and resumable(last_path, owner, self._log):
            state = load_training_state(last_path, model, optimizer, schedule, generator)
            history = [EpochRecord(**record) for record in state.extra["history"]]
            best_loss, best_epoch = state.extra["best_loss"], state.extra["best_epoch"]
            first_epoch = state.epoch + 1
            resumed_after = [*state.extra.get("resumed_after", []), state.epoch]
            self._progress.update(samples=state.extra["samples"])
            self._log.warning("resuming from {} after epoch {} of {}", last_path, state.epoch, cfg.bc.epochs)
        for epoch in range(first_epoch, cfg.bc.epochs + 1):
            started = time.perf_counter()
            model.train()
            permutation = train_index[torch.randperm(train_index.numel(), device=self.device, generator=generator)]
            losses = []
            for start in range(0, permutation.numel(), cfg.batch_size):
                rows = permutation[start : start + cfg.batch_size]
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
                self._progress.add_samples(rows.numel())
            train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            validation_loss, validation_accuracy = self._validate(
                model, tensors, obs_names, action, validation_index if validation_index.numel() else train_index
            )
            seconds = time.perf_counter() - started
            record = EpochRecord(
                epoch, train_loss, validation_loss, validation_accuracy, train_index.numel() / seconds, seconds
            )
            history.append(record)
            outputs.scalars(
                epoch,
                {
                    "loss/train": train_loss,
                    "loss/validation": validation_loss,
                    "accuracy/validation": validation_accuracy,
                    "throughput/samples_per_s": record.samples_per_s,
                    "lr": optimizer.param_groups[0]["lr"],
                },
            )
            metrics.learner_samples().inc(train_index.numel(), tags={"learner": "bc"})
            metrics.learner_loss().set(train_loss, tags={"learner": "bc"})
            self._progress.update(epoch=epoch, train_loss=train_loss)
            if validation_loss < best_loss:
                best_loss, best_epoch = validation_loss, epoch
                self._save(model, BEST_NAME, epoch, record)
            self._log.info(
                "epoch {}/{}: train loss {:.4f}, validation loss {:.4f}{}, {:.0f} samples/s",
                epoch,
                cfg.bc.epochs,
                train_loss,
                validation_loss,
                "" if validation_accuracy is None else f", accuracy {validation_accuracy:.3f}",
                record.samples_per_s,
            )
            if cfg.resume:
                save_training_state(
                    last_path,
                    epoch,
                    model,
                    optimizer,
                    schedule,
                    generator,
                    {
                        "history": [asdict(r) for r in history],
                        "best_loss": best_loss,
                        "best_epoch": best_epoch,
                        "samples": self._progress.snapshot().samples,
                        "resumed_after": resumed_after,
                    },
                    owner=owner,
                )
        self._save(model, FINAL_NAME, cfg.bc.epochs, history[-1])
        last_path.unlink(missing_ok=True)  # finished: a later `harvest train` starts afresh
        epochs = [asdict(r) for r in history]
        outputs.finish(
            {
                "config": asdict(cfg),
                "device": str(self.device),
                "precision": self.precision.name,
                "best_epoch": best_epoch,
                "resumed_after": resumed_after,
                "epochs": epochs,
            },
            epochs,
            f"BC on {self.dataset.manifest.env_id}",
        )
        return epochs_result(
            "bc",
            self.out_dir,
            history,
            best_epoch,
            int(train_index.numel()),
            int(validation_index.numel()),
            str(self.device),
        )

    def _load_initial(self, model: PolicyModel | ConvPolicyModel, path: str) -> None:
        loaded = load_checkpoint(path, str(self.device))
        if loaded.spec != self.model_spec or type(loaded.model) is not type(model):
            raise ValueError(
                f"learner.init_checkpoint {path}: its model {loaded.spec} is not the one this config "
                f"builds ({self.model_spec}); fine-tuning needs the same architecture"
            )
        model.load_state_dict(loaded.model.state_dict())
        self._log.info("fine-tuning from {}", path)

    @torch.no_grad()
    def _validate(
        self,
        model: PolicyModel | ConvPolicyModel,
        tensors: dict[str, torch.Tensor],
        obs_names: list[str],
        action: torch.Tensor,
        index: torch.Tensor,
    ) -> tuple[float, float | None]:
        model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, index.numel(), 8192):
            rows = index[start : start + 8192]
            obs = {name: tensors[name][rows] for name in obs_names}
            total_loss += float(bc_loss(model, obs, action[rows])) * rows.numel()
            if not isinstance(model.action_space, gym.spaces.Box):
                predicted = model.act(obs, deterministic=True)
                correct += int((predicted == action[rows]).reshape(rows.numel(), -1).all(-1).sum())
            count += rows.numel()
        accuracy = None if isinstance(model.action_space, gym.spaces.Box) else correct / max(count, 1)
        return total_loss / max(count, 1), accuracy

    def _save(self, model: PolicyModel | ConvPolicyModel, name: str, epoch: int, record: EpochRecord) -> None:
        save_checkpoint(
            self.out_dir / name,
            model,
            self.model_spec,
            version=epoch,
            info={
                "algorithm": "bc",
                "epoch": epoch,
                "dataset": str(self.dataset.folder),
                "validation_loss": record.validation_loss,
                "validation_accuracy": record.validation_accuracy,
                **action_set_info(self.action_set),
            },
        )
