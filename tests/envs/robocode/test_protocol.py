"""The runner's protocol (`envs/robocode/protocol.py`) checked from both sides against the real runner,
and HarvestAgent's patches reported and enforced (needs `make setup`'s Debian packages)."""

from __future__ import annotations

import dataclasses
import math
import queue
import re
import subprocess
import threading
from pathlib import Path

import orjson
import pytest

from harvest.envs.robocode.host import (
    EngineUnpatched,
    RobocodeHost,
    RobocodeInstall,
    compile_runner,
    engine_command,
    prepare_home,
)
from harvest.envs.robocode.protocol import ABORT, BATTLE_OPTIONS, QUIT, BattleCommand, ProtocolError, check_message
from tests.envs.robocode.test_host import needs_robocode

ROBOTS = ("sample.SpinBot", "sample.Target")
BATTLE_JAR = "/usr/share/java/robocode.battle-1.9.3.9.jar"


class Runner:
    """The real runner JVM, driven line by line as the host drives it, with no host in between.

    Every line it prints is checked against the protocol as it is read.
    """

    def __init__(self, workdir: Path, cache_root: Path, agent: bool = True) -> None:
        install = RobocodeInstall.find()
        command = engine_command(install, compile_runner(install, cache_root), prepare_home(install, workdir / "home"))
        if not agent:
            command = [arg for arg in command if not arg.startswith("-javaagent:")]
        self._log = (workdir / "engine.log").open("wb")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=workdir / "home"
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next(timeout_s=180)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())
        self.process.stdin.flush()

    def next(self, timeout_s: float = 120) -> dict:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the runner printed nothing for {timeout_s:g}s") from None
        assert line is not None, f"the runner exited (code {self.process.poll()})"
        message = orjson.loads(line)
        check_message(message)
        return message

    def until(self, *kinds: str, timeout_s: float = 120) -> list[dict]:
        """The messages up to and including the next one of a type in `kinds`."""
        messages = [self.next(timeout_s)]
        while messages[-1]["t"] not in kinds:
            messages.append(self.next(timeout_s))
        return messages

    def close(self) -> int:
        if self.process.poll() is None:
            self.send(QUIT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("robocode-cache")


@pytest.fixture()
def runner(tmp_path, cache_root):
    started = Runner(tmp_path, cache_root)
    yield started
    started.close()


def jvms_in(folder: Path) -> list[int]:
    """Pids of the live processes whose command line names `folder` (an engine's home is inside it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return pids


# --- the Python side alone -------------------------------------------------------------------------

TURN = {
    "t": "turn",
    "round": 0,
    "turn": 3,
    "robots": [
        {
            "name": "sample.SpinBot",
            "x": 100.0,
            "y": 80,
            "heading": 1.5,
            "gun_heading": 1.5,
            "radar_heading": 1.5,
            "velocity": -2.0,
            "gun_heat": 0.0,
            "energy": 99.5,
            "box_x": 82.0,
            "box_y": 62.0,
            "state": "ACTIVE",
        }
    ],
    "bullets": [{"id": 1, "owner": 0, "x": 1.0, "y": 2.0, "heading": 0.5, "power": 3.0, "state": "MOVING"}],
}


def changed(message: dict, path: tuple, value: object) -> dict:
    """A deep copy of `message` with the value at `path` set (or removed, for `...`)."""
    copy = orjson.loads(orjson.dumps(message))
    *parents, last = path
    target = copy
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return copy


@pytest.mark.parametrize(
    "path, value, error",
    [
        (("t",), "tick", r"expected an object whose t is one of \['battle_end', 'battle_start', 'engine_error'"),
        (("turn",), 3.0, r"turn message, turn: expected int, got 3.0"),
        (("turn",), True, r"turn message, turn: expected int, got True"),
        (("robots", 0, "energy"), "full", r"turn message, robots\[0\], energy: expected int or float, got 'full'"),
        (("robots", 0, "state"), "ASLEEP", r"robots\[0\], state: expected one of \['ACTIVE', 'HIT_WALL'"),
        (("robots", 0, "x"), ..., r"robots\[0\]: unexpected fields \[\], missing fields \['x'\]"),
        (("robots", 0, "colour"), "red", r"robots\[0\]: unexpected fields \['colour'\], missing fields \[\]"),
        (("bullets", 0, "owner"), None, r"bullets\[0\], owner: expected int, got None"),
        (("bullets",), {}, r"turn message, bullets: expected list, got \{\}"),
    ],
)
def test_a_message_off_the_protocol_is_rejected_naming_the_field(path, value, error):
    assert check_message(TURN) == "turn"
    assert check_message(changed(TURN, ("robots", 0, "box_x"), ...) | {"robots": []}) == "turn"  # box_x is optional
    with pytest.raises(ProtocolError, match=error):
        check_message(changed(TURN, path, value))


def test_battle_commands_carry_every_option_in_the_protocols_order():
    assert [field.name for field in dataclasses.fields(BattleCommand)] == list(BATTLE_OPTIONS)
    command = BattleCommand(ROBOTS, rounds=2, seed=7, setups=((100, 50.5, -90), None), live=True)
    assert command.line() == (
        "BATTLE robots=sample.SpinBot,sample.Target rounds=2 width=800 height=600 seed=7 "
        "setups=100.0,50.5,-90.0;random live=1"
    )
    assert check_message(command.echo()) == "battle_start"
    assert command.echo()["setups"] == [[100.0, 50.5, -90.0], None]
    with pytest.raises(ProtocolError, match=r"BATTLE robots: 'sample.SpinBot,sample.Target' is not a robot name"):
        BattleCommand(("sample.SpinBot,sample.Target",))
    with pytest.raises(ProtocolError, match=r"battle_start message, setups\[0\]: expected 3 elements"):
        check_message(command.echo() | {"setups": [[1.0, 2.0], None]})


# --- both sides: the real runner ---------------------------------------------------------------------


@pytest.mark.robocode
@needs_robocode
def test_a_host_made_battle_is_read_as_sent_and_every_line_the_runner_prints_matches(runner):
    assert runner.ready["version"] == "1.9.3.9"
    # width and height are read: SpinBot is placed where only a 1000 x 700 field has room (on a
    # smaller one it hits the wall in turn 1 and is moved back in)
    command = BattleCommand(ROBOTS, rounds=2, width=1000, height=700, seed=5, setups=((950.5, 650.25, 270), None))
    runner.send(command.line())
    messages = runner.until("battle_end")  # each one checked against the protocol
    assert messages[0] == command.echo()
    kinds = "".join(
        {"battle_start": "s", "round_start": "r", "turn": "t", "round_end": "e", "battle_end": "b"}[m["t"]]
        for m in messages
    )
    assert re.fullmatch(r"s(rt+e){2}b", kinds), kinds
    for round_end in (m for m in messages if m["t"] == "round_end"):
        turns = [m["turn"] for m in messages if m["t"] == "turn" and m["round"] == round_end["round"]]
        assert turns == list(range(1, round_end["turns"] + 1)), "lockstep: every turn, in order"
    starts = [index for index, m in enumerate(messages) if m["t"] == "round_start"]
    for start, first_turn in ((messages[index], messages[index + 1]) for index in starts):
        spin = start["robots"][0]
        assert (spin["x"], spin["y"]) == (950.5, 650.25)
        assert spin["heading"] == pytest.approx(math.radians(270))
        moved = first_turn["robots"][0]
        assert abs(moved["x"] - 950.5) <= 8 and abs(moved["y"] - 650.25) <= 8 and moved["state"] == "ACTIVE"
    assert [result["name"] for result in messages[-1]["results"]] == list(ROBOTS)

    runner.send(BattleCommand(ROBOTS, rounds=50, live=True).line())
    assert [m["t"] for m in runner.until("turn")][:2] == ["battle_start", "round_start"]
    runner.send(ABORT)
    assert runner.until("battle_end")[-1] == {"t": "battle_end", "aborted": True, "results": []}
    assert runner.close() == 0, "QUIT ends the JVM"


OPTIONS = ", ".join(BATTLE_OPTIONS)
SETUP_ERROR = "entry 0 is not x,y,heading (finite numbers, x, y >= 0) or random"
REFUSED = [
    ("BATTLE robots=a.A bogus=1", f"BATTLE: unknown option bogus=1; expected key=value, key one of [{OPTIONS}]"),
    ("BATTLE rounds=2", "BATTLE: robots=<a,b,...> is missing"),
    ("BATTLE robots=a.A rounds=two", "BATTLE: rounds=two: expected an integer"),
    ("BATTLE robots=a.A rounds=0", "BATTLE: rounds=0: expected a positive int"),
    ("BATTLE robots=a.A seed=7 seed=8", "BATTLE: seed is given twice"),
    ("BATTLE robots=a.A,b.B setups=1.0,2.0,3.0", "BATTLE: setups=1.0,2.0,3.0: expected 2 entries, got 1"),
    ("BATTLE robots=a.A setups=nan,2.0,3.0", f"BATTLE: setups=nan,2.0,3.0: {SETUP_ERROR}"),  # Python's repr of NaN
    ("BATTLE robots=a.A live=yes", "BATTLE: live=yes: expected 0 or 1"),
    ("FIGHT robots=a.A", "unknown command FIGHT; expected BATTLE, ABORT or QUIT"),
]


@pytest.mark.robocode
@needs_robocode
def test_the_runner_refuses_a_command_off_the_protocol_naming_the_option_and_goes_on(runner):
    for line, error in REFUSED:  # not parsed: no battle_start
        runner.send(line)
        assert runner.next() == {"t": "error", "message": error}, line
    # parsed, then refused by Robocode: battle_start first
    runner.send(BattleCommand(ROBOTS, width=300).line())
    assert runner.until("error", "battle_end") == [
        BattleCommand(ROBOTS, width=300).echo(),
        {"t": "error", "message": "BATTLE: width must be: 400 <= width <= 5000"},
    ]
    runner.send(BattleCommand(("sample.SpinBot", "sample.NoSuchBot")).line())
    assert [m["t"] for m in runner.until("error", "battle_end")] == ["battle_start", "engine_error", "error"]
    # the defaults the protocol describes are the runner's
    runner.send("BATTLE robots=sample.SpinBot,sample.Target")
    assert runner.next() == BattleCommand(ROBOTS).echo()
    assert runner.next()["t"] == "round_start"
    runner.send(ABORT)
    assert runner.until("battle_end")[-1]["aborted"] is True


# --- HarvestAgent's patches ---------------------------------------------------------------------------


@pytest.mark.robocode
@needs_robocode
def test_an_engine_reports_both_patches_applied_and_its_turns_come_from_the_agent(tmp_path, cache_root):
    with RobocodeHost(tmp_path / "engine", cache_root) as engine:
        assert engine.patches == [
            {
                "class": "net.sf.robocode.battle.peer.RobotPeer",
                "methods": ["startRound(JI)V"],
                "jar": BATTLE_JAR,
                "applied": True,
                "error": None,
            },
            {
                "class": "net.sf.robocode.battle.Battle",
                "methods": ["initializeRound()V", "runTurn()V"],
                "jar": BATTLE_JAR,
                "applied": True,
                "error": None,
            },
        ]
        turns = [m for m in engine.battle(list(ROBOTS), seed=3, turn_timeout_s=30) if m["t"] == "turn"]
    assert turns and all("box_x" in turn["robots"][0] for turn in turns), "every turn is the patched Battle's"


@pytest.mark.robocode
@needs_robocode
@pytest.mark.parametrize(
    "target, missed",
    [
        ("RobotPeer.startRound", r"net.sf.robocode.battle.peer.RobotPeer \(noSuchMethod\(JI\)V\)"),
        ("Battle.runTurn", r"net.sf.robocode.battle.Battle \(initializeRound\(\)V, noSuchMethod\(\)V\)"),
    ],
)
def test_a_patch_that_does_not_apply_stops_the_host_naming_class_method_and_jar(tmp_path, cache_root, target, missed):
    properties = {f"harvest.agent.target.{target}": "noSuchMethod"}  # the agent looks for a method Robocode lacks
    with pytest.raises(EngineUnpatched) as raised:
        RobocodeHost(tmp_path / "engine", cache_root, properties=properties)
    assert re.search(f"did not patch {missed} in {BATTLE_JAR}: java.lang.IllegalStateException: ", str(raised.value))
    assert "(Robocode 1.9.3.9, jars in /usr/share/java)" in str(raised.value)
    assert not jvms_in(tmp_path / "engine"), "the unpatched engine was shut down"


@pytest.mark.robocode
@needs_robocode
def test_a_runner_without_the_agent_reports_no_patch_and_refuses_battles(tmp_path, cache_root):
    runner = Runner(tmp_path, cache_root, agent=False)
    try:
        not_loaded = "HarvestAgent is not loaded (the JVM needs -javaagent:harvest-agent.jar)"
        assert [(p["class"], p["applied"], p["error"]) for p in runner.ready["patches"]] == [
            ("net.sf.robocode.battle.peer.RobotPeer", False, not_loaded),
            ("net.sf.robocode.battle.Battle", False, not_loaded),
        ]
        runner.send(BattleCommand(ROBOTS).line())
        error = runner.next()
        assert error["t"] == "error"
        assert error["message"].startswith(
            f"BATTLE refused: HarvestAgent did not patch net.sf.robocode.battle.peer.RobotPeer: {not_loaded}; "
        )
    finally:
        assert runner.close() == 0
