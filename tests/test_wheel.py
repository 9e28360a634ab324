"""Harvest as a user installs it: the wheel built from this checkout, installed with its core
dependencies alone into a fresh venv, used from a folder of the user's own that holds folders
named like Harvest's subpackages - the default job from the command, the same from Python, and
a job submitted to a Ray cluster started with `ray start` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.cluster.local_nodes import LocalCluster

REPO = Path(__file__).resolve().parents[1]
TORCH_PIN = os.environ.get("TORCH_PIN", "torch==2.13.0")  # (the Makefile's: a CPU wheel on this machine)
NOT_IN_THE_CORE = {"pytest", "pygame", "box2d", "minari", "tfrecord", "orjson", "polars", "duckdb", "mkdocs", "moto"}
SHRUNK = [
    "env.num_envs=4",
    "rollout.steps=2000",
    "rollout.batch_rows=500",
    "learner.bc.epochs=1",
    "learner.hidden_sizes=[32]",
    "eval.episodes=2",
    "eval.baselines=[random]",
]
JUNK = "raise SystemExit('the user folder {name}/ was imported in place of harvest.{name}')\n"


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 400) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{command[:3]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel and the core dependencies only; its `bin` folder."""
    root = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(root / "dist"),
            str(REPO),
        ],
        root,
        timeout=280,
    )
    (wheel,) = (root / "dist").glob("harvest_rl-*.whl")
    run([sys.executable, "-m", "venv", str(root / "venv")], root, timeout=120)
    bin_dir = root / "venv" / "bin"
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel), TORCH_PIN], root, timeout=900)
    listed = {entry["name"].lower() for entry in json.loads(run([str(bin_dir / "pip"), "list", "--format=json"], root))}
    assert "harvest-rl" in listed and not listed & NOT_IN_THE_CORE, listed & NOT_IN_THE_CORE
    return bin_dir


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of the user's own, with packages `envs`, `cluster` and `rollout` that stop any
    process importing them."""
    for name in ("envs", "cluster", "rollout"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(JUNK.format(name=name))
    return tmp_path


def sets(*items: str) -> list[str]:
    return sum((["--set", item] for item in items), [])


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_installed_wheel_runs_the_default_job_from_the_command_python_and_a_cluster(installed, user_folder):
    out = user_folder / "artifacts"
    env = {**os.environ, "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    python = str(installed / "python")
    located = run(
        [python, "-c", "import harvest, harvest.envs; print(harvest.__file__, harvest.envs.__file__)"], user_folder, env
    )
    assert all("site-packages/harvest/" in path for path in located.split()), located

    run([str(installed / "harvest"), "run", "--run-id", "from-the-command", *sets(*SHRUNK)], user_folder, env)
    summary = json.loads((out / "from-the-command" / "summary.json").read_text())
    assert summary["collect"]["rows"] == 2000 and summary["eval"]["trained"]["episodes"] == 2

    code = (
        f"import harvest\nresult = harvest.run(overrides={SHRUNK!r}, run_id='from-python')\n"
        "print(result.run_dir, result.rows)"
    )
    printed = run([python, "-c", code], user_folder, env).split()
    assert printed[-2:] == [str(out / "from-python"), "2000"]

    (user_folder / "my.yaml").write_text(run([str(installed / "harvest"), "example", "cartpole_bc"], user_folder, env))
    cluster = LocalCluster(user_folder / "cluster-state", python=python)
    try:
        cluster.start_head(num_cpus=2)
        cluster.wait_for_nodes(1)
        run(
            [
                str(installed / "harvest"),
                "submit",
                "my.yaml",
                "--address",
                cluster.dashboard_url,
                "--wait",
                "--run-id",
                "submitted",
                "--output-dir",
                str(out),
                *sets(*SHRUNK),
            ],
            user_folder,
            {**env, **cluster.env},
        )
    finally:
        cluster.stop()
    summary = json.loads((out / "submitted" / "summary.json").read_text())
    assert summary["collect"]["rows"] == 2000 and (out / "submitted" / "learner" / "best.safetensors").is_file()
