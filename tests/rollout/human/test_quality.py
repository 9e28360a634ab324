"""The seed 002 quality checks on a person's episodes, and leaving flagged episodes out."""

import gymnasium as gym
import numpy as np
import pytest

from harvest.rollout.human.quality import EpisodeTrace, check_episode

DRIVING = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
FPS = 50


def trace(actions, late=None, gaps_at=(), speeds=None) -> EpisodeTrace:
    """Frames every 20 ms (a pause of 2 s before each frame in `gaps_at`)."""
    episode = EpisodeTrace(7, 1)
    now = 0
    for i, action in enumerate(actions):
        now += 20_000_000 + (2_000_000_000 if i in gaps_at else 0)
        episode.add(
            now, action, bool(late[i]) if late is not None else False, None if speeds is None else float(speeds[i])
        )
    return episode


def steady(frames: int = 300) -> list[np.ndarray]:
    """Throttle held, steering tapped now and then: how a good keyboard driver looks."""
    return [np.array([(-1.0 if i % 10 == 0 else 0.0), 1.0, 0.0], np.float32) for i in range(frames)]


def checks(episode, lockstep=False):
    return {f.check: f.severity for f in check_episode(episode, DRIVING, FPS, lockstep)}


def test_a_clean_episode_has_no_findings():
    assert checks(trace(steady())) == {}


@pytest.mark.parametrize(
    "planted, expected",
    [
        (lambda: trace(steady(), late=np.arange(300) % 10 == 0), {"dropped_frames": "warning"}),
        (lambda: trace(steady(), late=np.arange(300) % 3 == 0), {"dropped_frames": "error"}),
        (lambda: trace(steady(), gaps_at=(100, 200)), {"timestamp_gaps": "warning"}),
        (lambda: trace(steady()[:299] + [np.array([2.0, 1.0, 0.0], np.float32)]), {"action_range": "error"}),
        (lambda: trace([np.array([(-1.0) ** i, 1.0, 0.0], np.float32) for i in range(300)]), {"jerky": "warning"}),
        (
            lambda: trace(steady(100) + [np.zeros(3, np.float32)] * 200, speeds=[5.0] * 100 + [0.0] * 200),
            {"idle": "warning"},
        ),
        (lambda: trace(steady(20)), {"short": "warning"}),
    ],
)
def test_each_planted_defect_is_found(planted, expected):
    assert checks(planted()) == expected


def test_pacing_checks_do_not_apply_in_lockstep():
    assert checks(trace(steady(), late=np.ones(300, bool), gaps_at=(5,)), lockstep=True) == {}


def test_an_idle_car_that_still_rolls_is_not_idle():
    assert checks(trace([np.zeros(3, np.float32)] * 300, speeds=[20.0] * 300)) == {}


def test_discarded_episodes_are_left_out_of_the_dataset_and_counted(tmp_path):
    from harvest.aggregation.compact import write_dataset
    from harvest.aggregation.config import AggregationConfig
    from harvest.cluster.config import load_config
    from harvest.cluster.sessions import review_sessions
    from harvest.rollout.episode_filter import EpisodeFilter
    from tests.aggregation.test_dataset import episodes_batch

    session = {
        "session_id": "s",
        "operator": "ada",
        "episodes": [
            {
                "episode_id": 0,
                "number": 1,
                "length": 30,
                "return": 1.0,
                "ended": "terminated",
                "quality": {"findings": [], "errors": 0},
            },
            {
                "episode_id": 1,
                "number": 2,
                "length": 5,
                "return": 0.0,
                "ended": "reset",
                "quality": {"findings": [{"check": "action_range", "severity": "error", "message": "x"}], "errors": 1},
            },
        ],
    }
    cfg = load_config(None, ["human={discard: errors}"])
    assert review_sessions(cfg, [session]) == [1]
    assert review_sessions(load_config(None, ["human={discard: never}"]), [session]) == []
    schema, batch = episodes_batch([30, 5, 12])
    manifest = write_dataset(
        [batch],
        schema,
        tmp_path,
        AggregationConfig(formats=["parquet"], filter=EpisodeFilter(exclude_episodes=[1])),
        run_id="q",
        env_id="x",
    )
    assert manifest.episodes == 2 and manifest.rows == 42 and manifest.filtered["dropped"] == {"excluded": 1}
