"""CarRacing (Gymnasium's `CarRacing-v3`): a scripted driver that plays like a person at a
keyboard, and the telemetry a driving recording carries.

The driver is the repeatable "person" of the human-demonstration tests and demos: every frame
it decides which keys a player would hold — steer left or right, throttle, brake — from the
car's state and the track's tiles. Steering follows the track (pure pursuit: aim at a tile a
speed-dependent distance ahead); the speed target comes from the curvature ahead (the speed at
which the car can still brake down for each upcoming bend); analog wishes become key presses
by sigma-delta modulation (a key held on a fraction of the frames, as a player taps it), so it
needs nothing a keyboard cannot give. Over seeds 0-5 it averages ~880 (laps in 800-1000 frames).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:  # imports Box2D, an optional extra (`harvest-rl[human]`)
    from gymnasium.envs.box2d.car_racing import CarRacing

STEER_LEFT, STEER_RIGHT, THROTTLE, BRAKE = "steer_left", "steer_right", "throttle", "brake"
DRIVING_CONTROLS = (STEER_LEFT, STEER_RIGHT, THROTTLE, BRAKE)
CONTROL_EFFECTS = {STEER_LEFT: (0, -1.0), STEER_RIGHT: (0, 1.0), THROTTLE: (1, 1.0), BRAKE: (2, 0.8)}
"""What holding each control adds to CarRacing's (steer, gas, brake) action, as Gymnasium's own
keyboard play sets it."""
TILE_SPACING = 21 / 6.0
"""Distance between consecutive track tiles (CarRacing's TRACK_DETAIL_STEP)."""


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class CarRacingDriver:
    """Decides, frame by frame, which driving controls a player holds in CarRacing.

    Args:
        lookahead: tiles ahead of the nearest one to aim at (plus one per 20 units of speed).
        max_speed, lateral_accel, braking: the speed profile: at most `max_speed`, at most
            sqrt(`lateral_accel` x radius) in a bend, reached by braking at `braking`.
        steer_gain: full lock at 1 / `steer_gain` radians of heading error.
    """

    def __init__(
        self,
        lookahead: int = 6,
        max_speed: float = 150.0,
        lateral_accel: float = 80.0,
        braking: float = 80.0,
        steer_gain: float = 2.0,
        min_speed: float = 25.0,
    ) -> None:
        self.lookahead, self.max_speed, self.lateral_accel = lookahead, max_speed, lateral_accel
        self.braking, self.steer_gain, self.min_speed = braking, steer_gain, min_speed
        self.reset()

    def reset(self) -> None:
        """Forget the last episode (done by itself when the env has a new track)."""
        self._steer_carry = 0.0
        self._throttle_carry = 0.0
        self._tile = 0
        self._track = None

    def controls(self, env: gym.Env) -> frozenset[str]:
        """The controls to hold for the env's current frame."""
        game = cast("CarRacing", env.unwrapped)
        assert game.car is not None  # CarRacing places the car in reset()
        if game.track is not self._track:  # a new episode
            self.reset()
            self._track = game.track
        hull = game.car.hull
        track = np.asarray([(tile[2], tile[3]) for tile in game.track])
        directions = np.asarray([tile[1] for tile in game.track])
        x, y = hull.position
        speed = math.hypot(*hull.linearVelocity)
        nearby = (self._tile + np.arange(-5, 30)) % len(track)
        self._tile = int(nearby[np.argmin(np.hypot(track[nearby, 0] - x, track[nearby, 1] - y))])

        aim_x, aim_y = track[(self._tile + self.lookahead + int(speed / 20)) % len(track)]
        heading_error = float(_wrap(math.atan2(aim_y - y, aim_x - x) - (hull.angle + math.pi / 2)))
        steer = float(np.clip(-self.steer_gain * heading_error, -1.0, 1.0))  # CarRacing: -1 is left

        ahead = np.arange(60)
        bend = np.abs(
            _wrap(directions[(self._tile + ahead + 5) % len(track)] - directions[(self._tile + ahead) % len(track)])
        )
        corner_speed = np.clip(
            np.sqrt(self.lateral_accel * 5 * TILE_SPACING / np.maximum(bend, 1e-3)), self.min_speed, self.max_speed
        )
        target_speed = float(np.min(np.sqrt(corner_speed**2 + 2 * self.braking * ahead * TILE_SPACING)))
        throttle = float(np.clip((target_speed - speed) / 3.0, 0.0, 1.0)) * (1 - 0.2 * abs(steer))
        if abs(heading_error) > 1.0 or abs(hull.angularVelocity) > 3.0:  # turned round or spinning
            throttle = 0.0

        held = set()
        self._steer_carry += steer
        if self._steer_carry > 0.5:
            held.add(STEER_RIGHT)
            self._steer_carry -= 1
        elif self._steer_carry < -0.5:
            held.add(STEER_LEFT)
            self._steer_carry += 1
        if speed > target_speed + 5:
            held.add(BRAKE)
        else:
            self._throttle_carry += throttle
            if self._throttle_carry > 0.5:
                held.add(THROTTLE)
                self._throttle_carry -= 1
        return frozenset(held)


def driving_action(controls: frozenset[str] | set[str]) -> np.ndarray:
    """CarRacing's action for a set of held controls (summed, clipped to the action space)."""
    action = np.zeros(3, np.float32)
    for control in controls:
        index, value = CONTROL_EFFECTS[control]
        action[index] += value
    return np.clip(action, [-1, 0, 0], [1, 1, 1]).astype(np.float32)


TELEMETRY_NAMES = ("speed", "steering_angle", "wheel_omega_front", "wheel_omega_rear", "lap_time", "tiles_visited")


def car_racing_telemetry(env: gym.Env) -> dict[str, float]:
    """Speed, steering angle (front wheels, radians), wheel speeds and lap progress of the car."""
    game = cast("CarRacing", env.unwrapped)
    assert game.car is not None  # CarRacing places the car in reset()
    hull, wheels = game.car.hull, game.car.wheels
    return {
        "speed": float(math.hypot(*hull.linearVelocity)),
        "steering_angle": float(wheels[0].joint.angle),
        "wheel_omega_front": float(np.mean([wheels[0].omega, wheels[1].omega])),
        "wheel_omega_rear": float(np.mean([wheels[2].omega, wheels[3].omega])),
        "lap_time": float(game.t),
        "tiles_visited": float(game.tile_visited_count) / max(len(game.track), 1),
    }
