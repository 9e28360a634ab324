"""Optional parts of Harvest and the pyproject extra that brings each (`pip install
'harvest-rl[EXTRA]'`): a feature whose package is missing says so in one line.

| extra      | packages         | for                                                              |
|------------|------------------|------------------------------------------------------------------|
| `human`    | pygame, Box2D    | teleoperation windows, CarRacing (the driving game and its expert) |
| `formats`  | minari, tfrecord | `harvest export --to minari`, `harvest import minari`, `aggregation.formats: [tfrecord]` |
| `robocode` | orjson           | the Robocode engine host (and the Debian packages robocode, a JDK, xvfb) |
| `all`      | all of the above |                                                                  |
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "harvest-rl"

EXTRA_OF_MODULE = {
    "pygame": "human",
    "Box2D": "human",
    "minari": "formats",
    "tfrecord": "formats",
    "orjson": "robocode",
}
"""Top-level module -> the extra that installs it."""


class MissingExtraError(ImportError):
    """A feature's optional package is not installed; the message names the extra to install."""


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, feature: str) -> ModuleType:
    """`module` imported, or `MissingExtraError` naming `feature` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        if top not in EXTRA_OF_MODULE or (err.name or "").split(".")[0] != top:
            raise  # not a missing optional package: a real import error
        raise MissingExtraError(
            f"{feature} needs {top}, which is not installed: {install_hint(EXTRA_OF_MODULE[top])}"
        ) from err
