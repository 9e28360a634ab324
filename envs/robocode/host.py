"""`RobocodeHost`: one long-lived JVM running the real Robocode engine (Debian `robocode`),
driven through its Control API by `java/HarvestRunner.java`, streaming one JSON line per turn
(the protocol: `envs.robocode.protocol`).

The Java side lives in the package `harvest.robocode` (`java/HarvestRunner.java`,
`java/BattleCommand.java`, `java/HarvestAgent.java`; the sources sit flat in `java/`, which
javac allows for files it is given by name). It is compiled with `javac` on first use into a
cache keyed by its sources, the Java version and the Robocode jars; every host gets its own
working directory made from the package's `battles/`, `config/` and `robots/`, with the CPU
benchmark pre-seeded and the turn rate uncapped. `java/HarvestBridge.java` (package `harvest`),
the robot a policy outside the JVM drives (`BRIDGE_ROBOT`, see `envs.robocode.env`), is
compiled with the runner and installed into every home's robots.

Robocode 1.9.3.9 can miss a robot's first sleep at a round start (`RobotPeer.startRound`);
in lockstep (`debug`) mode that stalls the round for minutes (about one battle in ten here).
`java/HarvestAgent.java`, a Java agent loaded into every engine, closes that race (see its
header). The runner's ready line says whether each of the agent's patches applied, and a host
whose engine runs unpatched raises `EngineUnpatched` instead of running it. Any other hang still
ends in `EngineStalled` through the turn timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import shutil
import subprocess
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np
from loguru import logger

from harvest.envs.extras import require
from harvest.envs.robocode.protocol import ABORT, QUIT, BattleCommand, ProtocolError, check_message

DEBIAN_PACKAGES = "robocode default-jdk xvfb"
JAR_DIR = Path("/usr/share/java")
HOME_TEMPLATE = Path("/usr/share/games/robocode")
JAVA_DIR = Path(__file__).with_name("java")
RUNNER_SOURCES = tuple(JAVA_DIR / name for name in ("HarvestRunner.java", "BattleCommand.java", "HarvestAgent.java"))
"""The engine side, package `harvest.robocode`."""
BRIDGE_SOURCE = JAVA_DIR / "HarvestBridge.java"
JAVA_PACKAGE = "harvest.robocode"
RUNNER_CLASS = f"{JAVA_PACKAGE}.HarvestRunner"
AGENT_CLASS = f"{JAVA_PACKAGE}.HarvestAgent"
BRIDGE_ROBOT = "harvest.HarvestBridge*"
"""The bridge robot's name in battles: Robocode stars every robot class in its robots folder
outside the `sample` packages as a development version."""
ROBOTS_DIR = "robots"
"""The compiled robots' folder inside the runner cache entry (kept off the engine's classpath, so
Robocode's robot class loader, not the JVM's, loads them)."""
SUPPORT_JARS = ("picocontainer.jar", "codesize.jar", "bcel.jar")
AGENT_JAR = "harvest-agent.jar"
JVM_FLAGS = (
    "-Xmx512m",
    "--add-opens",
    "java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
    "-Dsun.io.useCanonCaches=false",
    # the battle window: Robocode gives each robot its own AWT app context through sun.awt
    "--add-opens",
    "java.desktop/sun.awt=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    # HarvestAgent rewrites one method with BCEL, which cannot rebuild its StackMapTable
    "-XX:+UnlockDiagnosticVMOptions",
    "-XX:-BytecodeVerificationRemote",
)
ENGINE_PROPERTIES = {
    "robocode.cpu.constant": "1000000",  # skip the 5 s CPU benchmark
    "robocode.options.battle.desiredTPS": "10000",
}


class RobocodeNotInstalled(RuntimeError):
    """java, javac or the Robocode jars are missing."""


class RobocodeError(RuntimeError):
    """The engine refused a battle (e.g. a robot that is not installed) or failed."""


class EngineStalled(RobocodeError):
    """No turn arrived within the turn timeout; the JVM was killed."""


class EngineUnpatched(RobocodeError):
    """HarvestAgent did not patch a Robocode class (another Robocode version?); unpatched, a round
    start can stall for minutes, so the engine was shut down instead."""


@dataclass(frozen=True)
class RobocodeInstall:
    java: str
    javac: str
    classpath: tuple[str, ...]
    home_template: Path
    version: str

    @classmethod
    def find(cls) -> "RobocodeInstall":
        """The installed JDK and Robocode.

        Raises:
            RobocodeNotInstalled: naming what is missing and the Debian packages that provide it.
        """
        java, javac = shutil.which("java"), shutil.which("javac")
        jars = sorted(str(path) for path in JAR_DIR.glob("robocode*.jar"))
        support = [str(JAR_DIR / name) for name in SUPPORT_JARS if (JAR_DIR / name).is_file()]
        missing = [
            what
            for what, found in (
                ("java", java),
                ("javac", javac),
                (f"{JAR_DIR}/robocode*.jar", jars),
                (str(HOME_TEMPLATE / "robots"), (HOME_TEMPLATE / "robots").is_dir()),
            )
            if not found
        ]
        if missing:
            raise RobocodeNotInstalled(
                f"Robocode needs {', '.join(missing)}: install the Debian packages "
                f"`{DEBIAN_PACKAGES}` (apt-get install {DEBIAN_PACKAGES}, or `make setup`)"
            )
        assert java is not None and javac is not None  # both are in `missing` when not found
        version = next((path.split("-")[-1].removesuffix(".jar") for path in jars if "battle-" in path), "unknown")
        return cls(java, javac, tuple(jars + support), HOME_TEMPLATE, version)

    def java_version(self) -> str:
        result = subprocess.run([self.java, "-version"], capture_output=True, text=True, timeout=60)
        return (result.stderr or result.stdout).splitlines()[0]


def compile_runner(install: RobocodeInstall, cache_root: Path) -> Path:
    """The folder with the compiled runner, `harvest-agent.jar` and `robots/` (the bridge robot),
    built now unless cached.

    The cache key covers the sources, the Java version and the Robocode version.
    """
    sources = b"".join(path.read_bytes() for path in (*RUNNER_SOURCES, BRIDGE_SOURCE))
    key = hashlib.sha256(sources + install.java_version().encode() + install.version.encode()).hexdigest()[:16]
    classes = cache_root / f"runner-{key}"
    package_dir = Path(*JAVA_PACKAGE.split("."))
    if (classes / package_dir / "HarvestRunner.class").is_file() and (classes / AGENT_JAR).is_file():
        return classes
    staging = cache_root / f".runner-{key}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    classpath = os.pathsep.join(install.classpath)
    for output, sources_of in ((staging, RUNNER_SOURCES), (staging / ROBOTS_DIR, (BRIDGE_SOURCE,))):
        result = subprocess.run(
            [install.javac, "-nowarn", "-d", str(output), "-cp", classpath, *map(str, sources_of)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RobocodeError(
                f"javac failed on {', '.join(path.name for path in sources_of)}:\n{result.stderr[-3000:]}"
            )
    with zipfile.ZipFile(staging / AGENT_JAR, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", f"Manifest-Version: 1.0\nPremain-Class: {AGENT_CLASS}\n")
        for path in (staging / package_dir).glob("HarvestAgent*.class"):
            jar.write(path, path.relative_to(staging).as_posix())
    try:
        staging.rename(classes)  # atomic: a concurrent compile of the same key loses the race harmlessly
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return classes


def prepare_home(install: RobocodeInstall, home: Path) -> Path:
    """A writable Robocode home for one engine: the package's battles, config and robots."""
    home.mkdir(parents=True, exist_ok=True)
    for name in ("battles", "config", "robots"):
        if not (home / name).exists():
            shutil.copytree(install.home_template / name, home / name)
    properties = "".join(f"{key}={value}\n" for key, value in ENGINE_PROPERTIES.items())
    (home / "config" / "robocode.properties").write_text(properties)
    return home


def install_robots(classes: Path, home: Path) -> None:
    """Copy the compiled Harvest robots (the bridge) into the home's robots folder."""
    for path in (classes / ROBOTS_DIR).rglob("*.class"):
        target = home / "robots" / path.relative_to(classes / ROBOTS_DIR)
        if not target.is_file() or target.read_bytes() != path.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def bridge_properties(port: int) -> dict[str, str]:
    """The JVM system properties that let `BRIDGE_ROBOT` reach a policy listening on 127.0.0.1:`port`.

    Robocode's security manager forbids robots any socket; NOSECURITY turns it off for this JVM.
    """
    return {"NOSECURITY": "true", "harvest.bridge.port": str(port)}


def engine_command(
    install: RobocodeInstall, classes: Path, home: Path, lockstep: bool = True, properties: dict[str, str] | None = None
) -> list[str]:
    """The command line of one engine JVM (runner, agent, flags, `-Dkey=value` properties) for the home `home`."""
    flags = [
        *JVM_FLAGS,
        f"-javaagent:{classes / AGENT_JAR}",
        *(["-Ddebug=true"] if lockstep else []),
        *(f"-D{key}={value}" for key, value in (properties or {}).items()),
    ]
    classpath = os.pathsep.join([str(classes), *install.classpath])
    return [install.java, *flags, "-cp", classpath, RUNNER_CLASS, str(home)]


class RobocodeHost:
    """One JVM with the Robocode engine; battles run one after another.

    Args:
        workdir: this engine's own folder (Robocode home and `engine.log`).
        cache_root: where compiled runners are kept.
        lockstep: `-Ddebug=true`: no skipped turns (needed for exact, seeded battles).
        start_timeout_s: how long the JVM may take to come up.
        gui: show the battle window on a display of the host's own (Xvfb).
        bridge_port: let `BRIDGE_ROBOT` connect to 127.0.0.1:`bridge_port` (turns Robocode's robot
            security off in this JVM; see `bridge_properties`).
        properties: more JVM system properties (`-Dkey=value`), e.g. Robocode's own options.

    Attributes:
        version: Robocode's version, from the engine's ready line.
        patches: the ready line's report of each HarvestAgent patch (all applied, or the
            constructor raised `EngineUnpatched`).

    Raises:
        EngineUnpatched: a HarvestAgent patch did not apply (the message names the class, its
            methods, its jar and Robocode's version); the JVM is shut down.

    Usage:
        with RobocodeHost(Path("/tmp/engine-0"), Path("~/.cache/harvest/robocode")) as host:
            for message in host.battle(["sample.SpinBot", "sample.Target"], rounds=1, seed=7):
                ...   # {"t": "turn", "round": 0, "turn": 1, "robots": [...], "bullets": [...]}, ...
    """

    def __init__(
        self,
        workdir: Path,
        cache_root: Path,
        lockstep: bool = True,
        start_timeout_s: float = 120.0,
        gui: bool = False,
        bridge_port: int | None = None,
        properties: dict[str, str] | None = None,
    ) -> None:
        self._orjson = require("orjson", "the Robocode engine host")  # (here: a CartPole run never needs it)
        self.install = RobocodeInstall.find()
        self.workdir = Path(workdir)
        self.lockstep, self.gui, self.start_timeout_s = lockstep, gui, start_timeout_s
        self.properties = {**(bridge_properties(bridge_port) if bridge_port is not None else {}), **(properties or {})}
        self.home = prepare_home(self.install, self.workdir / "home")
        self.classes = compile_runner(self.install, Path(cache_root).expanduser())
        install_robots(self.classes, self.home)
        self.log_path = self.workdir / "engine.log"
        self._start()

    def _start(self) -> None:
        """Start the JVM (and its display, with `gui`) and wait for its ready line."""
        self.display = None
        env = dict(os.environ)
        if self.gui:  # the real battle window, on a display of this host's own
            from pyvirtualdisplay import Display

            self.display = Display(visible=False, size=(1024, 768))
            self.display.start()
            env["DISPLAY"] = self.display.new_display_var
        self._log = self.log_path.open("ab")
        command = engine_command(self.install, self.classes, self.home, self.lockstep, self.properties)
        command += ["gui"] if self.gui else []
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=self.home, env=env
        )
        assert self.process.stdout is not None  # stdout=PIPE
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._lines: deque[bytes] = deque()  # complete lines not yet returned
        self._partial = b""  # the start of the next line
        try:
            ready = self._next_message(self.start_timeout_s, "the engine to start")
            if self._check(ready) != "ready":
                raise RobocodeError(f"engine in {self.workdir}: expected a ready line, got {ready}")
            self._check_patches(ready)
        except BaseException:
            self.close()  # no host to close for a caller whose constructor raised
            raise
        self.version, self.patches = ready["version"], ready["patches"]

    def _check(self, message: dict[str, Any]) -> str:
        """`message`'s type, once it matches the protocol."""
        try:
            return check_message(message)
        except ProtocolError as err:
            raise RobocodeError(f"engine in {self.workdir}: {err} (see envs/robocode/protocol.py)") from err

    def _check_patches(self, ready: dict[str, Any]) -> None:
        unpatched = [patch for patch in ready["patches"] if not patch["applied"]]
        if unpatched:
            raise EngineUnpatched(
                f"engine in {self.workdir}: HarvestAgent did not patch "
                + "; ".join(
                    f"{patch['class']} ({', '.join(patch['methods'])}) in {patch['jar'] or JAR_DIR}: {patch['error']}"
                    for patch in unpatched
                )
                + f" (Robocode {ready['version']}, jars in {JAR_DIR}). The patches are made for Robocode 1.9.3.9 "
                "(java/HarvestAgent.java); unpatched, a round start can stall for minutes, so the engine was shut down"
            )

    def battle(
        self,
        robots: list[str],
        rounds: int = 1,
        seed: int | None = None,
        width: int = 800,
        height: int = 600,
        turn_timeout_s: float = 30.0,
        setups: list[tuple[float, float, float] | None] | None = None,
        live: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Run one battle; yields its round_start, turn, round_end and battle_end messages as they come.

        Args:
            setups: per robot, where each round places it: (x, y, heading in degrees), or None for
                Robocode's random spot (Robocode also falls back to one where a spot overlaps).
            live: the engine flushes every message at once (for a robot that waits on the reader).

        Raises:
            RobocodeError: the engine refused the battle (the message names the robots or setups).
            EngineStalled: no message within `turn_timeout_s` (the JVM is killed).
        """
        placed = None
        if setups is not None:
            # float() each value (ints, numpy scalars); the engine checks that a setup has three.
            placed = tuple(
                None if setup is None else cast(tuple[float, float, float], tuple(map(float, setup)))
                for setup in setups
            )
        command = BattleCommand(
            robots=tuple(robots),
            rounds=int(rounds),
            width=int(width),
            height=int(height),
            seed=None if seed is None else int(seed),
            setups=placed,
            live=bool(live),
        )
        self._send(command.line())
        engine_errors: list[str] = []
        while True:
            message = self._next_message(turn_timeout_s, f"a turn of {robots}")
            kind = message.get("t")
            if kind not in ("turn", "round_start"):  # the per-turn lines are the hot path
                self._check(message)
            if kind == "battle_start":  # the runner's reading of the command
                if message != command.echo():
                    raise RobocodeError(
                        f"engine in {self.workdir}: the runner read {command.line()!r} as {message}, "
                        f"expected {command.echo()}"
                    )
                continue
            if kind == "engine_error":  # Robocode's own complaint; the runner's verdict follows
                engine_errors.append(message["message"])
                logger.warning("engine in {}: {}", self.workdir, message["message"])
                continue
            if kind == "error":
                detail = f" (Robocode: {'; '.join(engine_errors)})" if engine_errors else ""
                raise RobocodeError(f"engine in {self.workdir}: {message['message']}{detail}")
            yield message
            if kind == "battle_end":
                return

    def abort(self) -> None:
        """End the running battle; its `battle()` iterator then ends with `{"t": "battle_end", "aborted": true}`."""
        self._send(ABORT)

    def restart(self) -> None:
        """Kill this JVM (if it still runs) and start a fresh one in the same working directory."""
        self.close()
        self._start()

    def screenshot(self) -> np.ndarray:
        """[768, 1024, 3] uint8: this host's display (only with `gui=True`)."""
        if self.display is None:
            raise RobocodeError(f"engine in {self.workdir}: no display; start the host with gui=True")
        from PIL import ImageGrab

        return np.asarray(ImageGrab.grab(xdisplay=self.display.new_display_var).convert("RGB"))

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((line + "\n").encode())
            self.process.stdin.flush()
        except OSError as err:  # BrokenPipeError: the JVM is gone (crashed or killed between battles)
            self.kill()
            raise RobocodeError(
                f"engine in {self.workdir} exited (code {self.process.poll()}) before "
                f"{line.split()[0]}: {err}. Log tail:\n{self.log_tail()}"
            ) from err

    def _next_message(self, timeout_s: float, waiting_for: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self._lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                self.kill()
                raise EngineStalled(
                    f"engine in {self.workdir}: nothing for {timeout_s:g}s while waiting for "
                    f"{waiting_for}; killed it. Log tail:\n{self.log_tail()}"
                )
            assert self.process.stdout is not None  # stdout=PIPE
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            if not chunk:
                self.kill()
                raise RobocodeError(
                    f"engine in {self.workdir} exited (code {self.process.poll()}) while waiting for "
                    f"{waiting_for}. Log tail:\n{self.log_tail()}"
                )
            # Split a chunk once (a chunk holds ~100 turns; splitting the rest off line by line
            # would copy it ~100 times).
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(complete)
        return self._orjson.loads(self._lines.popleft())

    def log_tail(self, num_lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the JVM to quit; kill it if it does not."""
        if self.process.poll() is None:
            try:
                self._send(QUIT)
                self.process.wait(timeout=timeout_s)
            except (RobocodeError, subprocess.TimeoutExpired):
                self.kill()
        self._selector.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # unflushed bytes to a JVM that is gone
                    stream.close()
        self._log.close()
        if self.display is not None:
            self.display.stop()
            self.display = None

    def __enter__(self) -> "RobocodeHost":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
