"""Ctrl-C and SIGTERM end a run with one line, exit 130 / 143, a note in harvest.log, and a run
folder that `harvest run --resume` finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _start_run(tmp_path: Path, run_id: str, *settings: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "harvest",
        "run",
        "--run-id",
        run_id,
        "--set",
        f"run.output_dir={tmp_path}",
        "--set",
        "ray.include_dashboard=false",
        "--set",
        "ray.num_cpus=2",
        "--set",
        "rollout.num_cpus=0.25",
        "--set",
        "replay.num_cpus=0.25",
        "--set",
        "learner.num_cpus=0.5",
        *settings,
    ]
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def _wait_for_log_line(log: Path, words: str, driver: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.is_file() and words in log.read_text():
            return
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{log} did not say {words!r} within {timeout_s}s")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_with_one_line_and_it_resumes(tmp_path, signum, code):
    driver = _start_run(
        tmp_path,
        "cut",
        "--set",
        "rollout.steps=20000",
        "--set",
        f"replay.wal_dir={tmp_path}/wal",
        "--set",
        "learner.bc.epochs=1",
        "--set",
        "learner.max_rows=5000",
        "--set",
        "eval.episodes=2",
        "--set",
        "eval.num_workers=1",
        "--set",
        "eval.baselines=[]",
        "--set",
        "replay.num_shards=1",
    )
    _wait_for_log_line(tmp_path / "cut" / "harvest.log", "collecting", driver)
    driver.send_signal(signum)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "Aborted" not in stderr
    hint = f"go on with `harvest run --resume cut --set run.output_dir={tmp_path}`"
    assert hint in stderr
    assert hint in (tmp_path / "cut" / "harvest.log").read_text()
    if signum != signal.SIGINT:
        return
    resumed = subprocess.run(
        [sys.executable, "-m", "harvest", "run", "--resume", "cut", "--set", f"run.output_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["collect"]["rows"] == 20_000 and summary["eval"]["trained"]["episodes"] == 2
