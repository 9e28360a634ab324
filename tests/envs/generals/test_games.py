"""`GeneralsGames` on its own: seeded maps and game ids, a hand-played game to its win with the
rewards worked out by hand, truncation, games held still, records that replay, live weights."""

import numpy as np
import pytest

from harvest.envs.generals.actions import encode, pass_action
from harvest.envs.generals.games import GeneralsConfig, GeneralsGames, MapConfig
from harvest.envs.generals.replays import GameRecord, replay_frames
from harvest.envs.generals.rewards import RewardWeights

SMALL = MapConfig(min_size=4, max_size=6)
# The generals side by side in the top-left corner of a 4x4 map (padded to 6x6 with mountains).
ADJACENT = "AB..\n....\n....\n...."
PASS = pass_action(6, 6)


def move(row: int, col: int, direction: int) -> int:
    """A flat action moving all but one army from (row, col); directions: 0 up, 1 down, 2 left, 3 right."""
    return int(encode(row, col, direction, 0, 6, 6))


def test_the_same_seed_gives_the_same_maps_under_the_same_game_ids():
    first, second = GeneralsGames(3, GeneralsConfig(map=SMALL)), GeneralsGames(3, GeneralsConfig(map=SMALL))
    for games in (first, second):
        games.seed(7)
        games.reset(np.arange(3))
    assert [layout.to_text() for layout in first.layouts] == [layout.to_text() for layout in second.layouts]
    salt = int(np.random.default_rng(7).integers(2**31))  # the ids' high bits, drawn from the seed
    assert first.game_id.tolist() == second.game_id.tolist() == [(salt << 32) + game for game in range(3)]


def test_a_seed_given_at_construction_is_the_same_as_seeding_afterwards():
    built = GeneralsGames(2, GeneralsConfig(map=SMALL), seed=11)
    seeded = GeneralsGames(2, GeneralsConfig(map=SMALL))
    seeded.seed(11)
    for games in (built, seeded):
        games.reset(np.arange(2))
    assert built.game_id.tolist() == seeded.game_id.tolist()
    assert [layout.to_text() for layout in built.layouts] == [layout.to_text() for layout in seeded.layouts]


def test_every_new_game_gets_the_next_id_and_games_unseeded_apart_do_not_share_ids():
    games = GeneralsGames(2, GeneralsConfig(map=SMALL))
    games.reset(np.arange(2))
    base = int(games.game_id[0])
    games.reset(np.array([1]))  # a finished game in slot 1 starts over
    assert games.game_id.tolist() == [base, base + 2]
    other = GeneralsGames(2, GeneralsConfig(map=SMALL))
    other.reset(np.arange(2))
    assert int(other.game_id[0]) >> 32 != base >> 32  # fresh 31-bit salts: equal once in 2**31


def test_a_game_played_by_hand_to_its_win_pays_the_weighted_rewards():
    weights = RewardWeights(win=2.0, city=0.0, army_advantage=0.5)
    games = GeneralsGames(1, GeneralsConfig(map=SMALL, rewards=weights))
    games.reset(np.zeros(1), [ADJACENT])
    assert games.layouts[0].generals == ((0, 0), (0, 1))
    # Generals start with 1 army and gain 1 every 2nd step: 3 each after step 4, equal armies pay 0.
    for _ in range(4):
        rewards, terminated, truncated = games.step(np.array([[PASS, PASS]]))
        assert rewards.tolist() == [[0.0, 0.0]] and not terminated[0] and not truncated[0]
    assert games.engine.armies[0, 0, :2].tolist() == [3, 3]
    # Step 5: B moves 2 of its 3 down, leaving 1 on its general; step 6: A's 2 take it.
    rewards, terminated, _ = games.step(np.array([[PASS, move(0, 1, 1)]]))
    assert rewards.tolist() == [[0.0, 0.0]] and not terminated[0]
    rewards, terminated, truncated = games.step(np.array([[move(0, 0, 3), PASS]]))
    assert terminated.tolist() == [True] and truncated.tolist() == [False]
    assert int(games.engine.winner[0]) == 0
    # The win pays +-2; the winner holds all 4 army, so the advantage term is +-0.5 * 1.
    np.testing.assert_allclose(rewards, [[2.5, -2.5]])
    assert rewards.dtype == np.float32


def test_a_game_that_runs_past_max_steps_is_truncated_not_terminated():
    games = GeneralsGames(1, GeneralsConfig(map=SMALL, max_steps=3))
    games.reset(np.zeros(1), [ADJACENT])
    ends = [games.step(np.array([[PASS, PASS]]))[1:] for _ in range(3)]
    assert [(bool(terminated[0]), bool(truncated[0])) for terminated, truncated in ends] == [
        (False, False),
        (False, False),
        (False, True),
    ]


def test_games_not_active_do_not_move_and_get_no_reward():
    games = GeneralsGames(2, GeneralsConfig(map=SMALL, rewards=RewardWeights(army_advantage=1.0)))
    games.reset(np.arange(2), [ADJACENT, ADJACENT])
    for _ in range(2):
        games.step(np.array([[PASS, PASS], [PASS, PASS]]))
    # Game 0: A moves 1 army off its general (2 -> 1 + 1); held still, game 1 does not.
    rewards, _, _ = games.step(np.array([[move(0, 0, 1), PASS], [move(0, 0, 1), PASS]]), active=np.array([True, False]))
    assert games.engine.time.tolist() == [3, 2]
    assert games.engine.armies[1, 1, 0] == 0 and games.engine.armies[0, 1, 0] == 1
    assert rewards[1].tolist() == [0.0, 0.0]


def test_a_finished_game_is_recorded_and_its_record_replays_to_the_same_winner(tmp_path):
    games = GeneralsGames(1, GeneralsConfig(map=SMALL, record_dir=str(tmp_path)))
    games.seed(3)
    games.reset(np.zeros(1), [ADJACENT])
    played = [[PASS, PASS]] * 4 + [[PASS, move(0, 1, 1)], [move(0, 0, 3), PASS]]
    for actions in played:
        games.step(np.array([actions]))
    record = GameRecord.load(tmp_path / f"game-{int(games.game_id[0])}.json")
    assert (record.size, record.winner, record.actions) == (6, 0, played)
    assert record.map == games.layouts[0].to_text()
    assert len(list(replay_frames(record, cell_px=4))) == 1 + len(played)  # raises if the winner differs


def test_new_reward_weights_apply_from_the_next_step_and_unknown_ones_change_nothing():
    games = GeneralsGames(1, GeneralsConfig(map=SMALL))
    with pytest.raises(ValueError, match="armies"):
        games.set_reward_weights({"armies": 1.0})
    assert games.cfg.rewards == RewardWeights()
    games.set_reward_weights({"win": 5.0})
    assert games.cfg.rewards == RewardWeights(win=5.0)
    assert games.cfg.map == SMALL, "the rest of the config is kept"


def test_observations_give_both_players_of_every_game():
    games = GeneralsGames(2, GeneralsConfig(map=SMALL))
    games.reset(np.arange(2), [ADJACENT, ADJACENT])
    observations = games.observations()
    assert observations["board"].shape == (2, 2, 9, 6, 6)
    assert observations["action_mask"].shape == (2, 2, games.num_actions)
    # Each player sees its own general: player 0's at (0, 0), player 1's at (0, 1).
    assert observations["generals"][0, 0, 0, 0] == 1 and observations["generals"][0, 1, 0, 1] == 1
