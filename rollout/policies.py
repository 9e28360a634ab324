"""Policies map a batch of observations to a batch of actions (plus extras for learners).

A collector receives a *policy factory* (a picklable callable
`factory(observation_space, action_space) -> Policy`), so `rollout` never imports
`learners`: a learner's torch policy arrives the same way as a scripted expert.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from harvest.envs.config import EnvConfig
from harvest.envs.registry import load_entry_point, make_vector_env
from harvest.envs.spaces import ColumnSpec, leaf_spaces, space_from_json
from harvest.rollout.config import PolicyConfig


@dataclass
class PolicyOutput:
    """Actions for every env in the batch, and optional per-row extra columns."""

    actions: Any
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Policy(Protocol):
    """A policy may also define `bind_env(vector_env)`: the collector calls it once with its env,
    for a privileged expert that reads the simulator's state rather than the observation."""

    @property
    def version(self) -> int:
        """Weights version; every row records the version that produced it (0 for scripted policies)."""
        ...

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        """Columns this policy adds to every row (e.g. `logp`), with their per-row spec."""
        ...

    def compute_actions(self, obs: Any) -> PolicyOutput:
        """Actions for a batch of observations shaped like the vector env's observation."""
        ...


@runtime_checkable
class TrainablePolicy(Policy, Protocol):
    """A policy whose weights a learner replaces while it plays (`kind: torch`)."""

    def set_weights(self, weights: Any, version: int) -> None:
        """Load `weights`; the rows from now on record `version`."""
        ...


PolicyFactory = Callable[[gym.Space, gym.Space], Policy]


CHECKPOINT_HEADER_KEY = "harvest"
"""A learner checkpoint's safetensors metadata key: JSON with its spaces, model and info."""
CHECKPOINT_ACTION_SET_KEY = "action_set"
"""`info[...]` of a checkpoint learned over an action set (it plays a Box env through the set)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not written by Harvest."""


class CheckpointSpaceError(CheckpointError):
    """A checkpoint's observation or action space is not the one of the env it is asked to play."""


def checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a learner checkpoint (spaces, model, version, info), read without its weights.

    Raises:
        CheckpointError: no such file, not a safetensors file, or not one written by Harvest.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError, not exported stably
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint: {err}") from err
    if CHECKPOINT_HEADER_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file has no {CHECKPOINT_HEADER_KEY!r} metadata; not a Harvest checkpoint"
        )
    return json.loads(metadata[CHECKPOINT_HEADER_KEY])


def describe_space(space: gym.Space) -> str:
    """A short name of a space for messages: `Box(4,) float32`, `Discrete(3)`, `Dict(grid: Box(3, 4, 4) uint8)`."""
    if isinstance(space, gym.spaces.Box):
        return f"Box{space.shape} {space.dtype}"
    if isinstance(space, gym.spaces.Dict):
        return "Dict(" + ", ".join(f"{key}: {describe_space(sub)}" for key, sub in space.spaces.items()) + ")"
    if isinstance(space, gym.spaces.Tuple):
        return "Tuple(" + ", ".join(describe_space(sub) for sub in space.spaces) + ")"
    return str(space)


def _leaf_signature(space: gym.Space) -> tuple:
    """What a model depends on in one leaf space: a Box's shape and dtype (not its bounds), a
    Discrete's size and start, a MultiDiscrete's sizes, a MultiBinary's shape."""
    if isinstance(space, gym.spaces.Box):
        return "Box", space.shape, str(space.dtype)
    if isinstance(space, gym.spaces.Discrete):
        return "Discrete", int(space.n), int(space.start)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return "MultiDiscrete", tuple(space.nvec.ravel().tolist()), space.nvec.shape
    if isinstance(space, gym.spaces.MultiBinary):
        return "MultiBinary", tuple(np.atleast_1d(space.n).tolist())
    return (str(space),)


def _same_layout(trained: gym.Space, env: gym.Space) -> bool:
    """Whether both spaces have the same leaves (by name) with the same signature."""

    def signature(space: gym.Space) -> dict[str, tuple]:
        return {name: _leaf_signature(leaf) for name, leaf in leaf_spaces(space, "").items()}

    return signature(trained) == signature(env)


def check_spaces(checkpoint: str | Path, env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse a checkpoint whose spaces are not those of the env it is to play (same leaves,
    shapes, dtypes and sizes; Box bounds may differ). A checkpoint learned over an action set
    (Discrete) plays a Box env whose actions have the set's shape.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        CheckpointSpaceError: the spaces differ; one line names both.
    """
    header = checkpoint_header(checkpoint)
    trained_obs = space_from_json(header["observation_space"])
    trained_action = space_from_json(header["action_space"])
    action_fits = _same_layout(trained_action, action_space)
    action_set = header.get("info", {}).get(CHECKPOINT_ACTION_SET_KEY)
    if (
        not action_fits
        and action_set is not None
        and isinstance(trained_action, gym.spaces.Discrete)
        and isinstance(action_space, gym.spaces.Box)
    ):
        action_fits = np.asarray(action_set).shape[1:] == action_space.shape
    if _same_layout(trained_obs, observation_space) and action_fits:
        return
    raise CheckpointSpaceError(
        f"{checkpoint}: trained for obs {describe_space(trained_obs)} / action {describe_space(trained_action)}, "
        f"but env {env_id} has obs {describe_space(observation_space)} / action {describe_space(action_space)}"
    )


def env_spaces(env_cfg: EnvConfig) -> tuple[gym.Space, gym.Space]:
    """The observation and action space of one copy of `env_cfg`'s env, wrappers included (as a
    collector sees them), from one env built in this process and closed again."""
    one = dataclasses.replace(
        env_cfg, num_envs=1, vectorization="sync" if env_cfg.vectorization == "async" else env_cfg.vectorization
    )
    env = make_vector_env(one)
    try:
        return env.single_observation_space, env.single_action_space
    finally:
        env.close()


def check_checkpoint_spaces(checkpoint: str | Path, env_cfg: EnvConfig) -> None:
    """`check_spaces` against the env `env_cfg` builds: call it in the driver before actors start.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        CheckpointSpaceError: its spaces are not the env's.
    """
    check_spaces(checkpoint, env_cfg.id, *env_spaces(env_cfg))


class RandomPolicy:
    """Uniformly random actions from the action space; only legal ones where the observation
    is a dict with an `action_mask` over a Discrete action space (1 = legal)."""

    version = 0

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, seed: int | None = None) -> None:
        self.action_space = action_space
        self._rng = np.random.default_rng(seed)
        action_space.seed(seed)

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        return {}

    def compute_actions(self, obs: Any) -> PolicyOutput:
        num_envs = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete) and isinstance(obs, dict) and "action_mask" in obs:
            legal = np.asarray(obs["action_mask"]) > 0
            if not legal.any(axis=1).all():
                raise ValueError(
                    f"RandomPolicy: env {int(np.flatnonzero(~legal.any(axis=1))[0])} of the batch "
                    "has no legal action in its action_mask"
                )
            keys = np.where(legal, self._rng.random(legal.shape), -1.0)
            return PolicyOutput(space.start + keys.argmax(axis=1))
        if isinstance(space, gym.spaces.Discrete):
            actions = self._rng.integers(space.start, space.start + space.n, size=num_envs)
        else:
            actions = gym.vector.utils.batch_space(space, num_envs).sample()
        return PolicyOutput(actions)


class CartPoleExpert:
    """A PD controller on pole angle and cart motion: averages 500 (the maximum) on CartPole-v1."""

    version = 0

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        if observation_space.shape != (4,) or not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(
                f"CartPoleExpert: expected a CartPole (Box(4,), Discrete(2)) env, "
                f"got {observation_space}, {action_space}"
            )

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        return {}

    def compute_actions(self, obs: np.ndarray) -> PolicyOutput:
        cart_position, cart_velocity, pole_angle, pole_velocity = obs.T
        push_right = pole_angle + 0.3 * pole_velocity + 0.01 * cart_position + 0.1 * cart_velocity > 0
        return PolicyOutput(push_right.astype(np.int64))


class PlayerPolicy:
    """A scripted player (an object with `act(obs) -> actions`) as a Policy."""

    version = 0

    def __init__(self, player: Any) -> None:
        self.player = player

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        return {}

    def compute_actions(self, obs: Any) -> PolicyOutput:
        return PolicyOutput(self.player.act(obs))


class CarRacingExpert:
    """The scripted CarRacing driver (`envs.car_racing.CarRacingDriver`) as a policy.

    A privileged expert: it reads the car and the track from the sub-envs it is bound to, not
    the pixels, so the collector's vector env must keep them in this process (`env.vectorization:
    sync`, which `auto` picks for CarRacing)."""

    version = 0

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self._envs: list[gym.Env] = []
        self._drivers: list[Any] = []

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        return {}

    def bind_env(self, env: Any) -> None:
        from harvest.envs.car_racing import CarRacingDriver

        sub_envs = getattr(env, "envs", None)
        if sub_envs is None or type(sub_envs[0].unwrapped).__name__ != "CarRacing":
            raise ValueError(
                f"CarRacingExpert: needs a sync vector env of CarRacing in this process "
                f"(env.vectorization: sync), got {type(env).__name__}"
            )
        self._envs, self._drivers = list(sub_envs), [CarRacingDriver() for _ in sub_envs]
        self._action_set = None
        if isinstance(sub_envs[0].action_space, gym.spaces.Discrete):  # env.action_set: play the set's indices
            self._action_set = np.asarray(sub_envs[0].get_wrapper_attr("action_set"))

    def compute_actions(self, obs: Any) -> PolicyOutput:
        from harvest.envs.action_sets import nearest_index
        from harvest.envs.car_racing import driving_action

        if not self._envs:
            raise RuntimeError("CarRacingExpert: bind_env(vector_env) first (it drives from the simulator's state)")
        actions = np.stack([driving_action(driver.controls(env)) for driver, env in zip(self._drivers, self._envs)])
        return PolicyOutput(actions if self._action_set is None else nearest_index(actions, self._action_set)[0])


def generals_expert(observation_space: gym.Space, action_space: gym.Space) -> PlayerPolicy:
    """The scripted Generals.io expert (`envs.generals.players.ExpertPlayer`)."""
    from harvest.envs.generals.players import ExpertPlayer

    return PlayerPolicy(ExpertPlayer())


_EXPERTS: dict[str, str] = {
    "CartPole-v0": "harvest.rollout.policies:CartPoleExpert",
    "CartPole-v1": "harvest.rollout.policies:CartPoleExpert",
    "generals": "harvest.rollout.policies:generals_expert",
    "CarRacing-v3": "harvest.rollout.policies:CarRacingExpert",
}


LABEL_COLUMN = "label_action"


class LabeledPolicy:
    """Plays `policy` while `critic` labels every state with the action it would take (in
    `label_action`): the relabelling DAgger aggregates. A privileged critic is bound to the env too."""

    def __init__(
        self, policy: Policy, critic: Policy, action_space: gym.Space, mix: float = 0.0, seed: int | None = None
    ) -> None:
        self.policy, self.critic, self._action_space = policy, critic, action_space
        self.mix = mix
        """Probability that a row plays the critic's action instead of the policy's."""
        self._rng = np.random.default_rng(seed)

    @property
    def version(self) -> int:
        return self.policy.version

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        space = self._action_space
        spec = ColumnSpec(space.dtype, space.shape) if isinstance(space, gym.spaces.Box) else ColumnSpec(np.int64, ())
        return {**self.policy.extra_columns(), LABEL_COLUMN: spec}

    def bind_env(self, env: Any) -> None:
        for part in (self.policy, self.critic):
            if hasattr(part, "bind_env"):
                part.bind_env(env)

    def set_weights(self, weights: Any, version: int) -> None:
        if not isinstance(self.policy, TrainablePolicy):
            raise AttributeError(f"LabeledPolicy: its policy ({type(self.policy).__name__}) has no weights to set")
        self.policy.set_weights(weights, version)

    def compute_actions(self, obs: Any) -> PolicyOutput:
        played = self.policy.compute_actions(obs)
        labels = np.asarray(self.critic.compute_actions(obs).actions)
        actions = np.asarray(played.actions)
        if self.mix > 0:
            critic_plays = self._rng.random(len(labels)) < self.mix
            actions = np.where(
                critic_plays.reshape(-1, *[1] * (actions.ndim - 1)), labels.astype(actions.dtype), actions
            )
        return PolicyOutput(actions, {**played.extras, LABEL_COLUMN: labels})


def register_expert(env_id: str, entry_point: str) -> None:
    """Name the scripted expert (`"package.module:factory"`) that `policy.kind: expert` plays in `env_id`."""
    _EXPERTS[env_id] = entry_point


@dataclass(frozen=True)
class ConfiguredPolicyFactory:
    """A picklable factory built from the `policy:` config section for one env."""

    cfg: PolicyConfig
    env_id: str
    seed: int | None = None
    load_torch: Callable[..., Policy] | None = None
    """Plays a `kind: torch` checkpoint: the learners' `load_torch_policy`, given by whoever composes
    the run (rollout does not depend on learners)."""

    def __call__(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        self.check_spaces(observation_space, action_space)
        policy = self._build(observation_space, action_space)
        if self.cfg.label_with == "expert":
            return LabeledPolicy(
                policy, self._expert(observation_space, action_space), action_space, self.cfg.label_mix, self.seed
            )
        return policy

    def check_spaces(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        """For `kind: torch`, refuse a checkpoint trained for other spaces (`CheckpointSpaceError`)."""
        if self.cfg.kind == "torch" and self.cfg.checkpoint:
            check_spaces(self.cfg.checkpoint, self.env_id, observation_space, action_space)

    def _expert(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        if self.env_id not in _EXPERTS:
            raise LookupError(
                f"policy: no scripted expert is registered for env {self.env_id!r}; known: {sorted(_EXPERTS)}"
            )
        return load_entry_point(_EXPERTS[self.env_id], "expert")(observation_space, action_space)

    def _build(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        if self.cfg.kind == "random":
            return RandomPolicy(observation_space, action_space, seed=self.seed)
        if self.cfg.kind == "expert":
            return self._expert(observation_space, action_space)
        if self.cfg.kind == "torch":
            if self.load_torch is None:
                raise ValueError(
                    f"policy.kind: torch ({self.cfg.checkpoint}) needs a loader: build the factory with "
                    "load_torch=harvest.learners.policy.load_torch_policy"
                )
            return self.load_torch(
                self.cfg.checkpoint,
                deterministic=self.cfg.deterministic,
                seed=self.seed,
                record_logits=self.cfg.record_logits,
                env_action_space=action_space,
            )
        assert self.cfg.entry_point is not None  # PolicyConfig requires it for kind: custom, the kind left
        return load_entry_point(self.cfg.entry_point, "policy.entry_point")(observation_space, action_space)
