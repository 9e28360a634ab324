"""Data-parallel BC through Ray Train's TorchTrainer over a Ray Data dataset, on CPU workers."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from harvest.learners.checkpoint import load_checkpoint
from harvest.learners.config import BCConfig, LearnerConfig
from harvest.learners.distributed import train_bc_data_parallel
from tests.learners.test_bc import synthetic, tensorboard_scalars, write_dataset

pytestmark = pytest.mark.timeout(300)


def test_bc_trains_data_parallel_on_two_ray_train_workers(ray_cluster, tmp_path):
    schema, batch = synthetic(
        gym.spaces.Box(-1, 1, (2,), np.float32),
        gym.spaces.Discrete(2),
        4000,
        lambda b: (b["obs"][:, 0] - b["obs"][:, 1] > 0).astype(np.int64),
    )
    dataset = write_dataset(tmp_path, schema, batch)
    cfg = LearnerConfig(
        batch_size=32, lr=3e-3, hidden_sizes=[32, 32], num_cpus=0.5, bc=BCConfig(epochs=2, num_workers=2)
    )
    result = train_bc_data_parallel(cfg, str(dataset), str(tmp_path / "learner"))
    assert [record.epoch for record in result.history] == [1, 2]
    assert result.history[-1].validation_accuracy > 0.9
    assert result.trained_on + result.details["validation_rows"] == 4000 and result.details["validation_rows"] > 0
    best = load_checkpoint(result.best_checkpoint)
    assert best.info["workers"] == 2
    obs = torch.tensor([[0.6, -0.2], [-0.5, 0.3]])
    assert best.model.act({"obs": obs}).tolist() == [1, 0]
    assert json.loads(Path(result.history_path).read_text())["workers"] == 2
    assert [step for step, _ in tensorboard_scalars(tmp_path / "learner")["loss/train"]] == [1, 2]
