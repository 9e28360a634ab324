"""Every subcommand against a careless user's typical mistakes: one short line on stderr, no
traceback, and the documented exit code (2: usage or config; 1: the data failed a check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.cluster.cli import EXIT_USAGE, main

REPO_ROOT = Path(__file__).resolve().parents[2]
BOMB = """env:
  kwargs:
    a: &a [x, x, x, x, x, x, x, x, x, x]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A folder with the inputs the table's commands get wrong."""
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "dup.yaml").write_text("rollout:\n  steps: 100\nreplay:\n  num_shards: 1\nrollout:\n  steps: 200\n")
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "a-file").write_text("not a folder\n")
    taken = tmp_path / "out" / "taken"
    taken.mkdir(parents=True)
    (taken / "config.yaml").write_text("run: {id: taken}\n")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "my-notes.txt").write_text("a user's own file, not a run\n")
    (tmp_path / "not-a-dataset").mkdir()
    return tmp_path


# (subcommand line, exit code, words the one line must hold); {w} is the workspace folder.
CASES = [
    ("run {w}/a-folder", EXIT_USAGE, "is a folder"),
    ("run {w}/missing.yaml", EXIT_USAGE, "no such config file"),
    ("run --set rollout.steps=[1,", EXIT_USAGE, "not valid YAML"),
    ("run --set replay.capcity_rows=5", EXIT_USAGE, "replay.capcity_rows: unexpected key"),
    ("run {w}/dup.yaml", EXIT_USAGE, "'rollout' is given twice, on line 1 and on line 5"),
    ("run {w}/bomb.yaml", EXIT_USAGE, "YAML aliases"),
    ("run --set ray.dashboard_port=70000", EXIT_USAGE, "ray.dashboard_port"),
    ("run --set env.id=NoSuchEnv-v0 --set run.output_dir={w}/out", EXIT_USAGE, "'NoSuchEnv-v0' is not a Gymnasium id"),
    ("run --set env.id=no_such_module:Env --set run.output_dir={w}/out", EXIT_USAGE, "cannot import module"),
    ("run --run-id taken --set run.output_dir={w}/out", EXIT_USAGE, "`harvest run --resume taken`"),
    ("run --resume nothing-here --set run.output_dir={w}/out", EXIT_USAGE, "no such file"),
    ("run --resume taken --overwrite --set run.output_dir={w}/out", EXIT_USAGE, "neither CONFIG, --run-id nor"),
    ("run --run-id x --set run.output_dir={w}/a-file/runs", EXIT_USAGE, "cannot create the run folder"),
    ("run --run-id not-a-run --overwrite --set run.output_dir={w}", EXIT_USAGE, "not a Harvest run folder"),
    ("collect --set env.id=NoSuchEnv-v0 --set run.output_dir={w}/out", EXIT_USAGE, "is not a Gymnasium id"),
    ("compact {w}/no-run", EXIT_USAGE, "no such file"),
    ("train {w}/not-a-run", EXIT_USAGE, "no such file"),
    ("eval {w}/out/taken --set env.id=NoSuchEnv-v0", EXIT_USAGE, "is not a Gymnasium id"),
    ("config {w}/dup.yaml", EXIT_USAGE, "given twice"),
    ("inspect {w}/not-a-dataset", EXIT_USAGE, "no _manifest.json"),
    ("export {w}/not-a-dataset --to offline-rl --out {w}/x.hdf5", EXIT_USAGE, "no _manifest.json"),
    ("edit filter {w}/not-a-dataset --out {w}/filtered --min-return 1", EXIT_USAGE, "no _manifest.json"),
    ("windows {w}/not-a-dataset --history 4", EXIT_USAGE, "no _manifest.json"),
    ("import parquet {w}/no-such.parquet --out {w}/imported", EXIT_USAGE, "no-such.parquet"),
]


@pytest.mark.parametrize(("line", "code", "words"), CASES, ids=[case[0].split(" {w}")[0] for case in CASES])
def test_a_user_error_is_one_line_with_its_exit_code(workspace, capfd, line, code, words):
    argv = line.format(w=workspace).split(" ")
    assert main(argv) == code
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert words in err, err
    errors = [text for text in err.splitlines() if " ERROR " in text]
    assert errors and len(err.splitlines()) <= 6, err


def test_debug_prints_the_traceback(workspace, capfd):
    assert main(["--debug", "run", "--set", f"run.output_dir={workspace}/out", "--set", "env.id=NoSuchEnv-v0"]) == 2
    assert "Traceback" in capfd.readouterr().err


def test_an_unknown_env_is_named_before_ray_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "harvest", "run", "--set", f"run.output_dir={tmp_path}", "--set", "env.id=NoSuchEnv-v0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == EXIT_USAGE
    assert "NoSuchEnv-v0" in done.stderr and "Traceback" not in done.stderr
    assert "Prometheus" not in done.stderr and "Ray" not in done.stderr  # Ray never started
    assert not any(tmp_path.iterdir()), "nothing is written for a run that cannot start"


def test_a_run_that_fails_in_its_parts_exits_4_not_as_a_bug():
    import ray.exceptions

    from harvest.aggregation.integrity import DatasetError, DatasetIntegrityError
    from harvest.cluster.cli import _exit_code

    assert _exit_code(TimeoutError("PPO: collectors not done after 5s")) == 4
    assert _exit_code(ray.exceptions.ActorDiedError()) == 4
    assert _exit_code(DatasetIntegrityError("x.parquet: sha256 ...")) == 1
    assert _exit_code(DatasetError("d: no _manifest.json")) == 2
    assert _exit_code(KeyError("a bug")) is None  # exit 3, "a bug in Harvest"
