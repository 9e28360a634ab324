"""The protocol between `RobocodeHost` (host.py) and its JVM (`java/HarvestRunner.java`): its one description.

The host writes commands to the runner's stdin, one line each; the runner writes JSON objects to
its stdout, one per line (Robocode's own output goes to stderr, the host's `engine.log`).

Commands:

    BATTLE robots=sample.SpinBot,sample.Target [rounds=3] [width=800] [height=600] [seed=7]
           [setups=x,y,heading;random] [live=1]        (`BattleCommand`, options `BATTLE_OPTIONS`)
    ABORT   end the running battle; its battle_end says "aborted": true
    QUIT    end the running battle and the JVM

Messages (`MESSAGES`; `check_message` checks one), in the order they come:

    ready          once, when the engine is up: Robocode's version and each HarvestAgent patch
    battle_start   a BATTLE as the runner read it, defaults filled in (`BattleCommand.echo`)
    round_start    each round: the robots as placed (turn 0)
    turn           each turn: the robots and bullets, printed before that turn's robots are woken
    round_end      each round
    battle_end     last of a battle: the results, or "aborted": true
    engine_error   Robocode's own complaint (e.g. a robot it cannot find); the runner's verdict follows
    error          a command refused: not parsed (no battle_start before it) or not run (after it)

The runner refuses every BATTLE when a patch is missing (`ready`'s `patches`); the host refuses such
an engine before sending one. `live=1` flushes each line at once, for a robot that waits on whoever
reads them (the bridge). Angles are radians clockwise from north, positions pixels from the
bottom-left corner, as in Robocode's snapshots.

Java side: `java/BattleCommand.java` parses BATTLE (its `OPTIONS` are `BATTLE_OPTIONS`) and writes
battle_start; `java/HarvestRunner.java` writes the rest. `tests/envs/robocode/test_protocol.py` runs the
real runner and checks both sides against this module. The host checks every message but the
per-turn ones (round_start, turn: the hot path) as it reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

TEXT, INT, NUMBER, FLAG, LIST, NULL = (str,), (int,), (int, float), (bool,), (list,), (type(None),)
ROBOT_STATES = ("ACTIVE", "HIT_WALL", "HIT_ROBOT", "DEAD")
BULLET_STATES = ("FIRED", "MOVING", "HIT_VICTIM", "HIT_BULLET", "HIT_WALL", "EXPLODED", "INACTIVE")
ABORT = "ABORT"
QUIT = "QUIT"


class ProtocolError(ValueError):
    """A line from or to the runner does not match this protocol."""


@dataclass(frozen=True)
class Field:
    """One field of a message: its JSON types, what it holds, and whether it may be left out."""

    types: tuple[type, ...]
    doc: str
    optional: bool = False
    items: Union["Field", dict[str, "Field"], None] = None
    """A list's elements: values like this field, or objects with these fields."""
    length: int | None = None
    """A list's exact length."""
    choices: tuple[str, ...] = ()


ROBOT_FIELDS = {
    "name": Field(TEXT, "`package.Class`; a development version (the bridge) ends in *"),
    "x": Field(NUMBER, "centre, pixels"),
    "y": Field(NUMBER, "centre, pixels"),
    "heading": Field(NUMBER, "body heading, radians"),
    "gun_heading": Field(NUMBER, "radians"),
    "radar_heading": Field(NUMBER, "radians"),
    "velocity": Field(NUMBER, "pixels per turn, negative backwards"),
    "gun_heat": Field(NUMBER, "the gun fires at 0"),
    "energy": Field(NUMBER, "0 once disabled or dead"),
    "box_x": Field(NUMBER, "bounding box corner, what the radar scans (turns the agent reported)", optional=True),
    "box_y": Field(NUMBER, "bounding box corner (turns the agent reported)", optional=True),
    "state": Field(TEXT, "Robocode's RobotState", choices=ROBOT_STATES),
}
BULLET_FIELDS = {
    "id": Field(INT, "Robocode's bullet id"),
    "owner": Field(INT, "index of the robot that fired it, in the battle's robot order"),
    "x": Field(NUMBER, "pixels"),
    "y": Field(NUMBER, "pixels"),
    "heading": Field(NUMBER, "radians"),
    "power": Field(NUMBER, "0.1 to 3"),
    "state": Field(TEXT, "Robocode's BulletState", choices=BULLET_STATES),
}
TURN_FIELDS = {
    "round": Field(INT, "from 0"),
    "turn": Field(INT, "0 in round_start, then 1, 2, ... (lockstep: none skipped)"),
    "robots": Field(LIST, "every robot, in the battle's order", items=ROBOT_FIELDS),
    "bullets": Field(LIST, "bullets in flight or just ended", items=BULLET_FIELDS),
}
PATCH_FIELDS = {
    "class": Field(TEXT, "the Robocode class HarvestAgent patches"),
    "methods": Field(LIST, "the methods it rewrites, name(signature)", items=Field(TEXT, "")),
    "jar": Field(TEXT, "where the class was loaded from; empty when it was not found"),
    "applied": Field(FLAG, "false: the class runs unpatched and the runner refuses battles"),
    "error": Field(TEXT + NULL, "why the patch is missing; null when applied"),
}
MESSAGES: dict[str, dict[str, Field]] = {
    "ready": {
        "version": Field(TEXT, "Robocode's version, e.g. 1.9.3.9"),
        "patches": Field(LIST, "one entry per class HarvestAgent patches", items=PATCH_FIELDS),
    },
    "battle_start": {
        "robots": Field(LIST, "as given", items=Field(TEXT, "")),
        "rounds": Field(INT, "default 3"),
        "width": Field(INT, "pixels, default 800"),
        "height": Field(INT, "pixels, default 600"),
        "seed": Field(INT + NULL, "null: Robocode's random generator is not reset"),
        "setups": Field(
            LIST + NULL,
            "per robot [x, y, heading in degrees] or null (random); null: all random",
            items=Field(LIST + NULL, "", items=Field(NUMBER, ""), length=3),
        ),
        "live": Field(FLAG, "every line flushed at once"),
    },
    "round_start": TURN_FIELDS,
    "turn": TURN_FIELDS,
    "round_end": {"round": Field(INT, "from 0"), "turns": Field(INT, "the round's last turn")},
    "battle_end": {
        "aborted": Field(FLAG, "present (true) when ABORT, QUIT or a failure ended the battle", optional=True),
        "results": Field(
            LIST,
            "Robocode's results, in the battle's robot order; empty when aborted",
            items={
                "name": Field(TEXT, "the robot (its team leader)"),
                "rank": Field(INT, "1 for the winner"),
                "score": Field(INT, "total score"),
                "firsts": Field(INT, "rounds won"),
            },
        ),
    },
    "engine_error": {"message": Field(TEXT, "Robocode's BattleErrorEvent text")},
    "error": {"message": Field(TEXT, "what was refused and why")},
}
BATTLE_OPTIONS = {
    "robots": "required: installed robots, comma-separated (`package.Class`, `package.Class*` for a development one)",
    "rounds": "positive int, default 3",
    "width": "pixels, default 800 (Robocode allows 400 to 5000)",
    "height": "pixels, default 600 (Robocode allows 400 to 5000)",
    "seed": "integer: resets Robocode's random generator before the battle (exact, repeatable battles)",
    "setups": "per robot `x,y,heading` (pixels, degrees; finite, x and y >= 0) or `random`, `;`-separated",
    "live": "1: flush every line at once; 0 (default): flush at each round's end",
}


@dataclass(frozen=True)
class BattleCommand:
    """One BATTLE command: the line the host sends, and the battle_start the runner answers it with.

    Fields are `BATTLE_OPTIONS`, in that order. Usage:
        command = BattleCommand(("sample.SpinBot", "sample.Target"), rounds=1, seed=7)
        command.line()   # 'BATTLE robots=sample.SpinBot,sample.Target rounds=1 width=800 height=600 seed=7'
        command.echo()   # {"t": "battle_start", "robots": [...], "rounds": 1, ..., "seed": 7, ...}

    Raises:
        ProtocolError: a robot name that cannot be written into the line (empty, or with `,;=` or a space).
    """

    robots: tuple[str, ...]
    rounds: int = 3
    width: int = 800
    height: int = 600
    seed: int | None = None
    setups: tuple[tuple[float, float, float] | None, ...] | None = None
    live: bool = False

    def __post_init__(self) -> None:
        for name in self.robots:
            if not name or any(separator in name for separator in ",;= \t\n"):
                raise ProtocolError(f"BATTLE robots: {name!r} is not a robot name (`package.Class`)")

    def line(self) -> str:
        options: dict[str, object] = {
            "robots": ",".join(self.robots),
            "rounds": self.rounds,
            "width": self.width,
            "height": self.height,
        }
        if self.seed is not None:
            options["seed"] = self.seed
        if self.setups is not None:
            options["setups"] = ";".join(
                "random" if setup is None else ",".join(repr(float(value)) for value in setup) for setup in self.setups
            )
        if self.live:
            options["live"] = 1
        return "BATTLE " + " ".join(f"{key}={value}" for key, value in options.items())

    def echo(self) -> dict[str, Any]:
        """The battle_start message a runner that read `line()` right answers with."""
        setups = None
        if self.setups is not None:
            setups = [None if setup is None else [float(value) for value in setup] for setup in self.setups]
        return {
            "t": "battle_start",
            "robots": list(self.robots),
            "rounds": self.rounds,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "setups": setups,
            "live": self.live,
        }


def check_message(message: object) -> str:
    """The type (`t`) of one message from the runner, once it matches `MESSAGES`.

    Raises:
        ProtocolError: naming the message type, the field's path, the value and what was expected.
    """
    if not isinstance(message, dict) or message.get("t") not in MESSAGES:
        raise ProtocolError(f"expected an object whose t is one of {sorted(MESSAGES)}, got {_shorten(message)}")
    kind = message["t"]
    _check_object({key: value for key, value in message.items() if key != "t"}, MESSAGES[kind], f"{kind} message")
    return kind


def _check_object(value: object, fields: dict[str, Field], path: str) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{path}: expected an object with {sorted(fields)}, got {_shorten(value)}")
    unknown = sorted(set(value) - set(fields))
    missing = sorted(name for name, field in fields.items() if name not in value and not field.optional)
    if unknown or missing:
        raise ProtocolError(f"{path}: unexpected fields {unknown}, missing fields {missing}; got {_shorten(value)}")
    for name, item in value.items():
        _check_value(item, fields[name], f"{path}, {name}")


def _check_value(value: object, field: Field, path: str) -> None:
    if not isinstance(value, field.types) or (isinstance(value, bool) and bool not in field.types):
        expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in field.types)
        raise ProtocolError(f"{path}: expected {expected}, got {_shorten(value)}")
    if field.choices and value not in field.choices:
        raise ProtocolError(f"{path}: expected one of {list(field.choices)}, got {value!r}")
    if not isinstance(value, list):
        return
    if field.length is not None and len(value) != field.length:
        raise ProtocolError(f"{path}: expected {field.length} elements, got {_shorten(value)}")
    for index, item in enumerate(value):
        if isinstance(field.items, dict):
            _check_object(item, field.items, f"{path}[{index}]")
        elif field.items is not None:
            _check_value(item, field.items, f"{path}[{index}]")


def _shorten(value: object, max_chars: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
