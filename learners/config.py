"""The `learner:` section of a run config."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, StrictBool, StrictInt
from pydantic.dataclasses import dataclass

from harvest.rollout.config import PlacementConfig


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DQfDConfig:
    """`learner.dqfd`: Deep Q-learning from Demonstrations (learners/dqfd.py)."""

    pretrain_steps: StrictInt = Field(default=5_000, ge=0)
    """Updates on the demonstrations alone before any interaction."""
    online_env_steps: StrictInt = Field(default=0, ge=0)
    """Env steps of ε-greedy interaction after pre-training (0: offline only)."""
    updates_per_env_step: StrictInt = Field(default=1, ge=1)
    """Gradient updates per env step while interacting."""
    n_step: StrictInt = Field(default=10, ge=1)
    """n of the n-step TD loss (the paper's 10)."""
    margin: float = Field(default=0.8, ge=0)
    """Large-margin supervised loss: Q(s, a) + margin for a != a_E must not exceed Q(s, a_E)."""
    lambda_n_step: float = Field(default=1.0, ge=0)
    """Weight of the n-step TD loss (the 1-step TD loss has weight 1)."""
    lambda_margin: float = Field(default=1.0, ge=0)
    """Weight of the large-margin loss (on demonstration rows only)."""
    l2: float = Field(default=1e-5, ge=0)
    """L2 regularisation (Adam weight decay)."""
    target_update_every: StrictInt = Field(default=500, ge=1)
    """Updates between copies of the network into the target network."""
    priority_alpha: float = Field(default=0.4, ge=0)
    """Prioritized replay: how strongly TD errors set sampling priorities (0: uniform)."""
    priority_beta: float = Field(default=0.6, ge=0, le=1)
    """Prioritized replay: importance-sampling correction (1: full)."""
    eps_demo: float = Field(default=1.0, gt=0)
    """ε_d: priority bonus of demonstration rows (keeps them sampled)."""
    eps_agent: float = Field(default=0.001, gt=0)
    """ε_a: priority floor of the agent's own rows."""
    demo_ratio: Optional[float] = Field(default=None, ge=0, le=1)
    """Share of every interaction-phase minibatch drawn from the demonstrations; None: in
    proportion to the two replays' total priority, as in the paper."""
    agent_capacity_rows: StrictInt = Field(default=100_000, ge=1)
    """Rows of the agent's own replay (FIFO); the demonstrations are never evicted."""
    epsilon: float = Field(default=0.01, ge=0, le=1)
    """Exploration while interacting."""
    log_every: StrictInt = Field(default=1000, ge=1)
    """Updates between history entries (and evaluations)."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PPOConfig:
    """`learner.ppo`: clipped PPO fine-tuning with rollout actors playing the latest weights
    (learners/ppo.py)."""

    env_steps: StrictInt = Field(default=100_000, ge=1)
    """Env steps to train for (all collectors together)."""
    num_collectors: StrictInt = Field(default=2, ge=1)
    """Rollout actors playing the current weights (each a vector env of `env.num_envs`)."""
    collector_num_cpus: float = Field(default=0.25, ge=0)
    """CPUs Ray reserves for each of them (beside the learner's `num_cpus`)."""
    rows_per_collector: StrictInt = Field(default=1024, ge=1)
    """Rows each collector gathers per iteration."""
    epochs: StrictInt = Field(default=4, ge=1)
    """Passes over an iteration's rows."""
    minibatch_size: StrictInt = Field(default=64, ge=1)
    """Rows per update (about 32 updates per collector-iteration of 1,024 rows x 2, as CleanRL's ratio)."""
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    """λ of generalized advantage estimation (1: Monte Carlo returns, 0: one-step TD)."""
    clip: float = Field(default=0.2, gt=0)
    """PPO's clip range ε of the probability ratio."""
    value_coef: float = Field(default=0.5, ge=0)
    """Weight of the value loss."""
    entropy_coef: float = Field(default=0.0, ge=0)
    """Weight of the entropy bonus (more exploration)."""
    kl_coef: float = Field(default=0.0, ge=0)
    """Weight of KL(initial policy || policy), which keeps fine-tuning near the demonstrations."""
    normalize_advantages: bool = True
    """Normalize advantages per minibatch (zero mean, unit std)."""
    value_warmup_iterations: StrictInt = Field(default=1, ge=0)
    """Iterations that fit only the (new) value network, so a good initial policy is not pushed
    around by advantages from an untrained critic."""
    eval_every: StrictInt = Field(default=5, ge=1)
    """Iterations between greedy evaluations (the best return picks best.safetensors)."""
    stop_at_return: Optional[float] = None
    """Stop early once an iteration's collected episodes average at least this return."""
    collect_timeout_s: float = Field(default=600.0, gt=0)
    """How long an iteration waits for its collectors before failing; after a fifth of it, the
    ones not done are logged with the call they are in (`collector 1: env.step for 130s`)."""
    initial_log_std: Optional[float] = None
    """Box actions: set the Gaussian's log-std (before the tanh) to this at the start; None keeps
    the checkpoint's (-0.5 for fresh and BC-trained models, whose loss does not touch it)."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DaggerConfig:
    """`dagger:`: `harvest dagger` rounds of play -> label -> aggregate -> retrain."""

    rounds: StrictInt = Field(default=2, ge=1)
    """Rounds of play, labelling and fine-tuning after the first behaviour cloning."""
    steps_per_round: StrictInt = Field(default=5_000, ge=1)
    """Env steps the current policy plays each round (over `rollout.num_collectors` collectors);
    the critic labels every state it visits."""
    critic: Literal["expert", "person"] = "expert"
    """Who labels: the env's scripted expert (a privileged one, like CarRacing's, reads the
    simulator's state), or a person in the review window (`human:` key map)."""
    review_every: StrictInt = Field(default=1, ge=1)
    """`critic: person`: show every this many frames of the play for review."""
    beta: float = Field(default=0.0, ge=0, le=1)
    """Probability the critic's own action is played (per step) in round 1, times `beta_decay`
    each later round (DAgger's mixture policy; 0: the learner always drives)."""
    beta_decay: float = Field(default=0.5, ge=0, le=1)
    """`beta` is multiplied by this after each round."""
    lr: float = Field(default=5e-5, gt=0)
    """Fine-tuning learning rate of each round (lower than `learner.lr`, the first BC's)."""
    epochs: StrictInt = Field(default=3, ge=1)
    """Epochs per round over the demonstrations and every round's corrections."""
    correction_weight: float = Field(default=1.0, gt=0)
    """Loss weight of a correction row against a demonstration row's 1."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class AugmentConfig:
    """`learner.augment`: image augmentation of training minibatches (pixel observations only)."""

    shift: StrictInt = Field(default=0, ge=0)
    """Random shift by up to this many pixels each way, edges repeated (DrQ uses 4 at 84x84)."""
    brightness: float = Field(default=0.0, ge=0, lt=1)
    """Colour jitter: multiply by 1 +- up to this fraction."""
    contrast: float = Field(default=0.0, ge=0, lt=1)
    """Colour jitter: scale the deviation from the image's mean by 1 +- up to this fraction."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class BCConfig:
    """`learner.bc`: behaviour cloning (learners/bc.py): cross-entropy for discrete actions, MSE
    for continuous ones."""

    epochs: StrictInt = Field(default=10, ge=1)
    """Passes over the training split."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of episodes held out for validation (split by episode, never by row)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """`cosine`: anneal the learning rate to 0 over the whole run (step by step), so the last
    epochs settle instead of jittering by ~lr; it matters where small, systematic action errors
    add up over an episode (a gun that should not turn)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Adam weight decay (L2)."""
    continuous_loss: Literal["mse", "standardized"] = "mse"
    """Box actions: `mse` in the action's own units; `standardized`: each dimension's error
    divided by its spread in the demonstrations (std, at least 1 % of its range), so small
    but systematic errors in a dimension the expert barely uses are not drowned by the others."""
    skip_rows_where: list[str] = Field(default_factory=list)
    """Boolean dataset columns; rows where any is true are not trained or validated on (e.g.
    Robocode's `collision`, `disabled`, `post_round`, whose recovered actions are not exact)."""
    num_workers: StrictInt = Field(default=1, ge=1)
    """> 1 trains data-parallel through Ray Train's TorchTrainer over a Ray Data dataset (one
    model replica per worker, gradients averaged; learners/distributed.py)."""


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class LearnerEvalConfig:
    """`learner.eval`: the greedy episodes a learner plays while it trains (DQfD at every history
    entry, PPO every `ppo.eval_every` iterations, DAgger after every round); the best mean return
    picks best.safetensors. (The run's own evaluation of the finished policy is the top-level `eval:`.)"""

    episodes: StrictInt = Field(default=10, ge=0)
    """Episodes per evaluation (0: DQfD does not evaluate and keeps its last weights as best; PPO
    and DAgger need at least 1)."""
    max_steps: StrictInt = Field(default=10_000, ge=1)
    """Steps after which an evaluation episode is cut off."""
    deterministic: bool = True
    """Evaluations play the most likely action; false samples from the policy, which is what PPO
    optimizes (on Generals the sampled fine-tuned policy won more often while its greedy play
    did not)."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Merged over `env.kwargs` and `learner.env_kwargs` for these evaluations, e.g. `{players:
    first, opponent: expert}` to pick the best Generals checkpoint against the expert rather than
    in self-play."""


Stage = Literal["bc", "dqfd", "ppo"]


def _bc_only() -> list[Stage]:  # (a lambda gets no Literal context from Field's overloads)
    return ["bc"]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class LearnerConfig:
    """`learner:`: the stages a run trains and what they share (the network, the optimizer, the
    data they read, where they run); each algorithm's own settings are in its section."""

    stages: list[Stage] = Field(default_factory=_bc_only, min_length=1)
    """Algorithms trained in turn, each starting from the previous stage's best checkpoint: `bc`
    (behaviour cloning, `learner.bc`), `dqfd` (Deep Q-learning from Demonstrations, `learner.dqfd`,
    Discrete actions), `ppo` (PPO fine-tuning in the live env, `learner.ppo`). With several
    (`[bc, ppo]`, `[bc, dqfd]`), each stage's outputs are in `learner/<n>-<stage>/` and the last
    one's are copied to `learner/` for evaluation."""
    bc: BCConfig = Field(default_factory=BCConfig)
    """Settings of the `bc` stage."""
    dqfd: DQfDConfig = Field(default_factory=DQfDConfig)
    """Settings of the `dqfd` stage."""
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """Settings of the `ppo` stage."""
    eval: LearnerEvalConfig = Field(default_factory=LearnerEvalConfig)
    """The learners' own evaluations while they train."""
    init_checkpoint: Optional[str] = None
    """The first stage starts from these weights (same architecture) instead of fresh ones: BC
    fine-tunes them (DAgger rounds do), DQfD takes their action logits as its initial Q-values,
    PPO fine-tunes them. Later stages start from the stage before's best."""
    model: Literal["auto", "mlp", "cnn", "pixels"] = "auto"
    """Network: `mlp` over the flattened observation; `cnn` over a [C, H, W] board whose tiles
    the Discrete actions are laid out over (Generals.io); `pixels`: a convolutional encoder
    (conv_channels, 8x8/4, 4x4/2, 3x3/1) over an (H, W, C) or stacked (k, H, W, C) image, then
    the MLP; `auto` picks `cnn`, then `pixels`, where they fit."""
    hidden_sizes: list[StrictInt] = Field(default_factory=lambda: [256, 256])
    """Widths of the MLP's hidden layers."""
    conv_channels: list[StrictInt] = Field(default_factory=lambda: [32, 64, 64])
    """Output channels of the CNN's 3x3 convolutions."""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate."""
    batch_size: StrictInt = Field(default=256, ge=1)
    """Samples per gradient step (BC, DQfD and the shadow learner; PPO's is `ppo.minibatch_size`)."""
    gamma: float = Field(default=0.99, gt=0, le=1)
    """Discount factor (DQfD's 1-step and n-step TD targets, PPO's returns and advantages)."""
    max_grad_norm: Optional[float] = Field(default=None, gt=0)
    """Gradients are clipped to this global norm; None: the algorithm's own (DQfD 10, PPO 0.5;
    BC does not clip)."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Merged over `env.kwargs` for the env learners play in (DQfD's interaction and evaluation,
    PPO's collectors), e.g. `{players: first, opponent: expert}` to fine-tune a Generals clone
    against the expert after cloning both sides of its self-play games."""
    action_set: Optional[Union[str, list[list[float]]]] = None
    """BC and DQfD on a Box-action dataset: learn it as Discrete over this set of actions (a
    list of action vectors or the preset `driving`, CarRacing's 9 keyboard combinations), each
    recorded action mapped to its nearest member; the checkpoint plays in the Box env through
    the set. DQfD needs it for Box actions."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Image augmentation for BC and DQfD on pixel observations (none by default)."""
    max_rows: Optional[StrictInt] = Field(default=None, ge=1)
    """Read at most this many rows of the dataset (None: all)."""
    verify_dataset: StrictBool = True
    """Check every dataset file the learner reads against the manifest's size and sha256 as it
    reads it (a damaged file stops training with one line naming it); false
    (`harvest train --no-verify`) reads the files as they are. Paths outside the dataset folder,
    files listed twice and missing files are refused either way."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs for the learner actor (per worker with `bc.num_workers`); it trains on CUDA when Ray gives it one."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision (learners/precision.py): `auto` autocasts the forward pass to bf16 on a
    CUDA GPU that has it and stays fp32 on the CPU; `bf16`/`fp16` ask for autocast anywhere
    (fp16 with a gradient scaler); `fp32` never."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs for the learner actor (also its torch thread count)."""
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    """Where the learner runs, e.g. `{label_selector: {harvest-role: learner}}` on a GPU node group."""
    resume: bool = True
    """After every epoch (BC), iteration (PPO) or history entry (DQfD, every `dqfd.log_every`
    updates) the learner writes `last.safetensors` (weights, optimizer, schedule, random state,
    history; DQfD also its target network, the demonstrations' priorities and a write-ahead log
    of its own transitions); a learner restarted after dying, or a `harvest run --resume`, goes
    on from there instead of starting over."""
    max_restarts: StrictInt = Field(default=2, ge=0)
    """How often Ray restarts a learner actor that died; its `train` call runs again and resumes."""
    seed: StrictInt = 0
    """Seeds the split, the shuffling and the weight init."""

    @property
    def stage(self) -> Stage:
        """The algorithm of a one-stage config (what a learner actor is given)."""
        if len(self.stages) != 1:
            raise ValueError(f"learner.stages {self.stages}: a learner trains one stage at a time")
        return self.stages[0]

    def grad_norm(self, default: float) -> float:
        """`max_grad_norm`, or the algorithm's `default` where it is not set."""
        return default if self.max_grad_norm is None else self.max_grad_norm


_BC_KEYS = ("epochs", "validation_fraction", "lr_schedule", "weight_decay", "continuous_loss", "skip_rows_where")
MOVED_KEYS: dict[str, str] = {
    "learner.algorithm": "learner.stages (a list: `stages: [dqfd]`)",
    "learner.dagger": "dagger (a section at the top)",
    "dagger.eval_episodes": "learner.eval.episodes",
    **{f"learner.{key}": f"learner.bc.{key}" for key in (*_BC_KEYS, "num_workers")},
    **{
        f"learner.{section}.{key}": f"learner.{key}"
        for section in ("dqfd", "ppo")
        for key in ("gamma", "max_grad_norm", "env_kwargs", "init_checkpoint")
    },
    **{
        f"learner.{section}.eval_{key}": f"learner.eval.{key}"
        for section in ("dqfd", "ppo")
        for key in ("episodes", "max_steps")
    },
    "learner.ppo.eval_deterministic": "learner.eval.deterministic",
    "learner.ppo.eval_env_kwargs": "learner.eval.env_kwargs",
}
"""Keys of earlier configs and where they went: a config that still has one is refused with
one line naming the new key (`cluster.config.parse_config`)."""
