"""`rollout.steps: N` gives N rows: a vector step's rows past a chunk are held over for the
collector's next chunk, so no episode gets a gap and nothing is pushed twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harvest.aggregation.dataset import Dataset
from harvest.cluster.cli import main
from tests.aggregation.test_dataset import read_back
from tests.cluster.test_cli import TINY

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("mode", ["step", "buffer"])
def test_rollout_steps_gives_exactly_that_many_rows_without_gaps(ray_cluster, tmp_path, mode):
    run_id = f"exact-{mode}"
    # 7 envs and 250-row chunks: almost no chunk ends on a vector step's last row
    settings = [
        *TINY,
        "rollout.steps=3000",
        "env.num_envs=7",
        "rollout.chunk_rows=250",
        "rollout.batch_rows=100",
        f"rollout.mode={mode}",
        "rollout.policy.kind=random",
    ]
    argv = [
        "collect",
        "--run-id",
        run_id,
        "--set",
        f"run.output_dir={tmp_path}",
        *sum((["--set", item] for item in settings), []),
    ]
    assert main(argv) == 0
    summary = json.loads((tmp_path / run_id / "summary.json").read_text())
    assert main(["compact", str(tmp_path / run_id)]) == 0
    dataset = Dataset.open(tmp_path / run_id / "dataset")
    assert summary["collect"]["rows"] == dataset.manifest.rows == 3000
    rows = read_back(dataset)
    for episode_id in np.unique(rows["episode_id"]):
        steps = np.sort(rows["step"][rows["episode_id"] == episode_id])
        assert steps.tolist() == list(range(steps.size)), f"episode {episode_id} has a gap or a repeated step"
