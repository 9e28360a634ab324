"""The `human:` section of a run config: a person (or the scripted stand-in) at the keyboard."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field, StrictInt
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class ControlConfig:
    """What holding a control does to the action: for a Box action space, `value` is added to
    component `index` (several held controls add up, then the sum is clipped to the space); for
    a Discrete one, `value` is the action itself (the last control pressed wins)."""

    index: StrictInt = Field(default=0, ge=0)
    """Box actions: the action component the control moves."""
    value: float = 1.0
    """Box actions: added to component `index` while held; Discrete: the action itself."""


@dataclass(frozen=True, config=_STRICT)
class AxisConfig:
    """A gamepad axis (-1..1) adding `scale * position + offset` to action component `index`
    when the axis is outside `deadzone` of its rest position."""

    index: StrictInt = Field(ge=0)
    """The action component the axis moves."""
    scale: float = 1.0
    """Multiplies the axis position (-1..1); negative flips it."""
    offset: float = 0.0
    """Added after scaling (e.g. 1 with scale 0.5 maps a trigger's -1..1 to 0..1)."""
    rest: float = 0.0
    """The axis position when untouched (triggers rest at -1)."""
    deadzone: float = Field(default=0.1, ge=0, lt=1)
    """Positions closer than this to rest count as rest (no input)."""


@dataclass(frozen=True, config=_STRICT)
class GamepadConfig:
    """The first gamepad pygame finds, if any: axes add analog values, buttons hold controls."""

    enabled: bool = True
    """Read the first gamepad pygame finds (false: keyboard only)."""
    axes: Optional[dict[int, AxisConfig]] = None
    """None: the driving default for Box(3) (steer, gas, brake) actions: stick 0 x steers,
    right trigger (axis 5) is gas, left trigger (axis 4) brakes; none for other action spaces."""
    buttons: dict[int, str] = Field(default_factory=dict)
    """Button number -> control name (e.g. {0: throttle})."""


@dataclass(frozen=True, config=_STRICT)
class ShadowConfig:
    """`human.shadow`: a learner trains on the person's rows while they play; the shadow
    policy's action is recorded beside theirs on every row, and a key hands it the controls."""

    interval_s: float = Field(default=5.0, gt=0)
    """Seconds between training rounds (each ends with new weights, version + 1)."""
    updates_per_round: StrictInt = Field(default=50, ge=1)
    """BC minibatch updates per round (architecture, batch size, lr, augmentation: `learner:`)."""
    max_rows: StrictInt = Field(default=50_000, ge=1)
    """The most recent rows of the person's the learner keeps in memory."""
    min_rows: StrictInt = Field(default=64, ge=1)
    """Rows before the first round."""
    handover_key: str = "h"
    """Hands the controls to the shadow policy and takes them back (rows record `driver`)."""
    agreement_window: StrictInt = Field(default=250, ge=1)
    """Frames the live agreement is averaged over."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs for the shadow learner actor (`learner.num_gpus` GPUs when set)."""


@dataclass(frozen=True, config=_STRICT)
class HumanConfig:
    """A teleoperation session: a window shows the env, the keyboard (and a gamepad) drive it,
    every frame goes into the replay with `source=human`."""

    operator: str = "anonymous"
    """Who plays; written on every row."""
    driver: Literal["person", "scripted"] = "person"
    """`scripted`: the env's scripted driver plays through real key events sent to the window
    (xdotool), for demos and tests; it needs `lockstep` and an X display (its own Xvfb is fine)."""
    fps: Optional[float] = Field(default=None, gt=0)
    """Frames per second; None: the env's `render_fps` (CarRacing: 50), or 60 without one."""
    lockstep: bool = False
    """Advance one frame per press of `advance_key` instead of by the clock (frame-exact input)."""
    lockstep_timeout_s: float = Field(default=120.0, gt=0)
    """`lockstep`: how long a frame waits for its `advance_key` press before the session fails
    (the scripted driver's presses come late on a busy machine; a person may pause with P)."""
    keys: Optional[dict[str, str]] = None
    """pygame key name -> control name. None: W/up throttle, S/down brake, A/left and D/right
    steer (driving, for Box(3) actions), or left/right/up/down/1-9 for Discrete actions."""
    controls: Optional[dict[str, ControlConfig]] = None
    """Control name -> its effect. None: the default for the action space (see `keys`)."""
    noop_action: StrictInt = 0
    """Discrete actions: the action while no control is held."""
    reset_key: str = "r"
    """Key that resets the env (the episode ends as truncated)."""
    end_key: str = "escape"
    """Key that ends the session."""
    pause_key: str = "p"
    """Key that pauses and resumes play."""
    advance_key: str = "f12"
    """`lockstep`: the key that advances one frame."""
    gamepad: GamepadConfig = Field(default_factory=GamepadConfig)
    window_size: list[StrictInt] = Field(default_factory=lambda: [600, 400], min_length=2, max_length=2)
    """The window's width and height in pixels (the env's frame is scaled to fit)."""
    display: Optional[str] = None
    """X display for the window; None: `$DISPLAY`, or an Xvfb of the collector's own when unset."""
    max_frames: Optional[StrictInt] = Field(default=None, ge=1)
    """End the session after this many frames (None: when the person presses `end_key`)."""
    max_episodes: Optional[StrictInt] = Field(default=None, ge=1)
    """End the session after this many episodes."""
    max_session_s: float = Field(default=4 * 3600.0, gt=0)
    """End the session after this long (a bound on the run's wait for the person)."""
    session_folder: bool = True
    """Also write the session in the driving recorder's layout (`sessions/session_<time>/`:
    screenshots, `metadata/expert_data.csv`, `telemetry/`), importable with `harvest import
    driving-session`."""
    telemetry: bool = True
    """Record the env's telemetry (CarRacing: speed, steering angle, wheel speeds, lap time)."""
    batch_rows: StrictInt = Field(default=256, ge=1)
    """Rows per push to the replay (an episode's end pushes at once)."""
    seed: Optional[StrictInt] = None
    """Seed of the first episode's reset (later ones continue the env's generator)."""
    shadow: Optional[ShadowConfig] = None
    """Shadow training beside the session (None: off)."""
    discard: Literal["ask", "errors", "never"] = "ask"
    """After the session its episodes' quality checks are shown; `ask`: the person names
    episodes to leave out of the dataset (on a terminal; elsewhere all are kept), `errors`:
    episodes with an error-level finding are left out, `never`: all are kept. The replay
    keeps every row either way."""
