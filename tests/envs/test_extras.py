"""A feature whose optional package is missing says in one line which extra to install (exit 2),
before Ray starts. The packages are hidden from a fresh `harvest` process (None in sys.modules,
as when they are not installed); everything else is the real command."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.rollout.batch import BatchSchema
from tests.rollout.test_batch import random_batch


def harvest_without(modules: list[str], argv: list[str], cwd) -> subprocess.CompletedProcess:
    code = (
        f"import sys\nfor name in {modules!r}: sys.modules[name] = None\n"
        f"from harvest.cluster.cli import main\nsys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_car_racing_without_box2d_names_the_human_extra(tmp_path):
    done = harvest_without(
        ["Box2D"], ["run", "--set", "env.id=CarRacing-v3", "--set", f"run.output_dir={tmp_path}"], tmp_path
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "CarRacing-v3" in errors[0] and "pip install 'harvest-rl[human]'" in errors[0], errors
    assert "Ray" not in done.stderr and not list(tmp_path.iterdir()), "refused before Ray and the run folder"


def test_a_minari_export_without_minari_names_the_formats_extra(tmp_path):
    schema = BatchSchema.for_spaces(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2))
    write_dataset([random_batch(schema, 40)], schema, tmp_path / "d", AggregationConfig(formats=["parquet"]), "t", "x")
    done = harvest_without(
        ["minari"], ["export", str(tmp_path / "d"), "--to", "minari", "--out", str(tmp_path / "minari")], tmp_path
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "harvest export --to minari needs minari, which is not installed: pip install 'harvest-rl[formats]'"
        in done.stderr
        and "Traceback" not in done.stderr
    )


def test_the_teleoperation_window_without_pygame_names_the_human_extra():
    from harvest.envs.extras import MissingExtraError, require

    sys.modules["pygame_is_hidden_here"] = None  # (a module of that extra's kind is looked up by its top name)
    try:
        require("pygame_is_hidden_here", "x")
    except ImportError as err:
        assert not isinstance(err, MissingExtraError), "an unknown module is a plain ImportError"
    finally:
        del sys.modules["pygame_is_hidden_here"]
    saved = sys.modules.get("pygame")
    sys.modules["pygame"] = None
    try:
        try:
            require("pygame", "the teleoperation window")
        except MissingExtraError as err:
            assert str(err) == (
                "the teleoperation window needs pygame, which is not installed: pip install 'harvest-rl[human]'"
            )
        else:
            raise AssertionError("no MissingExtraError")
    finally:
        if saved is None:
            del sys.modules["pygame"]
        else:
            sys.modules["pygame"] = saved
