"""PPO fine-tuning (clipped objective, GAE) with rollout actors playing the latest weights.

Each iteration: the policy's weights go into the object store once with a new version, every
`RolloutWorker` loads them (`set_policy_weights`) and collects `rows_per_collector` rows into a
replay shard, each row recording the `policy_version` that produced it; the learner reads the
new rows by cursor, keeps those of the current version, computes GAE advantages per episode
(bootstrapping from V(next_obs) where an episode was truncated or is still running), and runs
`epochs` passes of minibatch updates. The policy starts from a BC or DQfD checkpoint; an
optional KL(initial || current) term keeps it near the demonstrations, and the first
`value_warmup_iterations` fit only the new critic so its early errors do not push a good
policy around.

Discrete actions (a categorical over logits, illegal actions masked) and Box actions (a
tanh-squashed Gaussian with a learned log-std, `learners.distributions.SquashedGaussian`) are supported;
MultiDiscrete actions are refused. The forward pass runs under `learner.precision`'s autocast.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import ray
import torch
from loguru import logger

from harvest.aggregation.storage import Location
from harvest.cluster import metrics
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_vector_env
from harvest.learners.checkpoint import load_checkpoint, save_checkpoint
from harvest.learners.config import LearnerConfig
from harvest.learners.critic import ValueModel, gae
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
from harvest.learners.models import ConvPolicyModel, ModelSpec, PolicyModel, build_policy_model, resolve_model_spec
from harvest.learners.play import greedy_return
from harvest.learners.policy import load_torch_policy
from harvest.learners.precision import Precision
from harvest.learners.resume import LAST_NAME, load_training_state, resumable, save_training_state, training_owner
from harvest.rollout.batch import TransitionBatch
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig, WatchdogConfig
from harvest.rollout.fleet import Fleet
from harvest.rollout.policies import ConfiguredPolicyFactory
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.worker import RolloutWorker, schema_for

INITIAL_NAME = "initial.safetensors"
MAX_GRAD_NORM = 0.5
"""PPO's gradient clip where `learner.max_grad_norm` is not set (CleanRL's)."""


@dataclass
class PPORecord:
    iteration: int
    policy_version: int
    env_steps: int
    episodes: int
    episode_return: float | None
    eval_return: float | None
    policy_loss: float
    value_loss: float
    entropy: float
    kl_initial: float
    approx_kl: float
    clip_fraction: float
    lr: float
    env_steps_per_s: float


class PPOLearner:
    """PPO in `env_cfg`'s env with `learner.ppo.num_collectors` rollout actors (see the module
    doc). Outputs like the other learners: best (by greedy evaluation) and final checkpoints,
    `training_history.json` and `training_curve.png` in `out_dir`."""

    def __init__(self, cfg: LearnerConfig, env_cfg: EnvConfig, out_dir: str, run_id: str = "ppo") -> None:
        self.cfg, self.ppo = cfg, cfg.ppo
        self.env_cfg = dataclasses.replace(env_cfg, kwargs={**env_cfg.kwargs, **cfg.env_kwargs})
        self.out_dir, self.run_id = Path(out_dir), run_id
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = Precision(cfg.precision, self.device)
        if cfg.num_cpus >= 1:
            torch.set_num_threads(int(cfg.num_cpus))
        self._log = logger.bind(actor="PPOLearner")
        self._progress = LearnerProgress(self.ppo.env_steps)

    algorithm = "ppo"

    @classmethod
    def actor_args(
        cls, cfg: LearnerConfig, env: EnvConfig, dataset: Location, out_dir: str, run_id: str
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (cfg, env, out_dir, run_id), {}

    @classmethod
    def work(cls, cfg: LearnerConfig, dataset: Location) -> tuple[int, str]:
        return cfg.ppo.env_steps, "env steps"

    @classmethod
    def after_stage(cls, cfg: LearnerConfig, previous: str | None) -> LearnerConfig:
        """It starts from the previous stage's best checkpoint."""
        return starting_from(cfg, previous)

    @classmethod
    def check(cls, cfg: LearnerConfig, env: EnvConfig | None) -> None:
        """Its evaluations (they pick the best checkpoint) and its starting checkpoint against the
        env it plays (`CheckpointSpaceError`: one line)."""
        if cfg.eval.episodes < 1:
            raise ValueError("learner.eval.episodes: PPO picks its best checkpoint by evaluation; give at least 1")
        check_starting_checkpoint(cfg, env)

    @classmethod
    def train_without_actor(cls, cfg: LearnerConfig, dataset: Location, out_dir: str) -> TrainResult | None:
        return None

    def progress(self) -> TrainProgress:
        return self._progress.snapshot()

    def _initial_model(self) -> tuple[PolicyModel | ConvPolicyModel, ModelSpec]:
        """The checkpoint to fine-tune, or fresh weights for the env's spaces."""
        if self.cfg.init_checkpoint:
            loaded = load_checkpoint(self.cfg.init_checkpoint)
            return loaded.model, loaded.spec
        env = make_vector_env(EnvConfig(id=self.env_cfg.id, num_envs=1, kwargs=self.env_cfg.kwargs))
        try:
            spec = resolve_model_spec(
                self.cfg.model,
                env.single_observation_space,
                env.single_action_space,
                self.cfg.hidden_sizes,
                self.cfg.conv_channels,
            )
            return build_policy_model(env.single_observation_space, env.single_action_space, spec), spec
        finally:
            env.close()

    def train(self) -> TrainResult:
        cfg, p = self.cfg, self.ppo
        torch.manual_seed(cfg.seed)
        policy, self.model_spec = self._initial_model()
        if not isinstance(policy.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise ValueError(f"PPO supports Discrete and Box action spaces, got {policy.action_space}")
        if p.initial_log_std is not None and isinstance(policy.action_space, gym.spaces.Box):
            with torch.no_grad():
                policy.log_std.fill_(p.initial_log_std)
        policy = policy.to(self.device).train()
        initial = copy.deepcopy(policy).eval()
        value = ValueModel(policy, cfg.hidden_sizes, cfg.conv_channels).to(self.device)
        optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()], lr=cfg.lr, eps=1e-5)
        start = save_checkpoint(self.out_dir / INITIAL_NAME, policy, self.model_spec, 0, {"algorithm": "ppo-init"})
        rollout = RolloutConfig(
            num_collectors=p.num_collectors,
            steps=p.env_steps,
            batch_rows=p.rows_per_collector,
            num_cpus=p.collector_num_cpus,
            policy=PolicyConfig(kind="torch", checkpoint=str(start), deterministic=False),
        )
        factory = ConfiguredPolicyFactory(rollout.policy, self.env_cfg.id, seed=cfg.seed, load_torch=load_torch_policy)
        schema = schema_for(self.env_cfg, factory)
        rows_per_iteration = p.num_collectors * (p.rows_per_collector + self.env_cfg.num_envs)
        replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=4 * rows_per_iteration, num_cpus=0.1), schema)
        worker = ray.remote(RolloutWorker).options(
            num_cpus=rollout.num_cpus,
            max_concurrency=2,  # activity() answers
            max_restarts=rollout.max_restarts,
        )

        def start_collector(i: int) -> ray.actor.ActorHandle:
            factory = ConfiguredPolicyFactory(
                rollout.policy, self.env_cfg.id, seed=cfg.seed + i, load_torch=load_torch_policy
            )
            return worker.remote(self.env_cfg, rollout, factory, replay, i, self.run_id, cfg.seed + i)

        fleet = Fleet(start_collector, p.num_collectors, replay, rollout.max_restarts, WatchdogConfig())
        try:
            fleet.wait_started(
                120.0,
                f"each asks for {p.collector_num_cpus} CPU (learner.ppo.collector_num_cpus); "
                "lower learner.ppo.num_collectors or collector_num_cpus, or add nodes",
            )
        except RuntimeError as err:
            replay.kill()
            raise RuntimeError(f"PPO: {err}") from None
        self._log.info(
            "PPO on {} from {}: {} env steps, {} collectors x {} rows per iteration, on {}",
            self.env_cfg.id,
            self.cfg.init_checkpoint or "fresh weights",
            p.env_steps,
            p.num_collectors,
            p.rows_per_collector,
            self.device,
        )
        history: list[PPORecord] = []
        best = -float("inf")
        cursor, env_steps, version = 0, 0, 0
        # One module over both networks, so the resume state holds them and their shared optimizer.
        networks, last_path, resumed_after = (
            torch.nn.ModuleDict({"policy": policy, "value": value}),
            self.out_dir / LAST_NAME,
            [],
        )
        owner = training_owner("ppo", run_id=f"{self.run_id} from {cfg.init_checkpoint or 'fresh weights'}")
        if cfg.resume and resumable(last_path, owner, self._log):  # a restarted learner goes on after its last one
            state = load_training_state(last_path, networks, optimizer)
            version, env_steps, best = state.epoch, state.extra["env_steps"], state.extra["best"]
            history = [PPORecord(**record) for record in state.extra["history"]]
            resumed_after = [*state.extra.get("resumed_after", []), version]
            self._log.warning("resuming from {} after iteration {} ({} env steps)", last_path, version, env_steps)
        outputs = LearnerOutputs(self.out_dir, "ppo")
        try:
            while env_steps < p.env_steps:
                version += 1
                started = time.perf_counter()
                weights = ray.put({name: tensor.detach().cpu() for name, tensor in policy.state_dict().items()})
                fleet.apply("set_policy_weights", weights, version)  # a restarted collector gets them too
                results = fleet.each("collect", [(p.rows_per_collector,)] * p.num_collectors, p.collect_timeout_s)
                env_steps += sum(result.env_steps for result in results)
                read = ray.get(replay.shards[0].read.remote(cursor, 10 * rows_per_iteration), timeout=120)
                if read.skipped_rows:
                    raise RuntimeError(
                        f"PPO: the replay overwrote {read.skipped_rows} rows before the learner read them"
                    )
                cursor = read.next_cursor
                batch = read.batch
                current = batch["policy_version"] == version
                batch = batch.take(np.flatnonzero(current))
                losses = self._update(
                    policy,
                    value,
                    initial,
                    optimizer,
                    batch,
                    schema.obs_columns,
                    value_only=version <= p.value_warmup_iterations,
                )
                returns = [episode.episode_return for result in results for episode in result.episodes]
                eval_return = None
                if version % p.eval_every == 0 or env_steps >= p.env_steps:
                    eval_return = self._evaluate(policy)
                record = PPORecord(
                    version,
                    version,
                    env_steps,
                    len(returns),
                    float(np.mean(returns)) if returns else None,
                    eval_return,
                    lr=cfg.lr,
                    env_steps_per_s=sum(r.env_steps for r in results) / (time.perf_counter() - started),
                    **losses,
                )
                history.append(record)
                outputs.scalars(
                    env_steps,
                    {
                        "loss/policy": record.policy_loss,
                        "loss/value": record.value_loss,
                        "entropy": record.entropy,
                        "kl/initial": record.kl_initial,
                        "kl/approx": record.approx_kl,
                        "clip_fraction": record.clip_fraction,
                        "return/episode": record.episode_return,
                        "eval/return": eval_return,
                        "lr": record.lr,
                        "policy_version": version,
                        "throughput/env_steps_per_s": record.env_steps_per_s,
                    },
                )
                self._log.info(
                    "iteration {}: {} env steps, episode return {}, eval {}, policy loss {:.4f}, value "
                    "loss {:.4f}, entropy {:.3f}, KL to initial {:.4f}",
                    version,
                    env_steps,
                    "n/a" if record.episode_return is None else f"{record.episode_return:.1f}",
                    "-" if eval_return is None else f"{eval_return:.1f}",
                    record.policy_loss,
                    record.value_loss,
                    record.entropy,
                    record.kl_initial,
                )
                metrics.learner_loss().set(record.policy_loss, tags={"learner": "ppo"})
                metrics.learner_samples().inc(batch.num_rows * p.epochs, tags={"learner": "ppo"})
                if eval_return is not None and eval_return > best:
                    best = eval_return
                    self._save(policy, BEST_NAME, version, record)
                self._progress.update(epoch=version, samples=env_steps)
                if cfg.resume:
                    save_training_state(
                        last_path,
                        version,
                        networks,
                        optimizer,
                        extra={
                            "env_steps": env_steps,
                            "best": best,
                            "history": [asdict(r) for r in history],
                            "resumed_after": resumed_after,
                        },
                        owner=owner,
                    )
                if (
                    p.stop_at_return is not None
                    and record.episode_return is not None
                    and record.episode_return >= p.stop_at_return
                ):
                    self._log.info(
                        "episode return {:.1f} >= {:g} after {} env steps: stopping",
                        record.episode_return,
                        p.stop_at_return,
                        env_steps,
                    )
                    if eval_return is None:
                        eval_return = self._evaluate(policy)
                        record.eval_return = eval_return
                        if eval_return > best:
                            best = eval_return
                            self._save(policy, BEST_NAME, version, record)
                    break
        finally:
            fleet.stop()
            replay.kill()
        self._save(policy, FINAL_NAME, version, history[-1])
        last_path.unlink(missing_ok=True)  # finished: a later `harvest train` starts afresh
        entries = [asdict(record) for record in history]
        outputs.finish(
            {
                "config": asdict(cfg),
                "algorithm": "ppo",
                "device": str(self.device),
                "precision": self.precision.name,
                "resumed_after": resumed_after,
                "env": self.env_cfg.id,
                "best_eval_return": best,
                "collector_restarts": fleet.restarts,
                "iterations": entries,
            },
            [
                {
                    "epoch": e["env_steps"],
                    "train_loss": abs(e["policy_loss"]) + 1e-9,
                    "validation_loss": e["value_loss"] + 1e-9,
                }
                for e in entries
            ],
            f"PPO on {self.env_cfg.id}",
            x_label="env steps",
            labels=("|policy loss|", "value loss"),
            extra=("episode return", [e["episode_return"] for e in entries]),
        )
        best_record = max(
            (r for r in history if r.eval_return is not None),
            key=lambda r: r.eval_return if r.eval_return is not None else -float("inf"),
        )
        return TrainResult(
            "ppo",
            str(outputs.best),
            str(outputs.final),
            str(outputs.history),
            best_record.iteration,
            "iteration",
            best_record.eval_return,
            "evaluation return",
            str(self.device),
            env_steps,
            history,
            {"best_update": best_record.iteration, "best_eval_return": best_record.eval_return, "rows": env_steps},
        )

    def _evaluate(self, policy) -> float:
        """Evaluation return in the env (with `learner.eval.env_kwargs` merged over the training kwargs)."""
        evaluation = self.cfg.eval
        env_cfg = dataclasses.replace(self.env_cfg, kwargs={**self.env_cfg.kwargs, **evaluation.env_kwargs})
        return greedy_return(
            policy,
            env_cfg,
            evaluation.episodes,
            20_000 + self.cfg.seed,
            evaluation.max_steps,
            self.device,
            evaluation.deterministic,
        )

    def _update(
        self, policy, value, initial, optimizer, batch: TransitionBatch, obs_names: list[str], value_only: bool
    ) -> dict[str, float]:
        p, device = self.ppo, self.device
        obs = {name: torch.from_numpy(np.array(batch[name])).to(device) for name in obs_names}
        next_obs = {name: torch.from_numpy(np.array(batch["next_" + name])).to(device) for name in obs_names}
        action = torch.from_numpy(np.array(batch["action"])).to(device)
        with torch.no_grad(), self.precision.autocast():
            old_logp = _batched(lambda chunk, rows: policy.distribution(chunk).log_prob(action[rows]), obs)
            values = _batched(lambda chunk, _: value(chunk).float(), obs).cpu().numpy()
            next_values = _batched(lambda chunk, _: value(chunk).float(), next_obs).cpu().numpy()
        advantage, returns = gae(
            batch["reward"],
            values,
            next_values,
            batch["terminated"],
            batch["truncated"],
            batch["episode_id"],
            batch["step"],
            self.cfg.gamma,
            p.gae_lambda,
        )
        advantage_t, returns_t = torch.from_numpy(advantage).to(device), torch.from_numpy(returns).to(device)
        sums = {
            "policy_loss": 0.0,
            "value_loss": 0.0,
            "entropy": 0.0,
            "kl_initial": 0.0,
            "approx_kl": 0.0,
            "clip_fraction": 0.0,
        }
        count = 0
        generator = torch.Generator(device="cpu").manual_seed(
            self.cfg.seed + int(batch["policy_version"][0]) if batch.num_rows else 0
        )
        parameters = [*policy.parameters(), *value.parameters()]
        for _ in range(p.epochs):
            for rows in torch.randperm(batch.num_rows, generator=generator).to(device).split(p.minibatch_size):
                sub = {name: tensor[rows] for name, tensor in obs.items()}
                with self.precision.autocast():
                    dist = policy.distribution(sub)
                    with torch.no_grad():
                        initial_dist = initial.distribution(sub)
                    predicted_value = value(sub).float()
                logp = dist.log_prob(action[rows])
                adv = advantage_t[rows]
                if p.normalize_advantages and rows.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = logp - old_logp[rows]
                ratio = torch.exp(log_ratio)
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - p.clip, 1 + p.clip) * adv).mean()
                entropy = dist.entropy().mean()
                kl_initial = initial_dist.kl(dist).mean()
                value_loss = 0.5 * (predicted_value - returns_t[rows]).square().mean()
                if value_only:
                    loss = p.value_coef * value_loss
                else:
                    loss = policy_loss + p.value_coef * value_loss - p.entropy_coef * entropy + p.kl_coef * kl_initial
                optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss)
                self.precision.step(optimizer, parameters, self.cfg.grad_norm(MAX_GRAD_NORM))
                with torch.no_grad():
                    sums["policy_loss"] += policy_loss.item()
                    sums["value_loss"] += value_loss.item()
                    sums["entropy"] += entropy.item()
                    sums["kl_initial"] += kl_initial.item()
                    sums["approx_kl"] += ((ratio - 1) - log_ratio).mean().item()
                    sums["clip_fraction"] += ((ratio - 1).abs() > p.clip).float().mean().item()
                count += 1
        return {key: total / max(count, 1) for key, total in sums.items()}

    def _save(self, policy, name: str, version: int, record: PPORecord) -> None:
        save_checkpoint(
            self.out_dir / name,
            policy,
            self.model_spec,
            version=version,
            info={
                "algorithm": "ppo",
                "policy_version": version,
                "env_steps": record.env_steps,
                "eval_return": record.eval_return,
                "init_checkpoint": self.cfg.init_checkpoint,
            },
        )


def _batched(
    fn: Callable[[dict[str, torch.Tensor], slice], torch.Tensor], obs: dict[str, torch.Tensor], size: int = 8192
) -> torch.Tensor:
    """`fn(chunk, rows)` over `obs` in chunks of `size` rows, concatenated."""
    count = next(iter(obs.values())).shape[0]
    chunks = [fn({k: v[i : i + size] for k, v in obs.items()}, slice(i, i + size)) for i in range(0, count, size)]
    return torch.cat(chunks) if count else torch.zeros(0)
