"""Build vector envs by name: Gymnasium ids, Harvest-registered names, or user entry points."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv

from harvest.envs.config import EnvConfig
from harvest.envs.spaces import ColumnSpec


class EnvNotFoundError(LookupError):
    """`env.id` names no Gymnasium env, registered Harvest env, or importable entry point."""


_HARVEST_ENVS: dict[str, str] = {
    "generals": "harvest.envs.generals.env:GeneralsVectorEnv",
}

ROW_COLUMNS_KEY = "harvest_row_columns"
"""An env's `metadata[ROW_COLUMNS_KEY]` names per-row columns (name -> `ColumnSpec`) whose
values it returns in `info[name]` every step, one per sub-env (e.g. `game_id`, `player_id`)."""


def row_columns(env: gym.Env | VectorEnv) -> dict[str, ColumnSpec]:
    """The per-row columns `env` declares in its metadata (see `ROW_COLUMNS_KEY`).

    Raises:
        TypeError: a declared column is not a `ColumnSpec`.
    """
    declared = dict(env.metadata.get(ROW_COLUMNS_KEY, {}))
    for name, spec in declared.items():
        if not isinstance(spec, ColumnSpec):
            raise TypeError(
                f"{type(env).__name__}.metadata[{ROW_COLUMNS_KEY!r}][{name!r}]: expected a ColumnSpec, "
                f"got {type(spec).__name__}"
            )
    return declared


def register_env(name: str, entry_point: str) -> None:
    """Make `name` usable as `env.id`; `entry_point` is `"package.module:ClassOrFactory"`."""
    _HARVEST_ENVS[name] = entry_point


def registered_envs() -> dict[str, str]:
    """Harvest's own env names and their entry points."""
    return dict(_HARVEST_ENVS)


def load_entry_point(entry_point: str, what: str = "env.id") -> Callable[..., Any]:
    """Import `"package.module:attr"` and return the attribute."""
    module_name, _, attr = entry_point.partition(":")
    if not module_name or not attr:
        raise EnvNotFoundError(f"{what}: {entry_point!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        top = sys.modules.get(module_name.split(".")[0])
        found = f" ({module_name.split('.')[0]!r} was found at {list(getattr(top, '__path__', []))})" if top else ""
        raise EnvNotFoundError(
            f"{what}: cannot import module {module_name!r} of {entry_point!r}: {err}{found}; searched {sys.path}"
        ) from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise EnvNotFoundError(f"{what}: module {module_name!r} has no attribute {attr!r}") from err


def _is_parallel_env(factory: Callable[..., Any], cfg: EnvConfig) -> bool:
    """Whether the entry point makes a PettingZoo ParallelEnv (a class says so; a factory is tried)."""
    from pettingzoo import ParallelEnv

    if isinstance(factory, type):
        return issubclass(factory, ParallelEnv)
    probe = factory(**cfg.kwargs)
    try:
        return isinstance(probe, ParallelEnv)
    finally:
        probe.close()


def make_vector_env(cfg: EnvConfig) -> VectorEnv:
    """A vector env of `cfg.num_envs` copies of `cfg.id`.

    Raises:
        EnvNotFoundError: the id is neither a Gymnasium id, a registered name nor an entry point.
    """
    entry_point = _HARVEST_ENVS.get(cfg.id, cfg.id if ":" in cfg.id else None)
    if entry_point is not None:
        return _vectorize(load_entry_point(entry_point), cfg)
    try:
        spec = gym.spec(cfg.id)
    except gym.error.Error as err:
        raise EnvNotFoundError(
            f"env.id: {cfg.id!r} is not a Gymnasium id, a Harvest env ({sorted(_HARVEST_ENVS)}) "
            f"or an entry point 'package.module:Class': {err}"
        ) from err
    mode = cfg.vectorization
    wrappers = env_wrappers(cfg)
    if mode == "auto":
        mode = "vector_entry_point" if spec.vector_entry_point is not None and not wrappers else "sync"
    if mode == "vector_entry_point" and wrappers:
        raise EnvNotFoundError(
            f"env.vectorization: vector_entry_point cannot wrap {cfg.id!r}'s copies "
            "(env.frame_stack / env.action_set); use sync or async"
        )
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    try:
        return gym.make_vec(
            cfg.id,
            num_envs=cfg.num_envs,
            vectorization_mode=mode,
            wrappers=wrappers or None,
            **kwargs,
        )
    except gym.error.DependencyNotInstalled as err:
        raise _missing_extra(cfg.id, err) from err


def env_wrappers(cfg: EnvConfig) -> list[Callable[[gym.Env], gym.Wrapper]]:
    """The wrappers `env.action_set` and `env.frame_stack` put around each env copy, in order."""
    wrappers: list[Callable[[gym.Env], gym.Wrapper]] = []
    action_set, frame_stack = cfg.action_set, cfg.frame_stack
    if action_set is not None:
        from harvest.envs.action_sets import DiscreteActions

        wrappers.append(lambda env: DiscreteActions(env, action_set))
    if frame_stack is not None:
        wrappers.append(lambda env: gym.wrappers.FrameStackObservation(env, frame_stack))
    return wrappers


def _wrapped(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    for wrap in env_wrappers(cfg):
        env = wrap(env)
    return env


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One env of `cfg.id`, not vectorized (what a person plays through a window).

    Raises:
        EnvNotFoundError: the id names nothing, or something that is not a single `gymnasium.Env`.
    """
    kwargs = dict(cfg.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    entry_point = _HARVEST_ENVS.get(cfg.id, cfg.id if ":" in cfg.id else None)
    if entry_point is None:
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        try:
            return _wrapped(gym.make(cfg.id, **kwargs), cfg)
        except gym.error.DependencyNotInstalled as err:
            raise _missing_extra(cfg.id, err) from err
        except gym.error.Error as err:
            raise EnvNotFoundError(
                f"env.id: {cfg.id!r} is not a Gymnasium id or an entry point 'package.module:Class': {err}"
            ) from err
    factory = load_entry_point(entry_point)
    if isinstance(factory, type) and issubclass(factory, VectorEnv):
        raise EnvNotFoundError(f"env.id: {cfg.id!r} is a vector env; one gymnasium.Env is needed here")
    env = factory(**kwargs)
    if not isinstance(env, gym.Env):
        raise EnvNotFoundError(f"env.id: {cfg.id!r} built a {type(env).__name__}, expected a gymnasium.Env")
    if cfg.max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
    return _wrapped(env, cfg)


def _vectorize(factory: Callable[..., Any], cfg: EnvConfig) -> VectorEnv:
    if isinstance(factory, type) and issubclass(factory, VectorEnv):
        if env_wrappers(cfg):
            raise EnvNotFoundError(
                f"env.id: {cfg.id!r} is a vector env of its own; env.frame_stack and env.action_set wrap single envs"
            )
        vector_factory: Callable[..., VectorEnv] = factory  # a subclass whose constructor takes num_envs
        return vector_factory(num_envs=cfg.num_envs, **cfg.kwargs)
    if _is_parallel_env(factory, cfg):
        from harvest.envs.pettingzoo_vector import ParallelEnvVector

        return ParallelEnvVector(factory, cfg.num_envs, **cfg.kwargs)

    def make_one() -> gym.Env:
        env = factory(**cfg.kwargs)
        if not isinstance(env, gym.Env):
            raise EnvNotFoundError(f"env.id: {cfg.id!r} built a {type(env).__name__}, expected a gymnasium.Env")
        if cfg.max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
        return _wrapped(env, cfg)

    if cfg.vectorization == "async":
        return AsyncVectorEnv([make_one] * cfg.num_envs)
    return SyncVectorEnv([make_one] * cfg.num_envs)


def check_env_id(cfg: EnvConfig) -> None:
    """Raise `EnvNotFoundError` now if `cfg.id` names nothing (without building an env), so a
    driver can say so before it starts Ray and actors."""
    entry_point = _HARVEST_ENVS.get(cfg.id, cfg.id if ":" in cfg.id else None)
    if entry_point is not None:
        load_entry_point(entry_point)
        return
    try:
        spec = gym.spec(cfg.id)
    except gym.error.Error as err:
        raise EnvNotFoundError(
            f"env.id: {cfg.id!r} is not a Gymnasium id, a Harvest env ({sorted(_HARVEST_ENVS)}) "
            f"or an entry point 'package.module:Class': {err}"
        ) from err
    if isinstance(spec.entry_point, str) and ":" in spec.entry_point:  # its module's own imports (e.g. Box2D)
        try:
            importlib.import_module(spec.entry_point.partition(":")[0])
        except gym.error.DependencyNotInstalled as err:
            raise _missing_extra(cfg.id, err) from err


def _missing_extra(env_id: str, err: Exception) -> ImportError:
    """Gymnasium's "X is not installed" for `env_id`, with the Harvest extra that installs X."""
    from harvest.envs.extras import EXTRA_OF_MODULE, MissingExtraError, install_hint

    text = str(err).splitlines()[0]
    extra = next((extra for module, extra in EXTRA_OF_MODULE.items() if module.lower() in text.lower()), None)
    return MissingExtraError(
        f"env.id: {env_id!r} needs a package that is not installed ({text})"
        + (f": {install_hint(extra)}" if extra else "")
    )
