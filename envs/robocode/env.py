"""`RobocodeEnv` (`harvest/Robocode-v0`): a policy drives one tank in the real Robocode engine.

The tank is `HarvestBridge` (`java/HarvestBridge.java`), which asks this env for every turn's
action over a local socket; the opponent is any installed robot. One long-lived JVM
(`RobocodeHost`) per env; an episode is one seeded round, from turn 0 (the robots as placed)
until a robot dies (`terminated`) or `max_turns` turns have passed (`truncated`).

Observations, rewards and actions mean what they mean in the collected data: the observation
is computed from the engine's turn snapshots by the same `observations` function as the
dataset rows (own state + radar sightings), the reward by the same `step_rewards`, and the
action is the one `round_transitions` recovers from an expert's turns, so replaying an
expert's recovered actions through the bridge replays the expert's battle.

A turn's snapshot is printed before the robots are woken for that turn (HarvestAgent), and
the bridge waits for its action after it; so each step reads the engine's next turn line,
then the bridge's report of that turn (unless the snapshot shows it dead), and both are
there whatever order they arrive in.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, NoReturn

import gymnasium as gym
import numpy as np
from loguru import logger

from harvest.envs.robocode.host import BRIDGE_ROBOT, EngineStalled, RobocodeError, RobocodeHost
from harvest.envs.robocode.sightings import RadarMemory
from harvest.envs.robocode.spaces import ACTION_SPACE, OBSERVATION_SPACE
from harvest.envs.robocode.transitions import observations, step_rewards

BRIDGE_INDEX = 0
"""The bridge is the first robot of every battle the env starts."""


class RobocodeEnv(gym.Env):
    """One tank, driven by the caller, against `opponent` in the real engine; one round an episode.

    Args:
        opponent: the other robot (`package.Class`, e.g. `sample.SpinBot`).
        width, height: the battlefield in pixels (Robocode allows 400 to 5000).
        max_turns: an episode is truncated after this many steps (turns).
        cache_root: where the compiled runner and robots are kept.
        workdir: the engine's folder (a temporary one, removed on `close`, when None).
        turn_timeout_s: how long the engine or the bridge may take for one turn; past it the
            JVM is killed (`EngineStalled`) and the next `reset` starts a fresh one.
        reward_scale, win_reward: see `envs.robocode.transitions.step_rewards`.

    Observation: float32 [14], `OBS_FIELDS`. Action: float32 [5], `ACTION_FIELDS` (clipped to
    `ACTION_SPACE`; fire_power below 0.1 fires nothing). `reset(options={"setups": [...]})`
    places the robots (bridge first), each (x, y, heading in degrees) or None for random.
    `info`: round, turn, seed, energy, enemy_energy, winner (a name, when terminated by a
    death and one robot is left), scans (the ScannedRobotEvents the bridge got this turn),
    skipped_turns (turns Robocode ran without waking the bridge, rare: the step then spans
    them, its reward summed over them; logged).

    Usage:
        env = gymnasium.make("harvest/Robocode-v0", opponent="sample.SpinBot")
        obs, info = env.reset(seed=7)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        env.close()
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        opponent: str = "sample.Target",
        width: int = 800,
        height: int = 600,
        max_turns: int = 2000,
        cache_root: str | Path = "~/.cache/harvest/robocode",
        workdir: str | Path | None = None,
        turn_timeout_s: float = 30.0,
        reward_scale: float = 100.0,
        win_reward: float = 1.0,
    ) -> None:
        if opponent == BRIDGE_ROBOT:
            raise ValueError(f"opponent={opponent!r}: the bridge robot cannot fight itself (one socket per env)")
        for name, value in (("width", width), ("height", height)):
            if not 400 <= value <= 5000:
                raise ValueError(f"{name}={value!r}: Robocode battlefields are 400 to 5000 pixels")
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns!r}: expected at least 1")
        self.observation_space, self.action_space = OBSERVATION_SPACE, ACTION_SPACE
        self.opponent, self.width, self.height, self.max_turns = opponent, int(width), int(height), int(max_turns)
        self.turn_timeout_s, self.reward_scale, self.win_reward = turn_timeout_s, reward_scale, win_reward
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="robocode-env-")) if workdir is None else Path(workdir)
        self._log = logger.bind(actor=f"RobocodeEnv[{self.workdir.name}]")
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(turn_timeout_s)
        try:
            self.host = RobocodeHost(
                self.workdir, Path(cache_root).expanduser(), bridge_port=self._server.getsockname()[1]
            )
        except BaseException:  # e.g. RobocodeNotInstalled: leave nothing behind
            self._server.close()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, self.host.kill)  # no JVM outlives an env that was never closed
        self._battle: Iterator[dict[str, Any]] | None = None
        self._bridge: socket.socket | None = None
        self._bridge_lines: Any = None
        self._memory = RadarMemory()
        self._turn: dict[str, Any] | None = None
        self._seed = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a fresh one-round battle (seeded with `seed`, or a seed drawn from `np_random`)."""
        super().reset(seed=seed)
        unknown = set(options or {}) - {"setups"}
        if unknown:
            raise ValueError(f"RobocodeEnv.reset: options {sorted(unknown)}: only 'setups' is understood")
        self._end_battle()
        if self.host.process.poll() is not None:
            self._log.warning("the engine is gone (code {}); starting a fresh one", self.host.process.poll())
            self.host.restart()
        self._seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        setups = (options or {}).get("setups")
        self._battle = self.host.battle(
            [BRIDGE_ROBOT, self.opponent],
            rounds=1,
            seed=self._seed,
            width=self.width,
            height=self.height,
            turn_timeout_s=self.turn_timeout_s,
            setups=setups,
            live=True,
        )
        start = self._next_message(("round_start",))
        try:
            self._bridge, _ = self._server.accept()
        except TimeoutError as err:
            self._stall(f"the bridge robot did not connect within {self.turn_timeout_s:g}s", err)
        self._bridge.settimeout(self.turn_timeout_s)
        self._bridge_lines = self._bridge.makefile("rb")
        report = self._bridge_report(start)
        self._memory = RadarMemory()
        self._turn = start
        obs = observations(self._memory, None, start)[BRIDGE_INDEX]
        return self._observation(obs), self._info(start, report, winner=None)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._battle is None or self._turn is None:
            raise RuntimeError("RobocodeEnv.step: no episode is running; call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != ACTION_SPACE.shape or not np.isfinite(action).all():
            raise ValueError(f"RobocodeEnv.step: action {action!r}: expected {ACTION_SPACE.shape[0]} finite numbers")
        action = np.clip(action, ACTION_SPACE.low, ACTION_SPACE.high)
        self._send(" ".join(repr(float(value)) for value in action))
        before, turn = self._turn, self._next_message(("turn",))
        report = self._bridge_report(turn) if turn["robots"][BRIDGE_INDEX]["state"] != "DEAD" else None
        total, skipped = 0.0, 0
        while True:
            obs = observations(self._memory, before, turn)[BRIDGE_INDEX]
            energy, next_energy = ([[robot["energy"] for robot in message["robots"]]] for message in (before, turn))
            alive, next_alive = (
                [[robot["state"] != "DEAD" for robot in message["robots"]]] for message in (before, turn)
            )
            reward, dies, wins = step_rewards(
                np.array(energy),
                np.array(next_energy),
                np.array(alive),
                np.array(next_alive),
                BRIDGE_INDEX,
                self.reward_scale,
                self.win_reward,
            )
            total += float(reward[0])
            survivors = [robot["name"] for robot in turn["robots"] if robot["state"] != "DEAD"]
            terminated = bool(dies[0] or wins[0] or len(survivors) <= 1)
            if terminated or report is None or report["turn"] == turn["turn"]:
                break
            # Robocode woke the bridge a turn late (it can miss a robot's sleep even in lockstep
            # mode): that turn ran on the bridge's previous commands. Catch the engine up.
            skipped += 1
            before, turn = turn, self._next_message(("turn",))
        if skipped:
            self._log.warning("the bridge robot skipped {} turn(s) before turn {}", skipped, turn["turn"])
        truncated = not terminated and turn["turn"] >= self.max_turns
        self._turn = turn
        info = self._info(turn, report, winner=survivors[0] if terminated and len(survivors) == 1 else None)
        info["skipped_turns"] = skipped
        if terminated or truncated:
            self._end_battle()
        return self._observation(obs), total, terminated, truncated, info

    def close(self) -> None:
        """End the battle, shut the bridge's socket and the JVM, and remove a temporary workdir."""
        try:
            self._end_battle()
        except RobocodeError as err:  # the JVM is killed below either way
            self._log.warning("could not end the battle cleanly: {}", err)
        self.host.close()
        self._finalizer.detach()
        self._server.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        super().close()

    def _observation(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(obs, OBSERVATION_SPACE.low, OBSERVATION_SPACE.high).astype(np.float32)

    def _info(self, turn: dict, report: dict | None, winner: str | None) -> dict[str, Any]:
        robots = turn["robots"]
        return {
            "round": int(turn["round"]),
            "turn": int(turn["turn"]),
            "seed": self._seed,
            "energy": float(robots[BRIDGE_INDEX]["energy"]),
            "enemy_energy": float(sum(robot["energy"] for index, robot in enumerate(robots) if index != BRIDGE_INDEX)),
            "winner": winner,
            "scans": report["scans"] if report is not None else [],
            "skipped_turns": 0,
        }

    def _next_message(self, kinds: tuple[str, ...]) -> dict[str, Any]:
        assert self._battle is not None
        message = next(self._battle)  # RobocodeError / EngineStalled come from the host
        if message.get("t") not in kinds:
            raise RobocodeError(f"engine in {self.workdir}: expected a {'/'.join(kinds)} message, got {message}")
        return message

    def _bridge_report(self, turn: dict) -> dict[str, Any]:
        try:
            line = self._bridge_lines.readline()
        except TimeoutError as err:
            self._stall(f"the bridge robot sent nothing for {self.turn_timeout_s:g}s in turn {turn['turn']}", err)
        if not line:
            raise RobocodeError(
                f"engine in {self.workdir}: the bridge robot closed its socket in turn {turn['turn']}"
                f". Log tail:\n{self.host.log_tail()}"
            )
        report = json.loads(line)
        if report["round"] != turn["round"] or report["turn"] < turn["turn"]:
            raise RobocodeError(
                f"engine in {self.workdir}: the bridge reported round {report['round']} turn "
                f"{report['turn']}, the engine round {turn['round']} turn {turn['turn']}"
            )
        return report

    def _send(self, line: str) -> None:
        assert self._bridge is not None
        try:
            self._bridge.sendall((line + "\n").encode())
        except OSError as err:
            raise RobocodeError(f"engine in {self.workdir}: the bridge robot's socket failed: {err}") from err

    def _stall(self, what: str, err: Exception) -> NoReturn:
        self._close_bridge()
        self._battle = None
        self.host.kill()
        raise EngineStalled(f"engine in {self.workdir}: {what}; killed it. Log tail:\n{self.host.log_tail()}") from err

    def _close_bridge(self) -> None:
        # shutdown, not just close: the makefile() reader holds the socket open, and the
        # bridge must see the end of its stream or the lockstep battle waits on it.
        if self._bridge is not None:
            try:
                self._bridge.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the bridge already went away (it died)
            self._bridge_lines.close()
            self._bridge.close()
            self._bridge, self._bridge_lines = None, None

    def _end_battle(self) -> None:
        """Let the bridge go idle, abort the battle and read its messages to the end."""
        self._close_bridge()
        self._turn = None
        if self._battle is None:
            return
        battle, self._battle = self._battle, None
        if self.host.process.poll() is not None:
            return
        self.host.abort()
        for message in battle:
            if message.get("t") == "battle_end":
                break
