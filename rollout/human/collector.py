"""`HumanCollector`: a person plays one env through a window; every frame goes into the replay.

The loop, once per frame: show the env's picture with a status line, read the keyboard (and a
gamepad), turn held controls into an action through the `KeyMap`, step the env, record the row.
Rows carry `source=human`, the session id, the operator's name, who was at the controls
(`driver`), the frame number and the env's telemetry; a scripted player at the keyboard also
records the action it meant to give (`intended_action`), which must equal the recorded one.

Keys: R resets the episode (its last row is marked truncated), P pauses, ESC (or closing the
window) ends the session: rows not yet pushed are pushed and acknowledged, and the session
folder gets every frame, before `run` returns. By the clock (the env's `render_fps`) the
achieved frame rate and the frames that came late are reported; in lockstep each frame waits
for one press of the advance key (how the scripted player keeps frame-exact time).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, cast

import gymnasium as gym
import numpy as np
import ray
from loguru import logger

from harvest.envs.car_racing import TELEMETRY_NAMES, CarRacingDriver, car_racing_telemetry
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_env
from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.collector_ids import collector_uid
from harvest.rollout.cutter import EpisodeIds
from harvest.rollout.human.config import HumanConfig
from harvest.rollout.human.keymap import KeyMap, is_driving_space
from harvest.rollout.human.quality import EpisodeTrace, check_episode, episode_report
from harvest.rollout.human.session_folder import SessionFolderWriter
from harvest.rollout.human.shadow_policy import ShadowBeside
from harvest.rollout.human.window import KeyboardRobot, TeleopError, TeleopWindow, open_display
from harvest.rollout.policies import PolicyFactory
from harvest.rollout.replay.replay import Replay
from harvest.rollout.source_columns import shared_columns, with_filled
from harvest.rollout.worker import PushTimeoutError

SOURCE_HUMAN = "human"
_TELEMETRY: dict[str, tuple[tuple[str, ...], Callable[[gym.Env], dict[str, float]]]] = {
    "CarRacing": (TELEMETRY_NAMES, car_racing_telemetry)
}
"""Per game (the unwrapped env's class): the telemetry it records and how to read it."""
_SCRIPTED_DRIVERS: dict[str, Callable[[], Any]] = {"CarRacing": CarRacingDriver}


@dataclass
class HumanSessionResult:
    collector_id: int
    session_id: str
    operator: str
    frames: int
    rows: int
    """Rows acknowledged by the replay (every frame played)."""
    episodes: list[dict[str, Any]]
    """Per episode: episode_id, number, length, return, ended (`terminated`, `truncated`, `reset`,
    `session_end`) and `quality` (the seed 002 checks: findings with severities)."""
    seconds: float
    target_fps: float
    achieved_fps: float
    late_frames: int
    """Frames that took over 1.5x the target period (by the clock; 0 in lockstep)."""
    ended_by: str
    session_folder: str | None = None
    gamepad: str | None = None
    lockstep: bool = False
    shadow_frames: int = 0
    """Frames the shadow policy drove (handed the controls with `human.shadow.handover_key`)."""
    shadow_agreement: list[dict[str, float]] = field(default_factory=list)
    """Every `human.shadow.agreement_window // 5` frames: frame, shadow weights version, agreement
    over the last `agreement_window` frames the person drove."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _game_name(env: gym.Env) -> str:
    return type(env.unwrapped).__name__


def _frame(env: gym.Env) -> np.ndarray:
    """The env's picture now ([H, W, 3] uint8): the session makes its env with render_mode="rgb_array"."""
    return cast(np.ndarray, env.render())


def human_schema(env: gym.Env, cfg: HumanConfig) -> BatchSchema:
    """The columns of a teleoperation session's rows in this env."""
    extras = {
        "source": ColumnSpec(object, ()),
        "session": ColumnSpec(object, ()),
        "operator": ColumnSpec(object, ()),
        "driver": ColumnSpec(object, ()),
        "frame": ColumnSpec(np.int64, ()),
    }
    telemetry = _TELEMETRY.get(_game_name(env))
    if cfg.telemetry and telemetry is not None:
        extras.update({f"telemetry.{name}": ColumnSpec(np.float32, ()) for name in telemetry[0]})
    space = env.action_space
    action_spec = (
        ColumnSpec(space.dtype, space.shape) if isinstance(space, gym.spaces.Box) else ColumnSpec(np.int64, ())
    )
    if cfg.driver == "scripted":
        extras["intended_action"] = action_spec
    if cfg.shadow is not None:
        extras["shadow_action"] = action_spec
        extras["shadow_version"] = ColumnSpec(np.int64, ())
    return BatchSchema.for_spaces(env.observation_space, env.action_space, extras=extras)


def human_schema_for(env_cfg: EnvConfig, cfg: HumanConfig) -> BatchSchema:
    """`human_schema` of the env `env_cfg` builds (made, read and closed)."""
    env = make_env(env_cfg)
    try:
        return human_schema(env, cfg)
    finally:
        env.close()


@dataclass
class _Rows:
    """Rows played but not yet pushed (the newest is held back: a reset may still mark it truncated)."""

    columns: dict[str, list] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        for name, value in row.items():
            self.columns.setdefault(name, []).append(value)

    def __len__(self) -> int:
        return len(self.columns.get("step", []))

    def mark_last_truncated(self) -> None:
        if len(self):
            self.columns["truncated"][-1] = True

    def take(self, schema: BatchSchema, keep_last: bool) -> TransitionBatch | None:
        count = len(self) - int(keep_last)
        if count <= 0:
            return None
        batch = {
            name: np.asarray(values[:count], dtype=schema.columns[name].dtype).reshape(
                (count, *schema.columns[name].shape)
            )
            for name, values in self.columns.items()
        }
        self.columns = {name: values[count:] for name, values in self.columns.items()}
        return TransitionBatch(batch)


class HumanCollector:
    """A teleoperation session: one env, one window, one operator; rows into the replay.

    A plain class; Ray makes it an actor where it is started. Args as `RolloutWorker`'s, plus
    `cfg` (the `human:` section) and `session_root`, where the session folder goes.
    """

    def __init__(
        self,
        env_cfg: EnvConfig,
        cfg: HumanConfig,
        replay: Replay | None,
        collector_id: int,
        run_id: str,
        session_root: str | None = None,
        shadow: Any = None,
        shadow_policy: PolicyFactory | None = None,
    ) -> None:
        self.cfg, self.collector_id = cfg, collector_id
        self._log = logger.bind(actor=f"HumanCollector[{collector_id}]")
        if cfg.driver == "scripted" and not cfg.lockstep:
            raise TeleopError(
                "human.driver: scripted plays through key events one frame at a time; set human.lockstep: true"
            )
        window_size = (cfg.window_size[0], cfg.window_size[1])  # (width, height): the config holds two
        self.display, self._xvfb = open_display(cfg.display, window_size)
        self._env = make_env(env_cfg, render_mode="rgb_array")
        self.keymap = KeyMap(cfg, self._env.action_space)
        self.schema = human_schema(self._env, cfg)
        self._fillers: dict = {}
        self._replay_columns = list(self.schema.columns)
        if replay is not None and dict(replay.schema.columns) != dict(self.schema.columns):
            # a replay shared with simulators: their own columns (a policy's log-probs, say) get filled
            self._fillers = shared_columns(replay.schema, self.schema, SOURCE_HUMAN, f"HumanCollector[{collector_id}]")
            self._replay_columns = list(replay.schema.columns)
        self._replay = replay
        self._telemetry = _TELEMETRY.get(_game_name(self._env), (None, None))[1] if cfg.telemetry else None
        self._driver = None
        if cfg.driver == "scripted":
            make_driver = _SCRIPTED_DRIVERS.get(_game_name(self._env))
            if make_driver is None:
                raise TeleopError(
                    f"human.driver: no scripted driver for {env_cfg.id} (there is one for {sorted(_SCRIPTED_DRIVERS)})"
                )
            self._driver = make_driver()
        self.fps = cfg.fps or float(self._env.metadata.get("render_fps") or 60)
        self.session_id = datetime.now(timezone.utc).strftime("session_%Y%m%d_%H%M%S") + f"_{collector_id}"
        self._folder = None
        if cfg.session_folder and session_root is not None and is_driving_space(self._env.action_space):
            self._folder = SessionFolderWriter(Path(session_root), self.session_id)
        self.shadow = (
            ShadowBeside(
                shadow,
                shadow_policy(self._env.observation_space, self._env.action_space),
                cfg.shadow,
                self._env.action_space,
            )
            if cfg.shadow is not None and shadow is not None and shadow_policy is not None
            else None
        )
        if cfg.shadow is not None and self.shadow is None:
            raise ValueError("human.shadow: the session needs the shadow learner and its policy factory")
        self.window = TeleopWindow(
            window_size,
            f"Harvest teleop - {env_cfg.id} - {cfg.operator}",
            cfg.reset_key,
            cfg.end_key,
            cfg.pause_key,
            cfg.advance_key,
            cfg.gamepad.enabled,
            cfg.shadow.handover_key if cfg.shadow is not None else None,
        )
        self._robot = KeyboardRobot(self.display, self.window.window_id) if self._driver is not None else None
        self._ids = EpisodeIds(collector_uid(run_id, collector_id))
        self._rows = _Rows()
        self._in_flight: list[ray.ObjectRef] = []
        self._pushes = 0
        self._rows_pushed = 0

    def get_schema(self) -> BatchSchema:
        return self.schema

    def screenshot(self) -> np.ndarray:
        """The X display as it is now ([H, W, 3] uint8): the window as a person sees it."""
        from PIL import ImageGrab

        return np.asarray(ImageGrab.grab(xdisplay=self.display).convert("RGB"))

    def run(self) -> HumanSessionResult:
        """Blocks: play until the end key, a closed window, `max_frames`, `max_episodes` or `max_session_s`."""
        cfg, env = self.cfg, self._env
        obs, _ = env.reset(seed=cfg.seed)
        episode_id, episode_number, step, episode_return = int(self._ids.next(1)[0]), 1, 0, 0.0
        episodes: list[dict[str, Any]] = []
        frame, late, paused, ended_by = 0, 0, False, "end_key"
        period = 1.0 / self.fps
        started = last = time.perf_counter()
        recent: list[float] = []

        trace = EpisodeTrace(episode_id, episode_number)

        def close_episode(ended: str) -> None:
            nonlocal trace
            findings = check_episode(trace, env.action_space, self.fps, cfg.lockstep)
            episodes.append(
                {
                    "episode_id": episode_id,
                    "number": episode_number,
                    "length": step,
                    "return": episode_return,
                    "ended": ended,
                    "quality": episode_report(trace, findings, episode_return),
                }
            )
            trace = EpisodeTrace(episode_id + 1, episode_number + 1)  # ids are consecutive per collector

        try:
            while True:
                achieved = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
                self.window.show(
                    _frame(env),
                    [
                        f"{cfg.operator}  episode {episode_number}  step {step}  return {episode_return:.1f}",
                        f"{achieved:.0f}/{self.fps:.0f} FPS"
                        + ("  PAUSED (P)" if paused else "")
                        + ("  lockstep" if cfg.lockstep else ""),
                        *([self.shadow.status()] if self.shadow else []),
                    ],
                )
                intended = None
                if self._robot is not None and not paused:
                    assert self._driver is not None  # the robot is made only for a scripted driver
                    controls = self._driver.controls(env)
                    intended = self.keymap.action(controls)
                    self._robot.hold({self.keymap.key_for(c) for c in controls}, then_press=cfg.advance_key)
                received = self.window.wait_advance(cfg.lockstep_timeout_s) if cfg.lockstep else self.window.poll()
                if received.end:
                    ended_by = "window_closed" if received.closed else "end_key"
                    break
                if received.pause_toggles % 2:
                    paused = not paused
                if self.shadow is not None and received.handover_toggles % 2:
                    self.shadow.driving = not self.shadow.driving
                if received.reset and step > 0:
                    self._rows.mark_last_truncated()
                    close_episode("reset")
                    obs, _ = env.reset()
                    episode_id, episode_number, step, episode_return = (
                        int(self._ids.next(1)[0]),
                        episode_number + 1,
                        0,
                        0.0,
                    )
                    self._reset_driver()
                    continue
                if paused:
                    self._pace(period, last)
                    last = time.perf_counter()
                    continue
                controls = self.keymap.controls_of(received.held_keys)
                controls += [self.keymap.buttons[b] for b in self.window.held_buttons() if b in self.keymap.buttons]
                action = self.keymap.action(controls, self.window.axes())
                driver = "scripted" if self._robot is not None else "person"
                shadow_action = None
                if self.shadow is not None:
                    shadow_action = self.shadow.act(obs, frame)
                    if self.shadow.driving:
                        action, driver = shadow_action, "shadow"
                    else:
                        self.shadow.compare(action, shadow_action, frame, self.session_id)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                row = {
                    "obs": obs,
                    "action": action,
                    "reward": float(reward),
                    "next_obs": next_obs,
                    "terminated": bool(terminated),
                    "truncated": bool(truncated),
                    "episode_id": episode_id,
                    "step": step,
                    "collector_id": self.collector_id,
                    "policy_version": 0,
                    "timestamp": np.datetime64(time.time_ns(), "ns"),
                    "source": SOURCE_HUMAN,
                    "session": self.session_id,
                    "operator": cfg.operator,
                    "driver": driver,
                    "frame": frame,
                }
                telemetry = self._telemetry(env) if self._telemetry is not None else {}
                row.update({f"telemetry.{name}": value for name, value in telemetry.items()})
                trace.add(int(row["timestamp"].astype(np.int64)), action, False, telemetry.get("speed"))
                if "intended_action" in self.schema.columns:
                    row["intended_action"] = intended
                if self.shadow is not None:
                    row["shadow_action"], row["shadow_version"] = shadow_action, self.shadow.version
                self._rows.add(row)
                if self._folder is not None:
                    image = obs if isinstance(obs, np.ndarray) and obs.ndim == 3 else _frame(env)
                    self._folder.add(
                        episode_number,
                        step,
                        time.time(),
                        image,
                        np.asarray(action),
                        telemetry,
                        {"intended_action": None if intended is None else np.asarray(intended).tolist()},
                    )
                episode_return += float(reward)
                step += 1
                frame += 1
                obs = next_obs
                if len(self._rows) > cfg.batch_rows:
                    self._push(self._rows.take(self.schema, keep_last=True))
                if terminated or truncated:
                    close_episode("terminated" if terminated else "truncated")
                    self._push(self._rows.take(self.schema, keep_last=False))
                    if cfg.max_episodes is not None and len(episodes) >= cfg.max_episodes:
                        ended_by = "max_episodes"
                        break
                    obs, _ = env.reset()
                    episode_id, episode_number, step, episode_return = (
                        int(self._ids.next(1)[0]),
                        episode_number + 1,
                        0,
                        0.0,
                    )
                    self._reset_driver()
                if cfg.max_frames is not None and frame >= cfg.max_frames:
                    ended_by = "max_frames"
                    break
                if time.perf_counter() - started > cfg.max_session_s:
                    ended_by = "max_session_s"
                    break
                if not cfg.lockstep:
                    frame_late = time.perf_counter() - last > 1.5 * period
                    late += int(frame_late)
                    if frame_late and trace.late:
                        trace.late[-1] = True
                    self._pace(period, last)
                last = time.perf_counter()
                recent = (recent + [last])[-60:]
        finally:
            if self._robot is not None:
                self._robot.release_all()
        if step > 0 and (not episodes or episodes[-1]["episode_id"] != episode_id):
            self._rows.mark_last_truncated()  # the person ended the session mid-episode
            close_episode("session_end")
        self._push(self._rows.take(self.schema, keep_last=False))
        self._drain()
        folder = str(self._folder.close()) if self._folder is not None else None
        seconds = time.perf_counter() - started
        result = HumanSessionResult(
            self.collector_id,
            self.session_id,
            cfg.operator,
            frame,
            self._rows_pushed,
            episodes,
            seconds,
            self.fps,
            frame / seconds if seconds else 0.0,
            late,
            ended_by,
            folder,
            self.window.gamepad_name,
            cfg.lockstep,
            self.shadow.frames_driven if self.shadow else 0,
            self.shadow.history if self.shadow else [],
        )
        self._log.info(
            "session {} ended ({}): {} frames, {} episodes in {:.1f}s, {:.1f} FPS (target {:.0f}), {} late frames{}",
            self.session_id,
            ended_by,
            frame,
            len(episodes),
            seconds,
            result.achieved_fps,
            self.fps,
            late,
            f"; folder {folder}" if folder else "",
        )
        return result

    def _reset_driver(self) -> None:
        if self._driver is not None:
            self._driver.reset()

    @staticmethod
    def _pace(period: float, since: float) -> None:
        remaining = period - (time.perf_counter() - since)
        if remaining > 0:
            time.sleep(remaining)

    def _push(self, batch: TransitionBatch | None) -> None:
        if batch is None or self._replay is None:
            return
        batch = with_filled(batch, self._fillers, self._replay_columns)
        self._pushes += 1
        self._rows_pushed += batch.num_rows
        self._in_flight.extend(self._replay.insert_async(batch, f"human {self.collector_id}", self._pushes))
        if len(self._in_flight) > 4:  # backpressure: at most 4 pushes unacknowledged
            needed = len(self._in_flight) - 4
            ready, self._in_flight = ray.wait(self._in_flight, num_returns=needed, timeout=120)
            if len(ready) < needed:
                raise PushTimeoutError(
                    f"HumanCollector[{self.collector_id}]: the replay did not acknowledge a push "
                    f"within 120s ({len(self._in_flight)} in flight)"
                )
            ray.get(ready)

    def _drain(self) -> None:
        if not self._in_flight:
            return
        try:
            ray.get(self._in_flight, timeout=120)
        except ray.exceptions.GetTimeoutError as err:
            raise PushTimeoutError(
                f"HumanCollector[{self.collector_id}]: the replay did not acknowledge "
                f"{len(self._in_flight)} pushes within 120s"
            ) from err
        self._in_flight = []

    def close(self) -> None:
        self.window.close()
        self._env.close()
        if self._xvfb is not None:
            self._xvfb.stop()
            self._xvfb = None
