"""End to end: the `harvest` command, as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "env.num_envs=4",
    "rollout.steps=3000",
    "rollout.batch_rows=512",
    "rollout.num_cpus=0.25",
    "replay.num_cpus=0.1",
    "aggregation.num_cpus=0.1",
    "learner.bc.epochs=2",
    "learner.hidden_sizes=[32]",
    "learner.num_cpus=0.5",
    "eval.episodes=2",
    "eval.baselines=[random]",
]


def only_run_dir(root: Path) -> Path:
    (run_dir,) = list(root.iterdir())
    return run_dir


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_harvest_run_with_no_arguments_clones_the_expert(tmp_path):
    # The README's first command, in a fresh folder: local Ray, CartPole, BC, evaluation.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "harvest", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Ray dashboard: http://127.0.0.1:" in result.stderr
    assert "trained / expert" in result.stderr
    run_dir = only_run_dir(tmp_path / "artifacts")
    summary = json.loads((run_dir / "summary.json").read_text())
    expert, trained = summary["eval"]["expert"]["mean_return"], summary["eval"]["trained"]["mean_return"]
    assert expert >= 475
    assert trained >= 0.9 * expert, summary["eval"]
    assert summary["collect"]["rows"] >= 20_000
    dataset = Dataset.open(run_dir / "dataset")
    # (both collectors ran; on a busy machine the first can store every row before the second starts)
    assert dataset.manifest.rows == summary["collect"]["rows"] and set(dataset.manifest.collectors) <= {0, 1}
    assert len(summary["collect"]["restarts"]) == 2
    table = pads.dataset(dataset.files).to_table()
    assert table.num_rows == dataset.manifest.rows
    assert pads.dataset(run_dir / "dataset").count_rows() == dataset.manifest.rows  # the folder as it is, too
    for name in (
        "config.yaml",
        "harvest.log",
        "eval.json",
        "learner/best.safetensors",
        "learner/final.safetensors",
        "learner/training_history.json",
        "dataset/_dataset.npz",
        "dataset/_manifest.json",
    ):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_stage_runs_alone_on_the_previous_outputs(ray_cluster, tmp_path, capsys):
    base = ["--set", f"run.output_dir={tmp_path}", *sum((["--set", item] for item in TINY), [])]
    assert main(["collect", "--run-id", "staged", *base]) == 0
    run_dir = tmp_path / "staged"
    assert sorted(p.name for p in (run_dir / "replay").iterdir()) == [
        "schema.json",
        "shard-000.arrow",
        "shard-001.arrow",
    ]
    capsys.readouterr()
    assert main(["compact", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"compact .* [\d,]+/[\d,]+ [\d,]+ rows/s", err), err  # a bar with its rate
    manifest = json.loads((run_dir / "dataset" / "_manifest.json").read_text())
    assert manifest["rows"] >= 3000 and manifest["run_id"] == "staged"
    written = {path.name: path.stat().st_mtime_ns for path in (run_dir / "dataset").iterdir()}
    assert main(["compact", str(run_dir)]) == 2, "a second compact is refused: the dataset is there"
    assert {path.name: path.stat().st_mtime_ns for path in (run_dir / "dataset").iterdir()} == written
    with np.load(run_dir / "dataset" / "_dataset.npz", allow_pickle=False) as npz:
        assert npz["observations"].shape == (manifest["rows"], 4)
    assert main(["train", str(run_dir)]) == 0
    history = json.loads((run_dir / "learner" / "training_history.json").read_text())
    assert len(history["epochs"]) == 2
    assert main(["eval", str(run_dir), "--set", "eval.episodes=2"]) == 0
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluation) == {"trained", "random"} and len(evaluation["trained"]["returns"]) == 2


def test_bad_config_exits_2_and_names_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("replay:\n  capcity_rows: 5\n")
    assert main(["run", str(path)]) == 2
    assert "bad.yaml: replay.capcity_rows: unexpected key" in capsys.readouterr().err


def test_stage_on_a_missing_run_folder_says_what_is_missing(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_config_command_prints_the_resolved_config(capsys):
    assert main(["config", "--set", "replay.num_shards=5"]) == 0
    assert "num_shards: 5" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_users_own_dict_env_runs_through_the_whole_pipeline(ray_cluster, tmp_path):
    # Dict observations (vector, image-like grid, discrete) and a MultiDiscrete action,
    # given by entry point: collect → Parquet/NPZ → BC → evaluation.
    overrides = [
        *TINY,
        "env.id=tests.toy_envs:DictObsEnv",
        "rollout.policy.kind=random",
        "rollout.steps=600",
        f"run.output_dir={tmp_path}",
    ]
    assert main(["run", "--run-id", "dict", *sum((["--set", item] for item in overrides), [])]) == 0
    dataset = Dataset.open(tmp_path / "dict" / "dataset")
    assert {"obs.grid", "obs.phase", "obs.position", "next_obs.grid", "action"} <= set(dataset.schema.columns)
    table = dataset.to_pyarrow().to_table()
    assert table.column("obs.grid").type.shape == [3, 4, 4]
    with np.load(tmp_path / "dict" / "dataset" / "_dataset.npz", allow_pickle=False) as npz:
        assert npz["observations.grid"].shape[1:] == (3, 4, 4) and npz["actions"].shape[1:] == (2,)
    evaluation = json.loads((tmp_path / "dict" / "eval.json").read_text())
    assert len(evaluation["trained"]["returns"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_generals_run_records_both_players_with_legal_actions(ray_cluster, repo_root_run):
    # examples/generals_bc.yaml, shrunk, from the repo root into artifacts/ (the example's run for
    # tests/test_examples.py): the real collectors, replay, Parquet, CNN and eval scenarios.
    run_id, run_dir = repo_root_run
    tiny = [
        "env.num_envs=4",
        "env.kwargs.map={min_size: 6, max_size: 7, min_general_distance: 3}",
        "env.kwargs.max_steps=60",
        "rollout.steps=3000",
        "rollout.batch_rows=512",
        "rollout.num_cpus=0.25",
        "replay.num_cpus=0.1",
        "aggregation.num_cpus=0.1",
        "learner.bc.epochs=1",
        "learner.conv_channels=[8]",
        "learner.num_cpus=0.5",
        "eval.episodes=4",
        "eval.baselines=[random]",
        "eval.scenarios={vs_random: {players: first, opponent: random, max_steps: 60}}",
    ]
    argv = ["run", "examples/generals_bc.yaml", "--run-id", run_id, *sum((["--set", item] for item in tiny), [])]
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["eval"]) == {"trained @ vs_random", "random @ vs_random"}
    assert "win_rate" in summary["eval"]["trained @ vs_random"]
    table = pads.dataset(Dataset.open(run_dir / "dataset").files).to_table(
        columns=["obs.action_mask", "action", "game_id", "player_id", "episode_id"]
    )
    assert table.num_rows >= 3000
    mask = np.stack(table["obs.action_mask"].to_numpy(zero_copy_only=False))
    action = table["action"].to_numpy()
    assert mask[np.arange(len(action)), action].all(), "every action is legal under its own action_mask"
    games, players, episodes = (table[name].to_numpy() for name in ("game_id", "player_id", "episode_id"))
    for game_id in np.unique(games)[:20]:
        rows = games == game_id
        assert set(players[rows].tolist()) == {0, 1}, "both players' rows of every game"
        assert len(np.unique(episodes[rows])) == 2
