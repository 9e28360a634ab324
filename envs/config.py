"""The `env:` section of a run config."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class EnvConfig:
    id: str = "CartPole-v1"
    """A Gymnasium id (`CartPole-v1`), a name registered with `envs.register_env`, or a
    user's env class or factory as `"package.module:Class"`."""
    num_envs: StrictInt = Field(default=8, ge=1)
    """Env copies inside one collector's vector env (one collector steps them together)."""
    vectorization: Literal["auto", "vector_entry_point", "sync", "async"] = "auto"
    """How copies are batched: `auto` uses the env's native vector implementation when it
    has one (CartPole does) and `sync` otherwise; `async` runs one subprocess per copy."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the env constructor."""
    max_episode_steps: Optional[StrictInt] = Field(default=None, ge=1)
    """Truncate episodes after this many steps (None keeps the env's own limit)."""
    frame_stack: Optional[StrictInt] = Field(default=None, ge=2)
    """Observe the last k frames at once (Gymnasium's FrameStackObservation): observations
    become (k, ...) arrays, which the pixel encoder reads as channels."""
    action_set: Optional[Union[str, list[list[float]]]] = None
    """Play a Box-action env through a discrete set of its actions (a list of action vectors,
    or the preset `driving`: CarRacing's 9 keyboard combinations); the action space becomes
    Discrete (what DQfD needs)."""
