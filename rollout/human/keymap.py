"""From held keys and gamepad axes to an env action: the key map of a teleoperation session.

Keys name *controls* (`throttle`, `steer_left`, `action_1`, ...); a control says what it does
to the action (`ControlConfig`). The defaults are the driving layout for Box(3) (steer, gas,
brake) action spaces — W/up throttle, S/down brake 0.8, A/left and D/right steer, as
Gymnasium's own CarRacing keyboard play — and arrows/digits for Discrete ones. A scripted
player asks `key_for(control)` which key to press, so it plays through the same map.
"""

from __future__ import annotations

from typing import Iterable

import gymnasium as gym
import numpy as np

from harvest.envs.car_racing import BRAKE, CONTROL_EFFECTS, STEER_LEFT, STEER_RIGHT, THROTTLE
from harvest.rollout.human.config import AxisConfig, ControlConfig, HumanConfig

DRIVING_CONTROLS = {name: ControlConfig(index, value) for name, (index, value) in CONTROL_EFFECTS.items()}
DRIVING_KEYS = {
    "w": THROTTLE,
    "up": THROTTLE,
    "s": BRAKE,
    "down": BRAKE,
    "a": STEER_LEFT,
    "left": STEER_LEFT,
    "d": STEER_RIGHT,
    "right": STEER_RIGHT,
}
DRIVING_AXES = {
    0: AxisConfig(index=0),
    5: AxisConfig(index=1, scale=0.5, offset=0.5, rest=-1.0),
    4: AxisConfig(index=2, scale=0.4, offset=0.4, rest=-1.0),
}


class KeyMapError(ValueError):
    """The `human:` key map does not fit the env's action space (the message names the entry)."""


def is_driving_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.shape == (3,)


def _discrete_defaults(space: gym.spaces.Discrete) -> tuple[dict[str, ControlConfig], dict[str, str]]:
    count = min(int(space.n), 9)
    controls = {f"action_{i}": ControlConfig(0, float(space.start + i)) for i in range(count)}
    keys = {str(i + 1): f"action_{i}" for i in range(count)}
    for key, i in (("left", 0), ("right", 1), ("up", 2), ("down", 3)):
        if i < count:
            keys[key] = f"action_{i}"
    return controls, keys


class KeyMap:
    """Which key holds which control, and the action a set of held controls gives."""

    def __init__(self, cfg: HumanConfig, action_space: gym.Space) -> None:
        self.action_space = action_space
        if isinstance(action_space, gym.spaces.Discrete):
            default_controls, default_keys = _discrete_defaults(action_space)
        elif is_driving_space(action_space):
            default_controls, default_keys = DRIVING_CONTROLS, DRIVING_KEYS
        elif cfg.controls is None or cfg.keys is None:
            raise KeyMapError(
                f"human.controls / human.keys: no default key map for the action space {action_space}; "
                "give both (key -> control, control -> {index, value})"
            )
        else:
            default_controls, default_keys = {}, {}
        self.controls: dict[str, ControlConfig] = dict(cfg.controls if cfg.controls is not None else default_controls)
        self.keys: dict[str, str] = {
            key.lower(): control for key, control in (cfg.keys if cfg.keys is not None else default_keys).items()
        }
        self.noop_action = cfg.noop_action
        axes = (
            cfg.gamepad.axes
            if cfg.gamepad.axes is not None
            else (DRIVING_AXES if is_driving_space(action_space) else {})
        )
        self.axes: dict[int, AxisConfig] = dict(axes)
        self.buttons: dict[int, str] = dict(cfg.gamepad.buttons)
        self._check()

    def _check(self) -> None:
        for key, control in self.keys.items():
            if control not in self.controls:
                raise KeyMapError(f"human.keys.{key}: no control {control!r}; controls are {sorted(self.controls)}")
        for button, control in self.buttons.items():
            if control not in self.controls:
                raise KeyMapError(
                    f"human.gamepad.buttons.{button}: no control {control!r}; controls are {sorted(self.controls)}"
                )
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            for name, control_cfg in self.controls.items():
                if not (float(control_cfg.value).is_integer() and space.contains(int(control_cfg.value))):
                    raise KeyMapError(f"human.controls.{name}.value: {control_cfg.value} is not an action of {space}")
            if not space.contains(int(self.noop_action)):
                raise KeyMapError(f"human.noop_action: {self.noop_action} is not an action of {space}")
            if self.axes:
                raise KeyMapError("human.gamepad.axes: analog axes need a Box action space; map buttons instead")
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            for where, index in [
                *((f"controls.{n}", c.index) for n, c in self.controls.items()),
                *((f"gamepad.axes.{a}", c.index) for a, c in self.axes.items()),
            ]:
                if index >= space.shape[0]:
                    raise KeyMapError(f"human.{where}.index: {index}, but actions have {space.shape[0]} components")
        else:
            raise KeyMapError(f"human: teleoperation needs a Discrete or a flat Box action space, not {space}")

    def key_for(self, control: str) -> str:
        """The first key bound to `control` (what a scripted player presses)."""
        for key, bound in self.keys.items():
            if bound == control:
                return key
        raise KeyMapError(f"human.keys: no key is bound to the control {control!r}")

    def controls_of(self, held_keys: Iterable[str]) -> list[str]:
        """The controls the held keys (in the order they were pressed) hold; unbound keys are ignored."""
        controls = [self.keys[key] for key in held_keys if key in self.keys]
        return list(dict.fromkeys(controls))

    def action(self, held_controls: Iterable[str], axes: dict[int, float] | None = None) -> np.ndarray | int:
        """The action for these held controls (in press order) and gamepad axis positions."""
        held = list(held_controls)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(self.controls[held[-1]].value) if held else int(self.noop_action)
        assert isinstance(space, gym.spaces.Box)  # _check lets only Discrete or a flat Box through
        action = np.zeros(space.shape, np.float64)
        for name in held:
            control = self.controls[name]
            action[control.index] += control.value
        for axis, position in (axes or {}).items():
            mapping = self.axes.get(axis)
            if mapping is not None and abs(position - mapping.rest) > mapping.deadzone:
                action[mapping.index] += mapping.scale * position + mapping.offset
        return np.clip(action, space.low, space.high).astype(space.dtype)
