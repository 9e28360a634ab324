"""`ShadowBeside` on its own: how it scores agreement with the person (discrete and continuous
actions), what it reports, and how it picks up a learner's newer weights without waiting."""

import gymnasium as gym
import numpy as np
import pytest
import ray

from harvest.rollout.human.config import ShadowConfig
from harvest.rollout.human.shadow_policy import ShadowBeside
from harvest.rollout.policies import PolicyOutput
from tests.waiting import wait_for


class ConstantPolicy:
    """Plays its weights' `action` for every row; records the weights it was given."""

    def __init__(self, action: int = 0) -> None:
        self.action, self.loaded, self.seen_obs = action, [], []

    def set_weights(self, weights: dict, version: int) -> None:
        self.action = weights["action"]
        self.loaded.append(version)

    def compute_actions(self, obs) -> PolicyOutput:
        self.seen_obs.append(obs)
        rows = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        return PolicyOutput(np.full(rows, self.action))


class Publisher:
    """The learner's side of the exchange (`ShadowLearner.latest`): a version and a weights ref."""

    def __init__(self) -> None:
        self.version, self.weights = 0, []

    def publish(self, version: int, action: int | None) -> None:
        self.version = version
        self.weights = [] if action is None else [ray.put({"action": action})]

    def latest(self) -> tuple[int, list]:
        return self.version, self.weights


def answered_since(shadow: ShadowBeside, frame: int) -> bool:
    """The shadow asked the learner after `frame` and has taken its answer."""
    return shadow._asked_at > frame and shadow._pending is None


def test_discrete_agreement_is_the_share_of_equal_actions_over_the_window():
    shadow = ShadowBeside(None, ConstantPolicy(), ShadowConfig(agreement_window=4), gym.spaces.Discrete(3))
    for frame, (person, played) in enumerate([(1, 1), (2, 0), (0, 0), (2, 2), (1, 0)]):
        shadow.compare(person, played, frame, "session-a")
    # The last 4 frames: disagree, agree, agree, disagree. History every 4 // 5 -> 1 frame.
    assert shadow.status() == "shadow v0  agreement 0.50  (H hands over)"
    assert [point["agreement"] for point in shadow.history] == [1.0, 0.5, 2 / 3, 0.75, 0.5]
    assert [point["frame"] for point in shadow.history] == [0, 1, 2, 3, 4]


def test_continuous_agreement_is_one_minus_the_mean_distance_over_the_action_range():
    space = gym.spaces.Box(np.array([-1.0, 0.0, -np.inf]), np.array([1.0, 4.0, np.inf]), dtype=np.float64)
    shadow = ShadowBeside(None, ConstantPolicy(), ShadowConfig(agreement_window=10), space)
    shadow.compare(np.array([1.0, 4.0, 3.0]), np.array([0.0, 3.0, 2.5]), 0, "session-b")
    # |1 - 0| / 2, |4 - 3| / 4, |3 - 2.5| / 1 (an unbounded range counts as 1) -> mean 5/12.
    assert shadow.history == [{"frame": 0, "version": 0, "agreement": pytest.approx(1 - 5 / 12)}]


def test_history_is_kept_every_fifth_of_the_window_and_status_says_who_drives():
    shadow = ShadowBeside(
        None, ConstantPolicy(), ShadowConfig(agreement_window=10, handover_key="k"), gym.spaces.Discrete(2)
    )
    assert shadow.status() == "shadow v0  agreement -  (K hands over)"
    for frame in range(7):
        shadow.compare(0, 0, frame, "session-c")
    assert [point["frame"] for point in shadow.history] == [0, 2, 4, 6]
    shadow.driving = True
    assert shadow.status() == "shadow v0  agreement 1.00  SHADOW DRIVING"


@pytest.fixture
def publisher(ray_cluster):
    actor = ray.remote(Publisher).options(num_cpus=0.1).remote()
    yield actor
    ray.kill(actor, no_restart=True)


@pytest.mark.timeout(120)
def test_act_loads_a_newer_version_once_it_arrives_and_ignores_older_or_empty_ones(publisher):
    policy = ConstantPolicy(action=0)
    shadow = ShadowBeside(publisher, policy, ShadowConfig(), gym.spaces.Discrete(3))
    ray.get(publisher.publish.remote(2, action=2), timeout=60)
    frame = 0

    def acted() -> bool:
        nonlocal frame
        frame += 1
        return int(shadow.act(np.zeros(4, np.float32), frame)) == 2

    wait_for(acted, 60, "the shadow to play version 2's action", poll_s=0.01)
    assert (shadow.version, policy.loaded) == (2, [2])
    assert policy.seen_obs[-1].shape == (1, 4)  # one observation, batched

    for version, action in [(1, 1), (5, None)]:  # older, then newer without weights: neither is loaded
        ray.get(publisher.publish.remote(version, action=action), timeout=60)
        start = frame
        wait_for(
            lambda start=start: acted() and answered_since(shadow, start),
            60,
            f"an answer with version {version}",
            poll_s=0.01,
        )
    assert (shadow.version, policy.loaded) == (2, [2])


@pytest.mark.timeout(120)
def test_act_batches_dict_observations_and_counts_the_frames_it_drives(publisher):
    policy = ConstantPolicy(action=1)
    shadow = ShadowBeside(publisher, policy, ShadowConfig(), gym.spaces.Discrete(3))
    obs = {"image": np.zeros((2, 2, 3), np.uint8), "speed": np.float32(3.0)}
    assert int(shadow.act(obs, 0)) == 1
    assert policy.seen_obs[-1]["image"].shape == (1, 2, 2, 3) and policy.seen_obs[-1]["speed"].shape == (1,)
    shadow.driving = True
    shadow.act(obs, 1)
    shadow.act(obs, 2)
    assert shadow.frames_driven == 2
