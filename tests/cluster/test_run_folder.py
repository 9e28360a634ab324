"""A run folder is claimed once: no silent reuse, a stage's --set is a one-off, and a learner
never goes on from another training's state."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from harvest.cluster import run_folder
from harvest.cluster.cli import main
from harvest.cluster.config import load_config
from harvest.cluster.run_folder import RunFolderError
from harvest.learners.bc import BCLearner
from harvest.learners.config import BCConfig, LearnerConfig
from harvest.learners.resume import LAST_NAME, save_training_state
from tests.learners.test_bc import synthetic, write_dataset


def test_a_new_run_refuses_an_existing_run_folder_and_overwrite_clears_it(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.id=again"])
    run_id, paths = run_folder.prepare_run(cfg)
    (paths.root / "dataset.h5").write_text("the old run's data")
    (paths.root / "replay_flight.json").write_text("{}")
    with pytest.raises(RunFolderError, match="--resume again"):
        run_folder.prepare_run(cfg)
    assert (paths.root / "dataset.h5").is_file()
    _, paths = run_folder.prepare_run(cfg, "overwrite")
    assert sorted(path.name for path in paths.root.iterdir()) == ["config.yaml"]


def test_overwrite_leaves_a_folder_that_is_not_a_run_alone(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.id=mine"])
    with pytest.raises(RunFolderError, match="not a Harvest run folder"):
        run_folder.prepare_run(cfg, "overwrite")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_relative_paths_in_the_config_become_absolute_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        None,
        [
            "replay.wal_dir=wal",
            "rollout.policy.kind=torch",
            "rollout.policy.checkpoint=~/ckpt/best.safetensors",
            "learner.init_checkpoint=../x.safetensors",
            "aggregation.output=s3://bucket/p",
        ],
    )
    assert cfg.run.output_dir == str(tmp_path / "artifacts")
    assert cfg.replay.wal_dir == str(tmp_path / "wal")
    assert cfg.rollout.policy.checkpoint == str(Path("~/ckpt/best.safetensors").expanduser())
    assert cfg.learner.init_checkpoint == str(tmp_path.parent / "x.safetensors")
    assert cfg.aggregation.output == "s3://bucket/p"  # a URI is not a local path


def _trained_run(tmp_path: Path) -> Path:
    """A run folder with config.yaml, a CartPole-shaped dataset and a trained BC checkpoint."""
    run_dir = tmp_path / "staged"
    cfg = load_config(
        None, [f"run.output_dir={tmp_path}", "run.id=staged", "learner.bc.epochs=1", "learner.hidden_sizes=[8]"]
    )
    run_folder.prepare_run(cfg)
    space = gym.make("CartPole-v1")
    schema, batch = synthetic(
        space.observation_space, space.action_space, 400, lambda b: (b.columns["obs"][:, 2] > 0).astype("int64")
    )
    write_dataset(run_dir, schema, batch)
    BCLearner(cfg.learner, run_dir / "dataset", str(run_dir / "learner")).train()
    return run_dir


def test_a_stages_set_is_a_one_off_recorded_beside_the_run(tmp_path, ray_cluster):
    run_dir = _trained_run(tmp_path)
    config_before = (run_dir / "config.yaml").read_text()
    assert (
        main(
            [
                "eval",
                str(run_dir),
                "--set",
                "eval.episodes=2",
                "--set",
                "eval.num_workers=1",
                "--set",
                "eval.baselines=[random]",
            ]
        )
        == 0
    )
    assert (run_dir / "config.yaml").read_text() == config_before
    stages = json.loads((run_dir / "stages.json").read_text())
    assert [(stage["stage"], stage["overrides"]) for stage in stages] == [
        ("eval", ["eval.episodes=2", "eval.num_workers=1", "eval.baselines=[random]"])
    ]
    assert len(json.loads((run_dir / "eval.json").read_text())["trained"]["returns"]) == 2


def test_a_learner_does_not_go_on_from_another_trainings_state(tmp_path):
    space = gym.make("CartPole-v1")
    schema, batch = synthetic(
        space.observation_space, space.action_space, 400, lambda b: (b.columns["obs"][:, 2] > 0).astype("int64")
    )
    dataset = write_dataset(tmp_path, schema, batch)
    cfg = LearnerConfig(hidden_sizes=[8], bc=BCConfig(epochs=2))
    out_dir = tmp_path / "learner"
    out_dir.mkdir()
    # an earlier run's interrupted training, 7 epochs in, on another dataset
    model = torch.nn.Linear(2, 2)
    save_training_state(
        out_dir / LAST_NAME,
        7,
        model,
        torch.optim.Adam(model.parameters()),
        extra={"history": [], "best_loss": 0.0, "best_epoch": 7, "samples": 0},
        owner="bc on dataset earlier-run written 2026-01-01T00:00:00 (999 rows)",
    )
    result = BCLearner(cfg, dataset, str(out_dir)).train()
    assert [record.epoch for record in result.history] == [1, 2]
    history = json.loads((out_dir / "training_history.json").read_text())
    assert history["resumed_after"] == []
    assert not (out_dir / LAST_NAME).exists()
