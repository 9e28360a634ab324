"""Generals.io envs: actions, rewards, the three APIs, the players, rows cut from games, rendering."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test
from PIL import Image

from harvest.envs.config import EnvConfig
from harvest.envs.generals.actions import action_mask, decode, encode, num_actions, pass_action
from harvest.envs.generals.env import GeneralsEnv, GeneralsParallelEnv, GeneralsVectorEnv
from harvest.envs.generals.players import ExpertPlayer, RandomLegalPlayer
from harvest.envs.generals.render import render_game, write_gif
from harvest.envs.generals.rewards import RewardWeights, step_rewards
from harvest.envs.registry import make_vector_env, row_columns
from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.cutter import EpisodeIds, TransitionCutter
from harvest.rollout.policies import RandomPolicy

SMALL_MAPS = {"min_size": 6, "max_size": 8, "min_general_distance": 3}


def test_flat_actions_round_trip_and_refuse_out_of_range():
    height, width = 5, 7
    assert num_actions(height, width) == 5 * 7 * 8 + 1
    rows, cols, directions, splits = np.meshgrid(range(height), range(width), range(4), range(2), indexing="ij")
    flat = encode(rows, cols, directions, splits, height, width)
    assert sorted(flat.ravel().tolist()) == list(range(pass_action(height, width)))
    moves = decode(flat, height, width)
    for decoded, original in zip(moves[1:], (rows, cols, directions, splits)):
        np.testing.assert_array_equal(decoded, original)
    assert not moves.passes.any()
    assert decode([pass_action(height, width)], height, width).passes.tolist() == [1]
    with pytest.raises(ValueError, match="generals action 281: expected 0 <= action <= 280 on a 5x7 board"):
        decode([3, 281], height, width)


def test_action_mask_allows_both_splits_of_a_legal_move_and_pass():
    legal = np.zeros((2, 3, 4), bool)
    legal[1, 2, 3] = True
    mask = action_mask(legal)
    assert mask.shape == (2 * 3 * 8 + 1,)
    assert np.flatnonzero(mask).tolist() == [encode(1, 2, 3, 0, 2, 3), encode(1, 2, 3, 1, 2, 3), 48]


@pytest.mark.parametrize(
    "winner, just_ended, before, after, army, expected",
    [
        # no winner; player 0 took a city; armies 30 vs 10 -> advantage +-0.5
        (-1, False, [[1, 0]], [[2, 0]], [[30, 10]], [[0.1 + 0.05 * 0.5, -0.05 * 0.5]]),
        # player 1 wins and takes player 0's two cities with the land
        (1, True, [[2, 1]], [[0, 3]], [[0, 40]], [[-1.0 - 0.2 - 0.05, 1.0 + 0.2 + 0.05]]),
        # a game over on an earlier step gives no win reward again
        (0, False, [[0, 0]], [[0, 0]], [[0, 0]], [[0.0, 0.0]]),
    ],
)
def test_step_rewards_by_hand(winner, just_ended, before, after, army, expected):
    rewards = step_rewards(
        RewardWeights(), np.array([winner]), np.array([just_ended]), np.array(before), np.array(after), np.array(army)
    )
    np.testing.assert_allclose(rewards, expected, atol=1e-6)


def test_gymnasium_env_passes_the_env_checker():
    check_env(GeneralsEnv(max_steps=50, map=SMALL_MAPS), skip_render_check=False)


def test_generals_is_a_gymnasium_id_and_make_vec_gives_the_batched_engine():
    import subprocess
    import sys

    # `import harvest` registers it (in a fresh process: no other test's import did it before).
    code = (
        "import gymnasium as gym, harvest\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "from harvest.envs.generals.env import GeneralsEnv, GeneralsVectorEnv\n"
        "env = gym.make('harvest/Generals-v0', max_steps=50)\n"
        "assert isinstance(env.unwrapped, GeneralsEnv)\n"
        "check_env(env.unwrapped)\n"
        "vec = gym.make_vec('harvest/Generals-v0', num_envs=4, max_steps=50)\n"
        "assert isinstance(vec, GeneralsVectorEnv) and vec.num_envs == 4\n"
        "obs, info = vec.reset(seed=0)\n"
        "vec.step(vec.action_space.sample())\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_parallel_env_is_pettingzoos_constructor():
    from harvest.envs.generals import parallel_env

    env = parallel_env(max_steps=50, map=SMALL_MAPS)
    assert isinstance(env, GeneralsParallelEnv)
    parallel_api_test(env, num_cycles=50)


def test_pettingzoo_env_passes_the_parallel_api_test():
    parallel_api_test(GeneralsParallelEnv(max_steps=50, map=SMALL_MAPS), num_cycles=200)


def test_vector_env_is_the_registered_generals_env_and_declares_its_row_columns():
    env = make_vector_env(EnvConfig(id="generals", num_envs=4, kwargs={"map": SMALL_MAPS}))
    assert isinstance(env, GeneralsVectorEnv)
    assert set(row_columns(env)) == {"game_id", "player_id"}
    with pytest.raises(ValueError, match="num_envs=3 with players: both needs an even number"):
        GeneralsVectorEnv(num_envs=3)


def collect_rows(env: GeneralsVectorEnv, player, steps: int, seed: int = 0) -> TransitionBatch:
    schema = BatchSchema.for_spaces(env.single_observation_space, env.single_action_space, extras=row_columns(env))
    cutter = TransitionCutter(
        schema,
        env.num_envs,
        10_000,
        env.metadata["autoreset_mode"],
        0,
        EpisodeIds(1),
        info_columns=tuple(row_columns(env)),
    )
    obs, _ = env.reset(seed=seed)
    cutter.reset(obs)
    batches = []
    for _ in range(steps):
        actions = player.act(obs)
        obs, reward, terminated, truncated, info = env.step(actions)
        batch = cutter.add_step(obs, actions, reward, terminated, truncated, info)
        if batch is not None:
            batches.append(batch)
    batches.append(cutter.flush())
    rows = TransitionBatch.concat(batches)
    schema.validate(rows, "test")
    return rows


def test_rows_of_both_players_share_the_game_id_and_every_action_is_legal():
    env = GeneralsVectorEnv(num_envs=6, players="both", max_steps=40, map=SMALL_MAPS)
    rows = collect_rows(env, ExpertPlayer(seed=0), steps=130)
    assert rows.num_rows > 0
    mask = rows["obs.action_mask"]
    assert mask[np.arange(rows.num_rows), rows["action"]].all(), "an action outside its own action_mask"
    finished_games = 0
    for game_id in np.unique(rows["game_id"]):
        game_rows = rows["game_id"] == game_id
        episodes = {
            int(player): np.unique(rows["episode_id"][game_rows & (rows["player_id"] == player)]) for player in (0, 1)
        }
        assert all(len(ids) == 1 for ids in episodes.values()), "one episode per player per game"
        assert episodes[0][0] != episodes[1][0]
        lengths = [np.count_nonzero(game_rows & (rows["player_id"] == player)) for player in (0, 1)]
        assert lengths[0] == lengths[1], "both players have a row for every step of the game"
        ends = rows["terminated"][game_rows] | rows["truncated"][game_rows]
        finished_games += bool(ends.any())
    assert finished_games >= 6, "games ended and new ones (new ids) started"


def test_next_obs_is_the_next_rows_obs_within_an_episode():
    env = GeneralsVectorEnv(num_envs=4, players="both", max_steps=30, map=SMALL_MAPS)
    rows = collect_rows(env, RandomLegalPlayer(seed=1), steps=70)
    order = np.lexsort((rows["step"], rows["episode_id"]))
    ordered = rows.take(order)
    same_episode = ordered["episode_id"][1:] == ordered["episode_id"][:-1]
    for key in ("obs.board", "obs.action_mask", "obs.armies"):
        np.testing.assert_array_equal(ordered["next_" + key][:-1][same_episode], ordered[key][1:][same_episode])
    truncated = ordered["truncated"]
    assert truncated.any() and (ordered["step"][truncated] == 29).all(), "truncated after max_steps=30"


def test_first_player_env_plays_against_the_opponent_and_resets_finished_games_next_step():
    env = GeneralsVectorEnv(num_envs=3, players="first", opponent="random", max_steps=5, map=SMALL_MAPS)
    obs, info = env.reset(seed=3)
    assert obs["board"].shape == (3, 9, 8, 8) and info["player_id"].tolist() == [0, 0, 0]
    first_ids = info["game_id"].copy()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.full(3, pass_action(8, 8)))
    assert truncated.all() and not terminated.any()
    obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.int64))  # the reset step
    assert (reward == 0).all() and not (terminated | truncated).any()
    assert len(set(info["game_id"]) & set(first_ids)) == 0
    assert (env.games.engine.time == 0).all()


def test_reward_weights_changed_while_playing_apply_from_the_next_step_and_unknown_ones_are_refused():
    only_wins = {"win": 1.0, "city": 0.0, "army_advantage": 0.0}
    env = GeneralsVectorEnv(num_envs=4, players="both", max_steps=200, map=SMALL_MAPS, rewards=only_wins)
    obs, _ = env.reset(seed=5)
    player = RandomPolicy(env.single_observation_space, env.single_action_space, seed=5)

    def play(steps: int) -> np.ndarray:
        nonlocal obs
        rewards = []
        for _ in range(steps):
            obs, reward, terminated, _, _ = env.step(player.compute_actions(obs).actions)
            rewards.append(reward[~terminated])
        return np.concatenate(rewards)

    assert (play(30) == 0).all(), "only wins pay: nothing before a game ends"
    with pytest.raises(ValueError, match="armies"):
        env.set_reward_weights({"armies": 1.0})
    assert env.cfg.rewards == RewardWeights(**only_wins), "a refused edit changes nothing"
    env.set_reward_weights({**only_wins, "army_advantage": 0.05})
    shaped = play(30)
    assert (shaped != 0).any() and (np.abs(shaped) <= 0.05 + 1e-6).all()


def test_expert_beats_the_random_player_in_95_percent_of_games():
    num_games = 100
    env = GeneralsVectorEnv(num_envs=num_games, players="first", opponent="random", max_steps=500)
    expert = ExpertPlayer(seed=0)
    obs, _ = env.reset(seed=0)
    outcome = np.full(num_games, -2)
    for _ in range(500):
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        ended = (terminated | truncated) & (outcome == -2)
        outcome[ended] = env.games.engine.winner[ended]
        if (outcome != -2).all():
            break
    assert (outcome != -2).all()
    assert (outcome == 0).mean() >= 0.95, f"expert won {(outcome == 0).mean():.0%}"


def test_random_policy_keeps_to_the_action_mask():
    env = GeneralsVectorEnv(num_envs=4, map=SMALL_MAPS)
    obs, _ = env.reset(seed=0)
    policy = RandomPolicy(env.single_observation_space, env.single_action_space, seed=0)
    for _ in range(20):
        actions = policy.compute_actions(obs).actions
        assert obs["action_mask"][np.arange(4), actions].all()
        obs, *_ = env.step(actions)


def test_render_frames_and_a_gif(tmp_path):
    env = GeneralsEnv(render_mode="rgb_array", map=SMALL_MAPS)
    env.reset(seed=0)
    frames = [env.render()]
    player = ExpertPlayer(seed=0)
    for _ in range(10):
        obs = {key: value[None] for key, value in env._observe().items()}
        env.step(int(player.act(obs)[0]))
        frames.append(env.render())
    assert frames[0].shape == (8 * 24, 8 * 24, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])
    path = write_gif(frames, tmp_path / "game.gif")
    with Image.open(path) as gif:  # Pillow merges identical frames, adding up their durations
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert 2 <= len(durations) <= 11 and sum(durations) == 11 * 170
    assert render_game(env.games.engine, 0).shape == frames[0].shape


def test_game_records_replay_to_the_same_end_and_make_gifs(tmp_path):
    from harvest.cluster.cli import main
    from harvest.envs.generals.replays import GameRecord, RecordError, replay_frames

    env = GeneralsVectorEnv(
        num_envs=4,
        players="first",
        opponent="random",
        max_steps=100,
        map=SMALL_MAPS,
        record_dir=str(tmp_path / "records"),
    )
    expert = ExpertPlayer()
    obs, _ = env.reset(seed=2)
    for _ in range(250):
        obs, *_ = env.step(expert.act(obs))
    paths = sorted((tmp_path / "records").glob("game-*.json"))
    assert len(paths) >= 4
    records = [GameRecord.load(path) for path in paths]
    assert any(record.winner >= 0 for record in records) and all(len(r.actions) <= 100 for r in records)
    for record in records:
        frames = list(replay_frames(record))  # raises if the replay ends with another winner
        assert len(frames) == len(record.actions) + 1
    tampered = GameRecord(
        records[0].game_id,
        records[0].size,
        records[0].map,
        records[0].actions,
        winner=1 - records[0].winner if records[0].winner >= 0 else 0,
    )
    with pytest.raises(RecordError, match="the replay ends with winner"):
        list(replay_frames(tampered))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RecordError, match="bad.json: not a Generals game record"):
        GameRecord.load(tmp_path / "bad.json")

    assert main(["generals-gif", "--record", str(paths[0]), "--out", str(tmp_path / "replay.gif")]) == 0
    assert (
        main(
            [
                "generals-gif",
                "--player",
                "expert",
                "--size",
                "6",
                "--max-steps",
                "40",
                "--out",
                str(tmp_path / "live.gif"),
            ]
        )
        == 0
    )
    for name in ("replay.gif", "live.gif"):
        with Image.open(tmp_path / name) as gif:
            assert gif.n_frames >= 2


def test_board_channels_of_a_hand_made_map():
    from harvest.envs.generals.engine import GeneralsEngine
    from harvest.envs.generals.maps import parse_map
    from harvest.envs.generals.observations import CHANNELS, player_observations

    engine = GeneralsEngine(1, 4, 5)  # the 4x4 map is padded with a mountain column
    engine.load(np.zeros(1, np.int64), [parse_map("A.#.\n.5..\n....\n...B")])
    engine.armies[0, 0, 0] = 8
    engine.owner[0, 0, 1], engine.armies[0, 0, 1] = 0, 2  # player 0 also holds (0, 1)
    board = player_observations(engine)["board"][0, 0]  # player 0's view
    channel = {name: board[index] for index, name in enumerate(CHANNELS)}
    visible = np.zeros((4, 5), bool)
    visible[:2, :3] = True  # 3x3 around (0, 0) and (0, 1)
    np.testing.assert_array_equal(channel["visible"], visible)
    np.testing.assert_array_equal(channel["fog"], np.pad(~visible[:, :4], ((0, 0), (0, 1))))
    np.testing.assert_allclose(channel["own_armies"][0, :2], [8 / 45, 2 / 45])  # scaled by the city (45) in view
    assert channel["enemy_armies"].sum() == 0 and channel["enemy_land"].sum() == 0  # B is in the fog
    assert channel["cities"][1, 1] == 1 and channel["cities"].sum() == 1
    assert channel["mountains"][0, 2] == 1 and channel["mountains"][:, 4].all()  # padding reads as mountain
    assert channel["neutral_land"][1, 0] == 1 and channel["neutral_land"][0, 0] == 0
    np.testing.assert_array_equal(channel["own_land"][:1, :2], [[1, 1]])
