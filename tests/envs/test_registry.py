import gymnasium as gym
import numpy as np
import pytest

from harvest.envs import (
    EnvConfig,
    EnvNotFoundError,
    UnsupportedSpaceError,
    columns_for_space,
    flatten_value,
    make_vector_env,
    register_env,
    space_from_json,
    space_to_json,
    unflatten_value,
)

SPACES = {
    "box": gym.spaces.Box(-1.0, np.array([1.0, np.inf]), dtype=np.float32),
    "image": gym.spaces.Box(0, 255, shape=(3, 8, 8), dtype=np.uint8),
    "discrete": gym.spaces.Discrete(5, start=-2),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 4]),
    "multibinary": gym.spaces.MultiBinary(6),
    "dict": gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-1, 1, (2,)),
            "mode": gym.spaces.Discrete(3),
            "inner": gym.spaces.Dict({"grid": gym.spaces.MultiDiscrete([[2, 2], [2, 2]])}),
        }
    ),
    "tuple": gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Box(0, 1, (3,))]),
}


@pytest.mark.parametrize("name", SPACES)
def test_space_json_round_trip(name):
    space = SPACES[name]
    assert space_from_json(space_to_json(space)) == space


def test_columns_for_spaces():
    assert columns_for_space(SPACES["box"], "obs")["obs"].shape == (2,)
    assert columns_for_space(SPACES["discrete"], "action")["action"].dtype == np.int64
    columns = columns_for_space(SPACES["dict"], "obs")
    assert set(columns) == {"obs.pos", "obs.mode", "obs.inner.grid"}
    assert columns["obs.inner.grid"].shape == (2, 2)
    assert columns_for_space(SPACES["multibinary"], "obs")["obs"].shape == (6,)
    with pytest.raises(UnsupportedSpaceError, match="obs: Text"):
        columns_for_space(gym.spaces.Text(5), "obs")


def test_flatten_and_unflatten_dict_values():
    value = {"pos": np.zeros((4, 2)), "mode": np.arange(4), "inner": {"grid": np.ones((4, 2, 2))}}
    flat = flatten_value(value, "obs")
    assert set(flat) == {"obs.pos", "obs.mode", "obs.inner.grid"}
    rebuilt = unflatten_value(flat, SPACES["dict"], "obs")
    assert rebuilt["inner"]["grid"] is value["inner"]["grid"]


def test_gymnasium_id_uses_native_vector_env():
    env = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=4))
    assert env.num_envs == 4 and type(env).__name__ == "CartPoleVectorEnv"
    env = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=2, vectorization="sync", max_episode_steps=7))
    assert isinstance(env, gym.vector.SyncVectorEnv)
    env.reset(seed=0)
    for _ in range(7):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.int64))
    assert (terminated | truncated).all()


def test_user_env_by_entry_point_and_registered_name():
    env = make_vector_env(EnvConfig(id="tests.toy_envs:CountingEnv", num_envs=3, kwargs={"offset": 5}))
    obs, _ = env.reset()
    assert obs[:, 0].tolist() == [5, 5, 5]
    register_env("counting", "tests.toy_envs:CountingEnv")
    assert make_vector_env(EnvConfig(id="counting", num_envs=2)).num_envs == 2


@pytest.mark.parametrize(
    "env_id, message",
    [
        ("NoSuchEnv-v9", "not a Gymnasium id"),
        ("tests.no_such_module:Env", "cannot import module 'tests.no_such_module'"),
        ("tests.toy_envs:Missing", "has no attribute 'Missing'"),
    ],
)
def test_unknown_envs_are_named_in_the_error(env_id, message):
    with pytest.raises(EnvNotFoundError, match=message):
        make_vector_env(EnvConfig(id=env_id))
