"""Deep Q-learning from Demonstrations (Hester et al., 2018) for Discrete action spaces.

The demonstrations (a compacted dataset) go into a prioritized replay shard of their own that
nothing else writes to, so they are never evicted; the agent's own transitions go into a
second shard. Every minibatch is drawn across both in proportion to their total priority (or,
with `demo_ratio`, that share from the demonstrations), and trained on

    J = J_DQ (1-step double-DQN TD) + λ_n J_n (n-step TD) + λ_E J_E (large margin, demo rows)

with L2 regularisation (Adam weight decay), importance weights, a target network copied every
`target_update_every` steps, and priorities |δ| + ε (ε_d for demonstrations, a bonus that
keeps them sampled). A pre-training phase uses the demonstrations alone; an interaction
phase then plays ε-greedy in the env and mixes its transitions in.

Continuous (Box) actions are not supported: DQfD needs a finite action set. Discretise the
env (a `gymnasium.ActionWrapper` over a list of actions, registered as your own env) and
collect the demonstrations in it; the learner says so instead of failing later.

The Q-network is the same model BC trains (`build_policy_model`): its head's outputs are the
Q-values, so a DQfD checkpoint plays greedily wherever a BC checkpoint plays.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from loguru import logger
from torch import nn

from harvest.aggregation.dataset import Dataset
from harvest.aggregation.storage import Location
from harvest.cluster import metrics
from harvest.envs.action_sets import resolve_action_set
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_vector_env
from harvest.envs.spaces import ColumnSpec, columns_for_space, flatten_value
from harvest.learners.action_sets import action_set_info, map_to_action_set
from harvest.learners.augment import augment_images
from harvest.learners.checkpoint import load_checkpoint, save_checkpoint
from harvest.learners.config import AugmentConfig, LearnerConfig
from harvest.learners.learner import (
    BEST_NAME,
    FINAL_NAME,
    LearnerOutputs,
    LearnerProgress,
    TrainProgress,
    TrainResult,
    check_starting_checkpoint,
    starting_from,
)
from harvest.learners.models import build_policy_model, fit_normalizer, image_column, resolve_model_spec
from harvest.learners.play import greedy_return
from harvest.learners.precision import Precision
from harvest.learners.resume import LAST_NAME, load_training_state, resumable, save_training_state, training_owner
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.shard import ReplayShard, importance_weights

NSTEP_OBS = "n_obs"
AGENT_REPLAY_DIR = "agent-replay"
MAX_GRAD_NORM = 10.0
"""DQfD's gradient clip where `learner.max_grad_norm` is not set."""


@dataclass
class NStep:
    """Per row: the discounted reward of the next n rows of its episode, and what to bootstrap from."""

    returns: np.ndarray
    """Σ_{k<m} γ^k r_{t+k} over the m ≤ n rows left in the window."""
    last: np.ndarray
    """Index of the window's last row (its `next_obs` is the bootstrap observation)."""
    discount: np.ndarray
    """γ^m."""
    done: np.ndarray
    """The episode terminated inside the window: no bootstrap."""


def n_step_returns(
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    episode_id: np.ndarray,
    step: np.ndarray,
    n: int,
    gamma: float,
) -> NStep:
    """n-step targets for rows given in any order; a window stops at the episode's end
    (terminated: no bootstrap; truncated: bootstrap) and at a gap in the steps."""
    order = np.lexsort((step, episode_id))
    r, ep, st = reward[order].astype(np.float64), episode_id[order], step[order]
    term, ended = terminated[order], terminated[order] | truncated[order]
    size = r.size
    returns, discount = np.zeros(size), np.ones(size)
    last, done = np.arange(size), np.zeros(size, bool)
    alive = np.ones(size, bool)
    for k in range(n):
        idx = np.minimum(np.arange(size) + k, size - 1)
        valid = alive & (np.arange(size) + k < size) & (ep[idx] == ep) & (st[idx] == st + k)
        returns[valid] += discount[valid] * r[idx[valid]]
        discount[valid] *= gamma
        last[valid] = idx[valid]
        done[valid] |= term[idx[valid]]
        alive = valid & ~ended[idx]
    inverse = np.empty(size, np.int64)
    inverse[order] = np.arange(size)
    return NStep(
        returns[inverse].astype(np.float32), order[last[inverse]], discount[inverse].astype(np.float32), done[inverse]
    )


def dqfd_schema(observation_space: gym.Space, action_space: gym.Space) -> BatchSchema:
    """Transition rows plus the n-step columns and the demonstration flag."""
    extras: dict[str, ColumnSpec] = {
        "n_return": ColumnSpec(np.float32, ()),
        "n_discount": ColumnSpec(np.float32, ()),
        "n_done": ColumnSpec(np.bool_, ()),
        "is_demo": ColumnSpec(np.bool_, ()),
    }
    extras.update(columns_for_space(observation_space, NSTEP_OBS))
    return BatchSchema.for_spaces(observation_space, action_space, extras)


def with_n_step(
    rows: dict[str, np.ndarray], schema: BatchSchema, n: int, gamma: float, is_demo: bool
) -> TransitionBatch:
    """`rows` (the schema's core columns) completed with n-step targets and the demo flag."""
    nstep = n_step_returns(
        rows["reward"], rows["terminated"], rows["truncated"], rows["episode_id"], rows["step"], n, gamma
    )
    columns = {name: rows[name] for name in schema.columns if name in rows}
    columns.update(
        n_return=nstep.returns,
        n_discount=nstep.discount,
        n_done=nstep.done,
        is_demo=np.full(nstep.returns.size, is_demo),
    )
    for name in schema.obs_columns:
        columns[NSTEP_OBS + name[3:]] = rows["next_" + name][nstep.last]
    return TransitionBatch(columns)


@dataclass
class DQfDRecord:
    step: int
    phase: str
    loss: float
    td_loss: float
    n_step_loss: float
    margin_loss: float
    demo_fraction: float
    eval_return: float | None
    env_steps: int
    updates_per_s: float
    agent_rows: int = 0
    """Rows in the agent's replay."""


class DQfDLearner:
    """DQfD on a compacted dataset of demonstrations (see the module doc); `learner.dqfd`
    holds its settings. Same outputs as `BCLearner`: best (by evaluation return) and final
    checkpoints, `training_history.json`, `training_curve.png`."""

    def __init__(
        self, cfg: LearnerConfig, dataset_dir: str | Location, out_dir: str, env_cfg: EnvConfig | None = None
    ) -> None:
        self.cfg, self.dqfd = cfg, cfg.dqfd
        self.dataset = Dataset.open(dataset_dir, verify=cfg.verify_dataset)
        self.out_dir = Path(out_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = Precision(cfg.precision, self.device)
        if cfg.num_cpus >= 1:
            torch.set_num_threads(int(cfg.num_cpus))
        schema = self.dataset.schema
        self.action_set = (
            resolve_action_set(cfg.action_set, schema.action_space, "learner.action_set")
            if cfg.action_set is not None
            else None
        )
        action_space = gym.spaces.Discrete(len(self.action_set)) if self.action_set is not None else schema.action_space
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(
                f"{self.dataset.folder}: DQfD needs a Discrete action space, the dataset has "
                f"{schema.action_space}; set learner.action_set (e.g. `driving`) to learn it over a "
                "discrete set of its actions"
            )
        self.action_space = action_space
        # the env it interacts in and is evaluated in: the run's (wrappers and all), or the dataset's by id
        self.env_cfg = dataclasses.replace(
            env_cfg or EnvConfig(id=self.dataset.manifest.env_id), num_envs=1, kwargs=cfg.env_kwargs
        )
        if self.action_set is not None:
            self.env_cfg = dataclasses.replace(self.env_cfg, action_set=self.action_set.tolist())
        self._image_name = image_column(schema.observation_space) if cfg.augment != AugmentConfig() else None
        self._log = logger.bind(actor="DQfDLearner")
        total = self.dqfd.pretrain_steps + self.dqfd.online_env_steps * self.dqfd.updates_per_env_step
        self._progress = LearnerProgress(total)

    algorithm = "dqfd"

    @classmethod
    def actor_args(
        cls, cfg: LearnerConfig, env: EnvConfig, dataset: Location, out_dir: str, run_id: str
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """It plays the run's env, wrappers and all, with `learner.env_kwargs` over the env's."""
        return (dataclasses.replace(cfg, env_kwargs={**env.kwargs, **cfg.env_kwargs}), dataset, out_dir), {
            "env_cfg": env
        }

    @classmethod
    def work(cls, cfg: LearnerConfig, dataset: Location) -> tuple[int, str]:
        d = cfg.dqfd
        return d.pretrain_steps + d.online_env_steps * d.updates_per_env_step, "updates"

    @classmethod
    def after_stage(cls, cfg: LearnerConfig, previous: str | None) -> LearnerConfig:
        """It starts from the previous stage's best checkpoint."""
        return starting_from(cfg, previous)

    @classmethod
    def check(cls, cfg: LearnerConfig, env: EnvConfig | None) -> None:
        """Its starting checkpoint against the env it plays (`CheckpointSpaceError`: one line)."""
        check_starting_checkpoint(cfg, env)

    @classmethod
    def train_without_actor(cls, cfg: LearnerConfig, dataset: Location, out_dir: str) -> TrainResult | None:
        return None

    def progress(self) -> TrainProgress:
        return self._progress.snapshot()

    def train(self) -> TrainResult:
        cfg, d, schema = self.cfg, self.dqfd, self.dataset.schema
        torch.manual_seed(cfg.seed)
        self._rng = np.random.default_rng(cfg.seed)
        action_space = self.action_space
        self.schema = dqfd_schema(schema.observation_space, action_space)
        core = [
            *schema.obs_columns,
            "action",
            "reward",
            *[f"next_{n}" for n in schema.obs_columns],
            "terminated",
            "truncated",
            "episode_id",
            "step",
        ]
        rows = self.dataset.read_columns(core, cfg.max_rows)
        if self.action_set is not None:
            rows["action"] = map_to_action_set(rows["action"], self.action_set, self.dataset.folder, self._log)
        demos = with_n_step({**rows, **self._provenance(len(rows["reward"]))}, self.schema, d.n_step, cfg.gamma, True)
        replay_cfg: dict[str, Any] = dict(
            sampler="prioritized",
            priority_alpha=d.priority_alpha,
            priority_beta=d.priority_beta,
            priority_eps=d.eps_demo,
        )
        self.demo_shard = ReplayShard(
            ReplayConfig(capacity_rows=demos.num_rows, **replay_cfg), self.schema, 0, cfg.seed
        )
        self.demo_shard.insert(demos, source="demonstrations")
        # With learner.resume, the agent's replay is durable (a write-ahead log beside
        # last.safetensors, checkpointed once per capacity of rows), so a restarted learner gets
        # back every transition it played; rows logged since the last checkpoint come back at the
        # largest priority, as new rows do.
        last_path, agent_wal = self.out_dir / LAST_NAME, self.out_dir / AGENT_REPLAY_DIR
        self._owner = training_owner("dqfd", self.dataset)
        resuming = cfg.resume and resumable(last_path, self._owner, self._log)
        if not resuming:
            shutil.rmtree(agent_wal, ignore_errors=True)
        self.agent_shard = ReplayShard(
            ReplayConfig(
                capacity_rows=d.agent_capacity_rows,
                wal_dir=str(agent_wal) if cfg.resume else None,
                checkpoint_every_rows=d.agent_capacity_rows,
                **{**replay_cfg, "priority_eps": d.eps_agent},
            ),
            self.schema,
            1,
            cfg.seed + 1,
        )
        if cfg.init_checkpoint:
            loaded = load_checkpoint(cfg.init_checkpoint, str(self.device))
            if loaded.model.action_space != action_space:
                raise ValueError(
                    f"learner.init_checkpoint {cfg.init_checkpoint}: its actions "
                    f"{loaded.model.action_space} are not the dataset's {action_space}"
                )
            model, self.model_spec = loaded.model.train(), loaded.spec
        else:
            self.model_spec = resolve_model_spec(
                cfg.model, schema.observation_space, action_space, cfg.hidden_sizes, cfg.conv_channels
            )
            model = build_policy_model(schema.observation_space, action_space, self.model_spec).to(self.device)
        if not cfg.init_checkpoint:
            fit_normalizer(
                model,
                {name: torch.from_numpy(np.array(demos[name])) for name in schema.obs_columns},
                schema.obs_columns,
                torch.arange(demos.num_rows),
            )
        target = copy.deepcopy(model).eval()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=d.l2)
        self._log.info(
            "DQfD on {}: {} demonstration rows, {} pre-training steps, {} env steps of interaction, on {}",
            self.dataset.folder,
            demos.num_rows,
            d.pretrain_steps,
            d.online_env_steps,
            self.device,
        )
        self._history: list[DQfDRecord] = []
        self._best = -float("inf")
        self._window: list[dict[str, float]] = []
        self._window_started, self._updates, self._env_steps = time.perf_counter(), 0, 0
        self._model, self._target, self._optimizer = model, target, optimizer
        self._resumed_after: list[int] = []
        if resuming:
            self._load_state(last_path)
        self._outputs = LearnerOutputs(self.out_dir, "dqfd")
        for _ in range(max(0, d.pretrain_steps - self._updates)):
            self._step(model, target, optimizer, demo_only=True, phase="pretrain")
        if d.pretrain_steps and not self._env_steps and (not self._history or self._history[-1].step != self._updates):
            self._record("pretrain")
        if d.online_env_steps:
            self._interact(model, target, optimizer)
        if not self._history or self._history[-1].step != self._updates:
            self._record("online" if d.online_env_steps else "pretrain")
        history, update = self._history, self._updates
        self._save(model, FINAL_NAME, update, history[-1])
        if self._best == -float("inf"):  # no evaluation: the final weights are the best we know
            self._save(model, BEST_NAME, update, history[-1])
        last_path.unlink(missing_ok=True)  # finished: a later `harvest train` starts afresh
        shutil.rmtree(agent_wal, ignore_errors=True)
        entries = [asdict(entry) for entry in history]
        outputs = self._outputs
        outputs.finish(
            {
                "config": asdict(cfg),
                "device": str(self.device),
                "algorithm": "dqfd",
                "precision": self.precision.name,
                "resumed_after": self._resumed_after,
                "best_eval_return": None if self._best == -float("inf") else self._best,
                "steps": entries,
            },
            [{"epoch": e["step"], "train_loss": e["loss"], "validation_loss": e["margin_loss"]} for e in entries],
            f"DQfD on {self.dataset.manifest.env_id}",
            x_label="update",
            labels=("loss", "margin loss"),
            extra=("eval return", [e["eval_return"] for e in entries]),
        )
        best = max(
            (e for e in history if e.eval_return is not None),
            key=lambda e: e.eval_return if e.eval_return is not None else -float("inf"),
            default=history[-1],
        )
        return TrainResult(
            "dqfd",
            str(outputs.best),
            str(outputs.final),
            str(outputs.history),
            best.step,
            "update",
            best.eval_return,
            "evaluation return",
            str(self.device),
            demos.num_rows,
            history,
            {"best_update": best.step, "best_eval_return": best.eval_return, "rows": demos.num_rows},
        )

    def _step(self, model, target, optimizer, demo_only: bool, phase: str) -> None:
        """One update; the target network copy, the history entry and progress on schedule."""
        self._window.append(self._update(model, target, optimizer, demo_only))
        self._updates += 1
        if self._updates % self.dqfd.target_update_every == 0:
            target.load_state_dict(model.state_dict())
        if self._updates % self.dqfd.log_every == 0:
            self._record(phase)
        self._progress.update(epoch=self._updates, samples=self._updates)

    def _record(self, phase: str) -> None:
        """A history entry: the mean losses since the last one, and the greedy evaluation return
        (a new best is saved as best.safetensors)."""
        model, window = self._model, self._window
        eval_return = self._evaluate(model) if self.cfg.eval.episodes else None
        means = {key: float(np.mean([w[key] for w in window])) for key in window[0]} if window else {}
        entry = DQfDRecord(
            self._updates,
            phase,
            means.get("loss", float("nan")),
            means.get("td", float("nan")),
            means.get("n_step", float("nan")),
            means.get("margin", float("nan")),
            means.get("demo_fraction", float("nan")),
            eval_return,
            self._env_steps,
            len(window) / max(time.perf_counter() - self._window_started, 1e-9),
            self.agent_shard.sampling_mass()[1],
        )
        self._history.append(entry)
        self._outputs.scalars(
            entry.step,
            {
                "loss/total": entry.loss,
                "loss/td": entry.td_loss,
                "loss/n_step": entry.n_step_loss,
                "loss/margin": entry.margin_loss,
                "replay/demo_fraction": entry.demo_fraction,
                "eval/return": eval_return,
                "env_steps": entry.env_steps,
                "lr": self._optimizer.param_groups[0]["lr"],
                "throughput/updates_per_s": entry.updates_per_s,
            },
        )
        self._log.info(
            "{} update {}: loss {:.4f} (TD {:.4f}, n-step {:.4f}, margin {:.4f}), demo share {:.2f}, {} env steps{}",
            phase,
            entry.step,
            entry.loss,
            entry.td_loss,
            entry.n_step_loss,
            entry.margin_loss,
            entry.demo_fraction,
            entry.env_steps,
            "" if eval_return is None else f", eval return {eval_return:.1f}",
        )
        metrics.learner_loss().set(entry.loss, tags={"learner": "dqfd"})
        metrics.learner_samples().inc(len(window) * self.cfg.batch_size, tags={"learner": "dqfd"})
        if eval_return is not None and eval_return > self._best:
            self._best = eval_return
            self._save(model, BEST_NAME, self._updates, entry)
        self._window, self._window_started = [], time.perf_counter()
        if self.cfg.resume:
            self._save_state()

    def _networks(self) -> nn.ModuleDict:
        """The Q-network and its target as one module, for the resume state."""
        return nn.ModuleDict({"q": self._model, "target": self._target})

    def _save_state(self) -> None:
        """`last.safetensors` after a history entry: both networks, the optimizer, the counters,
        the history and random states, and the demonstrations' priorities; the agent's replay is
        logged as it grows. An episode under way is not kept: a resumed learner starts a new one."""
        priorities, scalars = self.demo_shard.sampler_state()
        save_training_state(
            self.out_dir / LAST_NAME,
            self._updates,
            self._networks(),
            self._optimizer,
            extra={
                "env_steps": self._env_steps,
                "best": self._best,
                "history": [asdict(r) for r in self._history],
                "resumed_after": self._resumed_after,
                "rng": self._rng.bit_generator.state,
                "demo_sampler": scalars,
            },
            extra_tensors={
                f"demo/{name}": torch.from_numpy(np.ascontiguousarray(values)) for name, values in priorities.items()
            },
            owner=self._owner,
        )

    def _load_state(self, path: Path) -> None:
        state = load_training_state(path, self._networks(), self._optimizer)
        extra = state.extra
        self._updates, self._env_steps, self._best = state.epoch, extra["env_steps"], extra["best"]
        self._history = [DQfDRecord(**record) for record in extra["history"]]
        self._resumed_after = [*extra["resumed_after"], state.epoch]
        self._rng.bit_generator.state = extra["rng"]
        self.demo_shard.restore_sampler_state(
            {
                name[len("demo/") :]: tensor.numpy()
                for name, tensor in state.tensors.items()
                if name.startswith("demo/")
            },
            extra["demo_sampler"],
        )
        self._log.warning(
            "resuming from {} after update {} ({} env steps, {} agent rows kept)",
            path,
            state.epoch,
            self._env_steps,
            self.agent_shard.sampling_mass()[1],
        )

    def _provenance(self, num_rows: int) -> dict[str, np.ndarray]:
        return {
            "collector_id": np.zeros(num_rows, np.int64),
            "policy_version": np.zeros(num_rows, np.int64),
            "timestamp": np.zeros(num_rows, "datetime64[ns]"),
        }

    def _sample(self, demo_only: bool) -> TransitionBatch:
        """A minibatch across the two shards, in proportion to their priority mass (or
        `demo_ratio`), with P(i) and importance weights over both."""
        d, batch_size = self.dqfd, self.cfg.batch_size
        shards = (
            [self.demo_shard] if demo_only or self.agent_shard.bounds()[1] == 0 else [self.demo_shard, self.agent_shard]
        )
        mass_and_size = [shard.sampling_mass() for shard in shards]
        masses = np.array([mass for mass, _ in mass_and_size])
        stored = sum(size for _, size in mass_and_size)
        if len(shards) == 2 and d.demo_ratio is not None:
            demo_rows = int(self._rng.binomial(batch_size, d.demo_ratio))
            counts, share = np.array([demo_rows, batch_size - demo_rows]), np.array([d.demo_ratio, 1 - d.demo_ratio])
        else:
            share = masses / masses.sum()
            counts = self._rng.multinomial(batch_size, share)
        parts = []
        for shard, count, fraction in zip(shards, counts, share):
            if count:
                part = shard.sample(int(count))
                # None only from a shard with no rows (its limiter is the default MinSize(1)); see `shards`
                assert part is not None
                part.columns["probability"] = part["probability"] * fraction
                parts.append(part)
        batch = TransitionBatch.concat(parts)
        batch.columns["weight"] = importance_weights(batch["probability"], stored, d.priority_beta)
        return batch

    def _tensors(self, batch: TransitionBatch, prefix: str) -> dict[str, torch.Tensor]:
        return {
            "obs" + name[len(prefix) :]: torch.from_numpy(batch[name]).to(self.device)
            for name in batch.columns
            if name == prefix or name.startswith(prefix + ".")
        }

    def _update(self, model, target, optimizer, demo_only: bool) -> dict[str, float]:
        d = self.dqfd
        batch = self._sample(demo_only)
        device = self.device
        obs, next_obs, n_obs = (self._tensors(batch, p) for p in ("obs", "next_obs", NSTEP_OBS))
        if self._image_name is not None:  # DrQ: each observation of the minibatch augmented on its own
            for observed in (obs, next_obs, n_obs):
                observed[self._image_name] = augment_images(observed[self._image_name], self.cfg.augment)
        action = torch.from_numpy(batch["action"]).to(device).long()
        reward = torch.from_numpy(batch["reward"]).to(device)
        terminated = torch.from_numpy(batch["terminated"]).to(device).float()
        weight = torch.from_numpy(batch["weight"]).to(device)
        is_demo = torch.from_numpy(batch["is_demo"]).to(device).float()
        with self.precision.autocast():
            q = model(obs).float()
            with torch.no_grad():
                next_q = self._double_q(model, target, next_obs)
                n_q = self._double_q(model, target, n_obs)
        q_taken = q.gather(1, action[:, None])[:, 0]
        with torch.no_grad():
            y1 = reward + self.cfg.gamma * (1 - terminated) * next_q
            n_done = torch.from_numpy(batch["n_done"]).to(device).float()
            n_discount = torch.from_numpy(batch["n_discount"]).to(device)
            yn = torch.from_numpy(batch["n_return"]).to(device) + n_discount * (1 - n_done) * n_q
        td1 = y1 - q_taken
        td_loss = (weight * nn.functional.smooth_l1_loss(q_taken, y1, reduction="none")).mean()
        n_loss = (weight * nn.functional.smooth_l1_loss(q_taken, yn, reduction="none")).mean()
        margins = torch.full_like(q, d.margin).scatter_(1, action[:, None], 0.0)
        margin_loss = (weight * is_demo * ((q + margins).max(1).values - q_taken)).sum() / is_demo.sum().clamp_min(1)
        loss = td_loss + d.lambda_n_step * n_loss + d.lambda_margin * margin_loss
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(optimizer, model.parameters(), self.cfg.grad_norm(MAX_GRAD_NORM))
        priorities = td1.detach().abs().cpu().numpy()
        keys = batch["key"]
        for index, shard in enumerate((self.demo_shard, self.agent_shard)):
            mine = (keys >> 48) == index
            if mine.any():
                shard.update_priorities(keys[mine], priorities[mine])
        return {
            "loss": loss.item(),
            "td": td_loss.item(),
            "n_step": n_loss.item(),
            "margin": margin_loss.item(),
            "demo_fraction": is_demo.mean().item(),
        }

    @staticmethod
    def _double_q(model, target, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        best = model(obs).argmax(1, keepdim=True)
        return target(obs).float().gather(1, best)[:, 0]

    def _interact(self, model, target, optimizer) -> None:
        """ε-greedy play in the env; each finished episode goes to the agent shard with its
        n-step targets; `updates_per_env_step` updates per step."""
        d = self.dqfd
        env = make_vector_env(self.env_cfg)
        restarts = len(self._resumed_after)  # a resumed learner plays new episodes, with ids of their own
        obs, _ = env.reset(seed=self.cfg.seed + 7919 * restarts)
        episode: dict[str, list] = {}
        episode_id, step_in_episode, reset_next = (1 << 40) + (restarts << 32), 0, False
        try:
            while self._env_steps < d.online_env_steps:
                action = self._act(model, obs, d.epsilon)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                self._env_steps += 1
                if not reset_next:  # gymnasium's next-step autoreset: this step only reset the env
                    row = {
                        **{name: value[0] for name, value in flatten_value(obs, "obs").items()},
                        **{name: value[0] for name, value in flatten_value(next_obs, "next_obs").items()},
                        "action": action[0],
                        "reward": np.float32(reward[0]),
                        "terminated": bool(terminated[0]),
                        "truncated": bool(truncated[0]),
                        "episode_id": episode_id,
                        "step": step_in_episode,
                    }
                    for key, value in row.items():
                        episode.setdefault(key, []).append(value)
                    step_in_episode += 1
                reset_next = bool(terminated[0] or truncated[0])
                if reset_next and episode:
                    self._store_episode(episode)
                    episode, episode_id, step_in_episode = {}, episode_id + 1, 0
                obs = next_obs
                for _ in range(d.updates_per_env_step):
                    self._step(model, target, optimizer, demo_only=False, phase="online")
        finally:
            env.close()

    def _store_episode(self, episode: dict[str, list]) -> None:
        rows = {name: np.asarray(values, dtype=self.schema.columns[name].dtype) for name, values in episode.items()}
        rows.update(self._provenance(len(rows["reward"])))
        self.agent_shard.insert(with_n_step(rows, self.schema, self.dqfd.n_step, self.cfg.gamma, False), source="agent")

    @torch.no_grad()
    def _act(self, model, obs, epsilon: float) -> np.ndarray:
        tensors = {
            name: torch.as_tensor(np.asarray(value)).to(self.device)
            for name, value in flatten_value(obs, "obs").items()
        }
        model.eval()
        greedy = model.act(tensors, deterministic=True).cpu().numpy()
        model.train()
        if self._rng.random() < epsilon:
            space = self.action_space
            mask = tensors.get("obs.action_mask")
            legal = np.flatnonzero(mask[0].cpu().numpy()) if mask is not None else np.arange(int(space.n))
            return np.array([int(self._rng.choice(legal)) + int(space.start)])
        return greedy

    def _evaluate(self, model) -> float:
        """Greedy return in the env (`learner.eval.env_kwargs` over the one it interacts in)."""
        evaluation = self.cfg.eval
        env_cfg = dataclasses.replace(self.env_cfg, kwargs={**self.env_cfg.kwargs, **evaluation.env_kwargs})
        return greedy_return(
            model, env_cfg, evaluation.episodes, 10_000 + self.cfg.seed, evaluation.max_steps, self.device
        )

    def _save(self, model, name: str, update: int, entry: DQfDRecord) -> None:
        save_checkpoint(
            self.out_dir / name,
            model,
            self.model_spec,
            version=update,
            info={
                "algorithm": "dqfd",
                "update": update,
                "dataset": str(self.dataset.folder),
                "eval_return": entry.eval_return,
                "loss": entry.loss,
                **action_set_info(self.action_set),
            },
        )
