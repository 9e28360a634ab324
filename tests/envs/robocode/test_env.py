"""`harvest/Robocode-v0`: the bridge robot driven through Gymnasium in the real engine."""

import math
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from harvest.envs import EnvConfig, make_vector_env
from harvest.envs.robocode import host as host_module
from harvest.envs.robocode.env import RobocodeEnv
from harvest.envs.robocode.host import RobocodeHost, RobocodeNotInstalled
from harvest.envs.robocode.transitions import OBS_FIELDS, round_transitions, split_rounds
from tests.envs.robocode.test_host import needs_robocode

pytestmark = pytest.mark.robocode
AGE = OBS_FIELDS.index("enemy_age")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("robocode-cache")


@pytest.fixture(scope="module")
def env(cache_root):
    env = RobocodeEnv(cache_root=cache_root)
    yield env
    env.close()


def java_children() -> set[int]:
    """Pids of the live java processes this test process started."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:  # gone meanwhile
            continue
        state, parent = rest.split()[:2]
        if int(parent) == os.getpid() and state != "Z" and name.endswith("(java"):
            children.add(int(stat.parent.name))
    return children


@needs_robocode
@pytest.mark.timeout(120)
def test_check_env_passes_truncation_works_and_close_leaves_no_jvm(cache_root):
    before = java_children()
    env = gym.make("harvest/Robocode-v0", cache_root=str(cache_root), max_turns=30)
    jvm = env.unwrapped.host.process.pid
    assert java_children() == before | {jvm}
    check_env(env.unwrapped)
    obs, info = env.reset(seed=1)
    assert obs.shape == (14,) and info["turn"] == 0
    for turn in range(1, 31):
        obs, reward, terminated, truncated, info = env.step(np.zeros(5, np.float32))  # standing still: no one dies
        assert info["turn"] == turn and not terminated and truncated == (turn == 30)
    env.close()
    assert java_children() == before, "close() leaves no JVM behind"
    assert env.unwrapped.host.process.poll() is not None


@needs_robocode
@pytest.mark.timeout(120)
def test_make_vector_env_builds_it_by_its_gymnasium_id(cache_root):
    before = java_children()
    vector_env = make_vector_env(
        EnvConfig(id="harvest/Robocode-v0", num_envs=1, kwargs={"cache_root": str(cache_root), "max_turns": 5})
    )
    obs, _ = vector_env.reset(seed=3)
    assert obs.shape == (1, 14) and obs.dtype == np.float32
    truncations = 0
    for _ in range(12):
        obs, reward, terminated, truncated, _ = vector_env.step(np.full((1, 5), 1.0, np.float32))
        truncations += int(truncated[0])
    assert truncations == 2, "5-turn episodes, reset automatically"
    vector_env.close()
    assert java_children() == before


def fixed_policy(obs: np.ndarray) -> np.ndarray:
    """Deterministic and reading the sighting: sweep until the enemy is seen, then aim and fire."""
    seen = obs[AGE] == 0
    gun_turn = np.clip(obs[8], -20, 20) if obs[AGE] < 100 else 0.0
    return np.array([6.0, 4.0, gun_turn, -45.0 if seen else 45.0, 1.5 if seen else 0.0], np.float32)


def play(env: RobocodeEnv, seed: int, num_turns: int) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for _ in range(num_turns):
        obs, reward, terminated, truncated, _ = env.step(fixed_policy(obs))
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)


@needs_robocode
@pytest.mark.timeout(120)
def test_the_same_seed_and_policy_give_the_same_episode(env):
    first_obs, first_rewards = play(env, seed=11, num_turns=300)
    again_obs, again_rewards = play(env, seed=11, num_turns=300)
    other_obs, _ = play(env, seed=12, num_turns=1)
    assert len(first_obs) > 100 and (first_obs[:, AGE] == 0).any() and (first_rewards != 0).any()
    np.testing.assert_array_equal(again_obs, first_obs)
    np.testing.assert_array_equal(again_rewards, first_rewards)
    assert not np.array_equal(other_obs[0], first_obs[0]), "another seed, another start"


@needs_robocode
@pytest.mark.timeout(120)
def test_sightings_from_snapshots_are_the_scanned_robot_events_the_bridge_gets(env):
    # Random turns of body, gun and radar and random speeds (rams included, which leave the
    # engine's bounding box behind the robot): every turn, the engine's ScannedRobotEvents and
    # the sightings recomputed from the snapshots agree.
    rng = np.random.default_rng(0)
    num_seen = 0
    for seed in (3, 4):
        obs, _ = env.reset(seed=seed)
        for _ in range(1000):
            obs, _, terminated, truncated, info = env.step(rng.uniform(env.action_space.low, env.action_space.high))
            assert (obs[AGE] == 0) == bool(info["scans"]), f"seed {seed} turn {info['turn']}: {info['scans']}"
            if info["scans"]:
                [scan] = info["scans"]
                num_seen += 1
                # the event's bearing is from the body: the bridge's own heading turns it absolute
                bearing = (
                    obs[OBS_FIELDS.index("heading")]
                    + math.degrees(scan["bearing"])
                    - obs[OBS_FIELDS.index("gun_heading")]
                )
                expected = [
                    (bearing + 180) % 360 - 180,
                    scan["distance"],
                    scan["energy"],
                    math.degrees(scan["heading"]) % 360,
                    scan["velocity"],
                ]
                np.testing.assert_allclose(obs[8:13], expected, atol=1e-3, err_msg=f"seed {seed} turn {info['turn']}")
            if terminated or truncated:
                break
    assert num_seen > 100


@needs_robocode
@pytest.mark.timeout(180)
def test_replaying_spinbots_recovered_actions_through_the_bridge_replays_its_battle(env, cache_root, tmp_path):
    # The expert battle as the collectors play it (Robocode's robot security on)...
    with RobocodeHost(tmp_path / "engine", cache_root) as host:
        messages = list(host.battle(["sample.SpinBot", "sample.Target"], rounds=1, seed=7, turn_timeout_s=10))
    turns = split_rounds(messages)[0]
    assert turns[0]["t"] == "round_start"
    spin = next(part for part in round_transitions(turns) if part.robot == "sample.SpinBot")
    # ... and its first move, from the placed robots to turn 1 (a dataset row starts at turn 1).
    first = next(
        part for part in round_transitions([{**turns[0], "t": "turn"}, turns[1]]) if part.robot == "sample.SpinBot"
    )
    actions = np.concatenate([first.action, spin.action])

    obs, _ = env.reset(seed=7)
    assert obs[:3].tolist() == pytest.approx(
        [turns[0]["robots"][0]["x"], turns[0]["robots"][0]["y"], math.degrees(turns[0]["robots"][0]["heading"])]
    ), "the same spot"
    played, rewards = [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        played.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    played = np.array(played)
    assert terminated and info["winner"] == "harvest.HarvestBridge*", "the bridge wins as SpinBot did"
    # played[k] and spin.obs[k] are both turn k + 1; the env's reward k is the dataset's row k - 1.
    num_rows = min(len(played), spin.num_rows)
    unflagged = ~(spin.collision | spin.disabled | spin.post_round)[:num_rows]
    assert unflagged.sum() > 300
    np.testing.assert_allclose(played[:num_rows, :2][unflagged], spin.obs[:num_rows, :2][unflagged], atol=1.0)
    # Observations (sightings included) and rewards are the dataset's, turn for turn.
    np.testing.assert_allclose(played[:num_rows][unflagged], spin.obs[:num_rows][unflagged], atol=1e-3)
    num_rewards = len(rewards) - 1
    np.testing.assert_allclose(
        np.array(rewards[1:])[unflagged[:num_rewards]], spin.reward[:num_rewards][unflagged[:num_rewards]], atol=1e-5
    )


def test_without_robocode_the_env_names_the_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(host_module, "JAR_DIR", tmp_path)
    with pytest.raises(RobocodeNotInstalled, match="robocode default-jdk xvfb"):
        gym.make("harvest/Robocode-v0", cache_root=str(tmp_path / "cache"))
