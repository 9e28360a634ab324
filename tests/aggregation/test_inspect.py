"""`harvest inspect`: every planted defect is flagged, a clean dataset passes, the HTML opens."""

import json
import re

import gymnasium as gym
import numpy as np
import pytest

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.dataset import Dataset
from harvest.aggregation.inspect import inspect_dataset
from harvest.cluster.cli import main
from harvest.envs.spaces import ColumnSpec
from harvest.rollout.batch import BatchSchema, TransitionBatch

DEFECTS = {
    "nan_inf",
    "action_space",
    "step_gap",
    "next_obs",
    "timestamp_gap",
    "stuck_action",
    "jerky_action",
    "short_episode",
    "missing_file",
}
START = np.datetime64("2026-11-23T10:00:00", "ns")


def make_dataset(folder, planted: set[str]) -> Dataset:
    """Nine episodes of a 3-float observation and 2-d Box actions in [-1, 1] with smooth actions,
    consistent next_obs, one step a second and a screenshot per row; `planted` defects go in."""
    rng = np.random.default_rng(0)
    lengths = [30, 20, 20, 21, 20, 20, 250, 20, 1 if "short_episode" in planted else 5]
    columns: dict[str, list] = {}
    (folder / "screenshots").mkdir(parents=True)
    for episode, length in enumerate(lengths):
        states = rng.standard_normal((length + 1, 3)).astype(np.float32)
        t = np.arange(length)
        action = np.stack([0.5 * np.sin(t / 7), 0.5 * np.cos(t / 9)], axis=1).astype(np.float32)
        step = t.copy()
        seconds = t.astype(np.int64)
        obs, next_obs = states[:-1].copy(), states[1:].copy()
        if episode == 1 and "nan_inf" in planted:
            obs[5, 1] = np.nan
            next_obs[4, 1] = np.nan
        if episode == 2 and "action_space" in planted:
            action[3, 0] = 5.0
        if episode == 3 and "step_gap" in planted:
            step[10:] += 1  # step 10 is missing
        if episode == 4 and "next_obs" in planted:
            next_obs[6] += 1.0
        if episode == 5 and "timestamp_gap" in planted:
            seconds[8:] += 60
        if episode == 6 and "stuck_action" in planted:
            action[:] = 0.25
        if episode == 7 and "jerky_action" in planted:
            action[:, 0] = np.where(t % 2 == 0, -1.0, 1.0)
        names = [f"screenshots/episode_{episode:03d}_frame_{i:06d}.png" for i in range(length)]
        for name in names:
            (folder / name).write_bytes(b"\x89PNG")
        if episode == 0 and "missing_file" in planted:
            (folder / names[3]).unlink()
        row = {
            "obs": obs,
            "next_obs": next_obs,
            "action": action,
            "reward": np.ones(length, np.float32),
            "terminated": t == length - 1,
            "truncated": np.zeros(length, bool),
            "episode_id": np.full(length, episode),
            "step": step,
            "collector_id": np.zeros(length, np.int64),
            "policy_version": np.zeros(length, np.int64),
            "timestamp": START + episode * np.timedelta64(1, "h") + seconds.astype("timedelta64[s]"),
            "screenshot_path": np.array(names, dtype=object),
        }
        for name, values in row.items():
            columns.setdefault(name, []).append(values)
    schema = BatchSchema.for_spaces(
        gym.spaces.Box(-10, 10, (3,), np.float32),
        gym.spaces.Box(-1, 1, (2,), np.float32),
        extras={"screenshot_path": ColumnSpec(object, ())},
    )
    batch = TransitionBatch(
        {name: np.concatenate(parts).astype(schema.columns[name].dtype) for name, parts in columns.items()}
    )
    # The dataset's root is where the screenshots are: paths in the column are relative to it.
    write_dataset([batch], schema, folder, AggregationConfig(formats=["parquet"]), run_id="inspect", env_id="x")
    return Dataset.open(folder)


def test_a_clean_dataset_passes_and_its_html_report_opens_with_plots(tmp_path):
    make_dataset(tmp_path / "clean", set())
    assert main(["inspect", str(tmp_path / "clean"), "--json", str(tmp_path / "clean.json")]) == 0
    report = json.loads((tmp_path / "clean.json").read_text())
    assert report["findings"] == [] and report["errors"] == 0
    assert report["overview"]["episodes"] == 9 and report["overview"]["rows"] == sum(
        [30, 20, 20, 21, 20, 20, 250, 20, 5]
    )
    assert report["columns"]["reward"]["mean"] == pytest.approx(1.0)
    page = (tmp_path / "clean" / "_report" / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert {"episode_lengths.png", "episode_returns.png", "actions.png"} <= set(images)
    for name in images:
        assert (tmp_path / "clean" / "_report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_planted_defect_is_flagged_with_an_example(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "dirty", DEFECTS)
    report = inspect_dataset(dataset)
    found = {finding.check: finding for finding in report.findings}
    assert DEFECTS <= set(found), DEFECTS - set(found)
    assert "episode 2, step 3" in found["action_space"].examples[0]
    assert "episode 3: step 9 then 11" in found["step_gap"].examples[0]
    assert "episode 4, step 6" in " ".join(found["next_obs"].examples)
    assert "61.000 s before step 8" in found["timestamp_gap"].examples[0]
    assert "250 steps" in found["stuck_action"].examples[0]
    assert "episode_000_frame_000003.png" in found["missing_file"].examples[0]
    assert found["nan_inf"].severity == "error" and found["jerky_action"].severity == "warning"
    html_dir = tmp_path / "html"
    assert main(["inspect", str(tmp_path / "dirty"), "--html", str(html_dir)]) == 1
    assert "missing_file" in capsys.readouterr().err
    assert "error(s)" in (html_dir / "index.html").read_text()
