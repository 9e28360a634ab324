"""Every config in examples/ runs, shrunk, from the repo root with its default (relative)
output folder, as the README tells a newcomer to run it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harvest.cluster.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.name for path in (REPO_ROOT / "examples").glob("*.yaml"))

SMALL = [
    "rollout.num_collectors=1",
    "rollout.num_cpus=0.25",
    "replay.num_shards=1",
    "replay.num_cpus=0.1",
    "aggregation.num_cpus=0.1",
    "learner.num_cpus=0.5",
    "learner.bc.epochs=1",
    "learner.max_rows=2000",
    "eval.episodes=1",
    "eval.num_workers=1",
    "eval.baselines=[]",
]
"""Settings every example is shrunk with (a 2-CPU test cluster, seconds instead of minutes): one
collector, one shard, one evaluation episode of the trained policy (and of earlier stages) per
scenario - every actor costs a process start."""
CAR_RACING = ["env.num_envs=1", "env.max_episode_steps=60", "rollout.steps=120", "rollout.batch_rows=60"]
DQFD = [
    "learner.dqfd.pretrain_steps=50",
    "learner.dqfd.online_env_steps=100",
    "learner.dqfd.log_every=50",
    "learner.eval.episodes=1",
]
GENERALS = [
    "env.num_envs=2",
    "env.kwargs.max_steps=100",
    "rollout.steps=600",
    "rollout.batch_rows=300",
    "learner.conv_channels=[8, 8]",
]
PPO = [
    "learner.ppo.num_collectors=1",
    "learner.ppo.collector_num_cpus=0.1",
    "learner.ppo.rows_per_collector=256",
    "learner.ppo.minibatch_size=128",
    "learner.ppo.epochs=1",
    "learner.ppo.env_steps=512",
    "learner.ppo.eval_every=1",
    "learner.eval.episodes=1",
]

SHRUNK: dict[str, tuple[str, list[str]]] = {
    "car_racing_bc.yaml": ("run", CAR_RACING),
    "car_racing_dagger.yaml": (
        "dagger",
        [
            *CAR_RACING,
            "dagger.rounds=1",
            "dagger.steps_per_round=60",
            "dagger.epochs=1",
            "learner.eval.episodes=1",
        ],
    ),
    "car_racing_teleop.yaml": (
        "teleop",
        [
            *CAR_RACING,
            "human.driver=scripted",
            "human.lockstep=true",
            "human.max_frames=60",
            "human.discard=never",
            "human.shadow.updates_per_round=5",
        ],
    ),
    "cartpole_bc.yaml": ("run", ["rollout.steps=2000"]),
    "cartpole_bc_dqfd.yaml": ("run", ["rollout.steps=1000", *DQFD]),
    "cartpole_bc_ppo.yaml": ("run", ["rollout.steps=1000", *PPO]),
    "cartpole_dqfd.yaml": ("run", ["rollout.steps=1000", *DQFD]),
    "generals_dqfd.yaml": (
        "run",
        [*GENERALS, *DQFD, "learner.eval.max_steps=100", "eval.scenarios.vs_expert.max_steps=100"],
    ),
}

RUN_ELSEWHERE = {
    "generals_bc.yaml": "tests/cluster/test_cli.py::test_generals_run_records_both_players_with_legal_actions",
    "generals_bc_ppo.yaml": "tests/learners/test_ppo.py::test_generals_bc_then_ppo_fine_tunes_against_the_expert_and_evaluates_both_stages",
    "robocode_bc.yaml": "tests/cluster/test_robocode_pipeline.py::test_harvest_run_trains_a_tank_and_evaluates_it_beside_the_expert_and_random",
}
"""Examples whose shrunk run is a test of its own, with more checks, made the same way (from the
repo root into `artifacts/`, the `repo_root_run` fixture): not run twice."""


def test_every_example_has_a_shrunk_run():
    assert sorted([*SHRUNK, *RUN_ELSEWHERE]) == EXAMPLES
    for example, test in RUN_ELSEWHERE.items():  # each of those runs its example the README's way
        path, name = test.split("::")
        source = (REPO_ROOT / path).read_text()
        body = source[source.index(f"def {name}(") :]
        body = body[: body.find("\ndef ", 1)]
        assert f'"examples/{example}"' in body and "repo_root_run" in body and "output_dir" not in body, test


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("example", sorted(SHRUNK))
def test_an_example_runs_from_the_repo_root_with_the_default_output_folder(
    example, ray_cluster, repo_root_run, request
):
    command, settings = SHRUNK[example]
    extra = []
    if command == "teleop":
        if shutil.which("Xvfb") is None or shutil.which("xdotool") is None:
            pytest.skip("needs Xvfb and xdotool (Debian packages xvfb, xdotool)")
        extra = [f"human.display={request.getfixturevalue('xvfb')}"]
    run_id, run_dir = repo_root_run
    argv = [
        command,
        f"examples/{example}",
        "--run-id",
        run_id,
        *sum((["--set", item] for item in [*SMALL, *settings, *extra]), []),
    ]
    assert main(argv) == 0
    assert (run_dir / "config.yaml").is_file() and (run_dir / "dataset" / "_manifest.json").is_file()
    if command == "run":
        evaluation = json.loads((run_dir / "eval.json").read_text())
        assert evaluation and all(len(result["returns"]) >= 1 for result in evaluation.values())


@pytest.fixture()
def xvfb():
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(800, 600))
    display.start()
    yield display.new_display_var
    display.stop()
