"""The teleoperation window (pygame) and a keyboard robot that types into it (xdotool).

`TeleopWindow` shows the env's frames and reads the keyboard and the first gamepad. Keys are
tracked from the event stream in the order they were pressed, so a frame sees exactly the key
events that reached the window before it. In lockstep it waits for the advance key, one press
per frame: every key event sent before that press is part of the frame.

`KeyboardRobot` is the scripted player's hands: it presses and releases keys on the X display
through xdotool (the XTEST extension, as a physical keyboard's events arrive), so the path from
key to action is the one a person uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from pyvirtualdisplay import Display

_X_KEYSYMS = {
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "escape": "Escape",
    "return": "Return",
    "space": "space",
    "tab": "Tab",
    "backspace": "BackSpace",
    "left shift": "Shift_L",
    "right shift": "Shift_R",
    "left ctrl": "Control_L",
    "right ctrl": "Control_R",
}


class TeleopError(RuntimeError):
    """The window, display or keyboard robot cannot work (the message says which and why)."""


@dataclass
class WindowInput:
    """What the window received since the last frame."""

    held_keys: list[str]
    """Keys held now, in the order they were pressed (pygame key names)."""
    reset: bool = False
    end: bool = False
    pause_toggles: int = 0
    handover_toggles: int = 0
    closed: bool = False
    other_keys: list[str] = field(default_factory=list)
    """Keys pressed that the window itself does not handle (passed on to the caller)."""


class TeleopWindow:
    """A window showing frames (scaled to `size`) with a status line, reading keys and a gamepad."""

    def __init__(
        self,
        size: tuple[int, int],
        title: str,
        reset_key: str,
        end_key: str,
        pause_key: str,
        advance_key: str,
        gamepad: bool = True,
        handover_key: str | None = None,
    ) -> None:
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        from harvest.envs.extras import require

        self._pg = pygame = require("pygame", "the teleoperation window")
        if not os.environ.get("DISPLAY") and os.environ.get("SDL_VIDEODRIVER") != "dummy":
            raise TeleopError(
                "teleoperation window: no X display ($DISPLAY is unset); set human.display or run under Xvfb"
            )
        pygame.display.init()
        pygame.font.init()
        self.size = (int(size[0]), int(size[1]))
        self._screen = pygame.display.set_mode(self.size)
        pygame.display.set_caption(title)
        self._font = pygame.font.Font(None, 22)
        self._special = {
            "reset": reset_key.lower(),
            "end": end_key.lower(),
            "pause": pause_key.lower(),
            "advance": advance_key.lower(),
        }
        if handover_key is not None:
            self._special["handover"] = handover_key.lower()
        self._held: list[str] = []
        self._joystick = None
        if gamepad:
            pygame.joystick.init()
            if pygame.joystick.get_count():
                self._joystick = pygame.joystick.Joystick(0)
        self.show(np.zeros((self.size[1], self.size[0], 3), np.uint8), ["starting"])

    @property
    def window_id(self) -> int | None:
        """The X window id (what xdotool and screenshots address)."""
        return self._pg.display.get_wm_info().get("window")

    @property
    def gamepad_name(self) -> str | None:
        return self._joystick.get_name() if self._joystick is not None else None

    def show(self, frame: np.ndarray, status: list[str]) -> None:
        """Draw `frame` (H, W, 3 uint8) scaled to the window, with `status` lines over it."""
        pygame = self._pg
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(np.swapaxes(frame[..., :3], 0, 1)))
        self._screen.blit(pygame.transform.scale(surface, self.size), (0, 0))
        for row, line in enumerate(status):
            text = self._font.render(line, True, (255, 255, 255), (0, 0, 0))
            self._screen.blit(text, (6, 6 + 20 * row))
        pygame.display.flip()

    def poll(self) -> WindowInput:
        """Handle the events that have arrived, without waiting."""
        received = WindowInput(held_keys=[])
        for event in self._pg.event.get():
            self._handle(event, received)
        received.held_keys = list(self._held)
        return received

    def _events(self, timeout_s: float, waiting_for: str) -> Iterator:
        """Events as they arrive; a TeleopError naming `waiting_for` after `timeout_s` without it."""
        pygame = self._pg
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TeleopError(f"teleoperation window: {waiting_for} within {timeout_s}s")
            event = pygame.event.wait(int(min(remaining, 0.5) * 1000) + 1)
            if event.type != pygame.NOEVENT:
                yield event

    def wait_advance(self, timeout_s: float) -> WindowInput:
        """Handle events until the advance key is pressed (lockstep): a frame's worth of input."""
        received = WindowInput(held_keys=[])
        for event in self._events(
            timeout_s, f"no {self._special['advance']!r} press (lockstep waits for one per frame)"
        ):
            if self._handle(event, received) == "advance" or received.end:
                received.held_keys = list(self._held)
                return received
        raise AssertionError("unreachable")

    def wait_for(self, keys: set[str], timeout_s: float) -> tuple[str | None, WindowInput]:
        """Handle events until one of `keys` is pressed (or the end key / a closed window): that
        key (None on end) and what was held when it came."""
        received = WindowInput(held_keys=[])
        for event in self._events(timeout_s, f"none of {sorted(keys)} pressed"):
            held_before = [key for key in self._held if key not in keys]
            self._handle(event, received)
            if received.end:
                return None, received
            if event.type == self._pg.KEYDOWN and self._pg.key.name(event.key).lower() in keys:
                received.held_keys = held_before
                return self._pg.key.name(event.key).lower(), received
        raise AssertionError("unreachable")

    def _handle(self, event, received: WindowInput) -> str | None:
        pygame = self._pg
        if event.type == pygame.QUIT:
            received.closed = received.end = True
            return "end"
        if event.type not in (pygame.KEYDOWN, pygame.KEYUP):
            return None
        key = pygame.key.name(event.key).lower()
        special = next((name for name, bound in self._special.items() if bound == key), None)
        if special is not None:
            if event.type == pygame.KEYDOWN:
                if special == "reset":
                    received.reset = True
                elif special == "end":
                    received.end = True
                elif special == "pause":
                    received.pause_toggles += 1
                elif special == "handover":
                    received.handover_toggles += 1
                return special
            return None
        if event.type == pygame.KEYDOWN:
            if key not in self._held:
                self._held.append(key)
            received.other_keys.append(key)
        elif key in self._held:
            self._held.remove(key)
        return None

    def axes(self) -> dict[int, float]:
        """Gamepad axis positions (-1..1); {} without a gamepad."""
        if self._joystick is None:
            return {}
        return {axis: float(self._joystick.get_axis(axis)) for axis in range(self._joystick.get_numaxes())}

    def held_buttons(self) -> list[int]:
        if self._joystick is None:
            return []
        return [button for button in range(self._joystick.get_numbuttons()) if self._joystick.get_button(button)]

    def close(self) -> None:
        self._pg.display.quit()


def open_display(display: str | None, size: tuple[int, int]) -> tuple[str, Display | None]:
    """The X display a window opens on: `display`, else `$DISPLAY`, else an Xvfb started here
    (returned second, to stop when done; a person cannot see it, a scripted player can)."""
    if display:
        os.environ["DISPLAY"] = display
        return display, None
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"], None
    from loguru import logger
    from pyvirtualdisplay import Display

    xvfb = Display(visible=False, size=(max(size[0], 640), max(size[1], 480)))
    xvfb.start()
    os.environ["DISPLAY"] = xvfb.new_display_var
    logger.info("no $DISPLAY: the window opens on an Xvfb of its own ({})", os.environ["DISPLAY"])
    return os.environ["DISPLAY"], xvfb


def x_keysym(key: str) -> str:
    """The X keysym xdotool types for a pygame key name (`up` -> `Up`, `f12` -> `F12`, `w` -> `w`)."""
    key = key.lower()
    if key in _X_KEYSYMS:
        return _X_KEYSYMS[key]
    if len(key) > 1 and key[0] == "f" and key[1:].isdigit():
        return key.upper()
    return key


class KeyboardRobot:
    """Holds keys down and releases them on an X display through xdotool, like a keyboard."""

    def __init__(self, display: str, window_id: int | None, timeout_s: float = 10.0) -> None:
        if shutil.which("xdotool") is None:
            raise TeleopError("the keyboard robot needs xdotool (Debian package `xdotool`): apt-get install xdotool")
        self._env = {**os.environ, "DISPLAY": display}
        self._timeout_s = timeout_s
        self.held: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while window_id is not None and not self._focus(window_id):  # a window just created may not be mapped yet
            if time.monotonic() > deadline:
                raise TeleopError(f"window {window_id} on display {display} does not take the keyboard focus")
            time.sleep(0.1)

    def focus_window(self, title: str, timeout_s: float = 60.0) -> int:
        """Wait for a window whose title contains `title` to appear, give it the keyboard focus
        and return its id."""
        deadline = time.monotonic() + timeout_s
        while True:
            window_id = self._find_window(title)
            if window_id is not None and self._focus(window_id):
                return window_id
            if time.monotonic() > deadline:
                raise TeleopError(f"no window titled {title!r} on display {self._env['DISPLAY']} within {timeout_s}s")
            time.sleep(0.2)

    def _focus(self, window_id: int) -> bool:
        """Give the window the keyboard focus; whether it has it (a window not yet mapped cannot)."""
        subprocess.run(
            ["xdotool", "windowfocus", "--sync", str(window_id)],
            env=self._env,
            capture_output=True,
            timeout=self._timeout_s,
        )
        focused = subprocess.run(
            ["xdotool", "getwindowfocus"], env=self._env, capture_output=True, text=True, timeout=self._timeout_s
        )
        return focused.stdout.strip() == str(window_id)

    def _find_window(self, title: str) -> int | None:
        # `search --name` misses SDL's windows (their title is in _NET_WM_NAME only): list, then ask each
        listed = subprocess.run(
            ["xdotool", "search", "--class", "."],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=self._timeout_s,
        )
        for window_id in listed.stdout.split():
            name = subprocess.run(
                ["xdotool", "getwindowname", window_id],
                env=self._env,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
            )
            if name.returncode == 0 and title in name.stdout:
                return int(window_id)
        return None

    def geometry(self, window_id: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a window on the display."""
        found = subprocess.run(
            ["xdotool", "getwindowgeometry", "--shell", str(window_id)],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=self._timeout_s,
            check=True,
        )
        values = dict(line.split("=", 1) for line in found.stdout.split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def hold(self, keys: set[str] | frozenset[str], then_press: str | None = None) -> None:
        """Hold exactly `keys` (releasing the others), then press and release `then_press`."""
        commands: list[str] = []
        for key in sorted(self.held - set(keys)):
            commands += ["keyup", "--delay", "0", x_keysym(key)]
        for key in sorted(set(keys) - self.held):
            commands += ["keydown", "--delay", "0", x_keysym(key)]
        if then_press is not None:
            commands += ["key", "--delay", "0", x_keysym(then_press)]
        if commands:
            self._xdotool(commands)
        self.held = set(keys)

    def press(self, key: str) -> None:
        self._xdotool(["key", "--delay", "0", x_keysym(key)])

    def release_all(self) -> None:
        self.hold(set())

    def _xdotool(self, commands: list[str]) -> None:
        try:
            subprocess.run(
                ["xdotool", *commands], env=self._env, check=True, capture_output=True, timeout=self._timeout_s
            )
        except subprocess.CalledProcessError as err:
            raise TeleopError(f"xdotool {' '.join(commands)}: {err.stderr.decode(errors='replace').strip()}") from err
        except subprocess.TimeoutExpired as err:
            raise TeleopError(f"xdotool {' '.join(commands)}: no answer within {self._timeout_s}s") from err
