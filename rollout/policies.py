"""Policies map a batch of observations to a batch of actions (plus extras for learners).

A collector receives a *policy factory* (a picklable callable
`factory(observation_space, action_space) -> Policy`), so `rollout` never imports
`learners`: a learner's torch policy arrives the same way as a scripted expert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import gymnasium as gym
import numpy as np

from envs.registry import load_entry_point
from envs.spaces import ColumnSpec
from rollout.config import PolicyConfig


@dataclass
class PolicyOutput:
    """Actions for every env in the batch, and optional per-row extra columns."""

    actions: Any
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Policy(Protocol):
    """A policy may also define `bind_env(vector_env)`: the collector calls it once with its env,
    for a privileged expert that reads the simulator's state rather than the observation."""

    version: int
    """Weights version; every row records the version that produced it (0 for scripted policies)."""

    def extra_columns(self) -> Mapping[str, ColumnSpec]:
        """Columns this policy adds to every row (e.g. `logp`), with their per-row spec."""
        ...

    def compute_actions(self, obs: Any) -> PolicyOutput:
        """Actions for a batch of observations shaped like the vector env's observation."""
        ...


PolicyFactory = Callable[[gym.Space, gym.Space], Policy]


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
                raise ValueError(f"RandomPolicy: env {int(np.flatnonzero(~legal.any(axis=1))[0])} of the batch "
                                 "has no legal action in its action_mask")
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
            raise ValueError(f"CartPoleExpert: expected a CartPole (Box(4,), Discrete(2)) env, "
                             f"got {observation_space}, {action_space}")

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
        from envs.car_racing import CarRacingDriver

        sub_envs = getattr(env, "envs", None)
        if sub_envs is None or type(sub_envs[0].unwrapped).__name__ != "CarRacing":
            raise ValueError(f"CarRacingExpert: needs a sync vector env of CarRacing in this process "
                             f"(env.vectorization: sync), got {type(env).__name__}")
        self._envs, self._drivers = list(sub_envs), [CarRacingDriver() for _ in sub_envs]
        self._action_set = None
        if isinstance(sub_envs[0].action_space, gym.spaces.Discrete):  # env.action_set: play the set's indices
            self._action_set = np.asarray(sub_envs[0].get_wrapper_attr("action_set"))

    def compute_actions(self, obs: Any) -> PolicyOutput:
        from envs.action_sets import nearest_index
        from envs.car_racing import driving_action

        if not self._envs:
            raise RuntimeError("CarRacingExpert: bind_env(vector_env) first (it drives from the simulator's state)")
        actions = np.stack([driving_action(driver.controls(env)) for driver, env in zip(self._drivers, self._envs)])
        return PolicyOutput(actions if self._action_set is None else nearest_index(actions, self._action_set)[0])


def generals_expert(observation_space: gym.Space, action_space: gym.Space) -> PlayerPolicy:
    """The scripted Generals.io expert (`envs.generals.players.ExpertPlayer`)."""
    from envs.generals.players import ExpertPlayer

    return PlayerPolicy(ExpertPlayer())


_EXPERTS: dict[str, str] = {
    "CartPole-v0": "rollout.policies:CartPoleExpert",
    "CartPole-v1": "rollout.policies:CartPoleExpert",
    "generals": "rollout.policies:generals_expert",
    "CarRacing-v3": "rollout.policies:CarRacingExpert",
}


LABEL_COLUMN = "label_action"


class LabeledPolicy:
    """Plays `policy` while `critic` labels every state with the action it would take (in
    `label_action`): the relabelling DAgger aggregates. A privileged critic is bound to the env too."""

    def __init__(self, policy: Policy, critic: Policy, action_space: gym.Space, mix: float = 0.0,
                 seed: int | None = None) -> None:
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
        self.policy.set_weights(weights, version)

    def compute_actions(self, obs: Any) -> PolicyOutput:
        played = self.policy.compute_actions(obs)
        labels = np.asarray(self.critic.compute_actions(obs).actions)
        actions = np.asarray(played.actions)
        if self.mix > 0:
            critic_plays = self._rng.random(len(labels)) < self.mix
            actions = np.where(critic_plays.reshape(-1, *[1] * (actions.ndim - 1)), labels.astype(actions.dtype),
                               actions)
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

    def __call__(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        policy = self._build(observation_space, action_space)
        if self.cfg.label_with == "expert":
            return LabeledPolicy(policy, self._expert(observation_space, action_space), action_space,
                                 self.cfg.label_mix, self.seed)
        return policy

    def _expert(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        if self.env_id not in _EXPERTS:
            raise LookupError(f"policy: no scripted expert is registered for env {self.env_id!r}; known: "
                              f"{sorted(_EXPERTS)}")
        return load_entry_point(_EXPERTS[self.env_id], "expert")(observation_space, action_space)

    def _build(self, observation_space: gym.Space, action_space: gym.Space) -> Policy:
        if self.cfg.kind == "random":
            return RandomPolicy(observation_space, action_space, seed=self.seed)
        if self.cfg.kind == "expert":
            return self._expert(observation_space, action_space)
        if self.cfg.kind == "torch":
            # Imported by name so that rollout does not depend on learners.
            factory = load_entry_point("learners.policy:load_torch_policy", "policy")
            return factory(self.cfg.checkpoint, deterministic=self.cfg.deterministic, seed=self.seed,
                           record_logits=self.cfg.record_logits, env_action_space=action_space)
        return load_entry_point(self.cfg.entry_point, "policy.entry_point")(observation_space, action_space)
