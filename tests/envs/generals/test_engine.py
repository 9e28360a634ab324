"""The batched Generals engine against the reference implementation, `generals-bots` 2.5.0.

Both step the same maps with the same actions (passes, full and half moves, moves that
break a rule, positions off the map), and after every step the ownership, armies, step
counter, winner and both players' observations must be equal.
"""

import numpy as np
import pytest

from harvest.envs.generals.engine import GeneralsEngine
from harvest.envs.generals.maps import MapError, MapSettings, generate_map, land_distance, parse_map

reference_game = pytest.importorskip("generals.core.game")
reference_grid = pytest.importorskip("generals.core.grid")
reference_action = pytest.importorskip("generals.core.action")

AGENTS = ["p0", "p1"]
OBSERVATION_FIELDS = [
    "armies",
    "generals",
    "cities",
    "mountains",
    "neutral_cells",
    "owned_cells",
    "opponent_cells",
    "fog_cells",
    "structures_in_fog",
]
COUNT_FIELDS = ["owned_land_count", "owned_army_count", "opponent_land_count", "opponent_army_count"]


def reference_maps(num_games: int, seed: int) -> list[str]:
    """Half from the reference's own generator, half from ours (as text), sizes 5 to 14."""
    rng = np.random.default_rng(seed)
    texts = []
    for game in range(num_games):
        size = int(rng.integers(5, 15))
        if game % 2 == 0:
            factory = reference_grid.GridFactory(
                mode="uniform", min_grid_dims=(size, size), max_grid_dims=(size, size), seed=seed * 100_000 + game
            )
            texts.append(str(factory.generate()))
        else:
            settings = MapSettings(min_size=size, max_size=size, min_general_distance=2)
            texts.append(generate_map(rng, settings).to_text())
    return texts


def random_actions(rng, engine: GeneralsEngine, legal: np.ndarray) -> np.ndarray:
    """[B, 2, 5] (pass, row, col, direction, split): mostly legal moves, some passes and rule breakers."""
    num_games = engine.num_games
    actions = np.zeros((num_games, 2, 5), np.int64)
    kind = rng.random((num_games, 2))
    actions[..., 4] = rng.random((num_games, 2)) < 0.3
    for game in range(num_games):
        rows, cols = engine.map_size[game]
        for player in range(2):
            moves = np.argwhere(legal[game, player])
            if kind[game, player] < 0.05:
                actions[game, player, 0] = 1
                actions[game, player, 1:4] = rng.integers(0, 4, 3)
            elif kind[game, player] < 0.2 or len(moves) == 0:  # anything, even off the map
                actions[game, player, 1] = rng.integers(-1, rows + 1)
                actions[game, player, 2] = rng.integers(-1, cols + 1)
                actions[game, player, 3] = rng.integers(0, 4)
            else:
                actions[game, player, 1:4] = moves[rng.integers(len(moves))]
    return actions


def assert_same_state(engine: GeneralsEngine, games: list, observations: list, active: np.ndarray, step: int):
    """The engine's state and views of the active games equal the reference's (maps padded to the engine's size)."""
    views = engine.views()
    num_games, height, width = engine.armies.shape
    expected = {name: np.zeros((num_games, 2, height, width), np.int64) for name in OBSERVATION_FIELDS}
    expected_counts = {name: np.zeros((num_games, 2), np.int64) for name in COUNT_FIELDS + ["timestep"]}
    expected_armies = np.zeros((num_games, height, width), np.int64)
    expected_owner = np.full((num_games, height, width), -1, np.int64)
    indices = np.flatnonzero(active)
    for index in indices:
        game = games[index]
        rows, cols = game.grid_dims
        expected_armies[index, :rows, :cols] = game.channels.armies
        for player, agent in enumerate(AGENTS):
            expected_owner[index, :rows, :cols][game.channels.ownership[agent]] = player
            observation = observations[index][agent]
            for name in OBSERVATION_FIELDS:
                expected[name][index, player, :rows, :cols] = observation[name]
            for name in COUNT_FIELDS + ["timestep"]:
                expected_counts[name][index, player] = observation[name]
    inside = engine.inside[indices]
    pairs = [
        ("armies (state)", engine.armies[indices] * inside, expected_armies[indices]),
        ("owner (state)", np.where(inside, engine.owner[indices], -1), expected_owner[indices]),
        (
            "winner",
            engine.winner[indices],
            [-1 if games[i].winner is None else AGENTS.index(games[i].winner) for i in indices],
        ),
        ("time", engine.time[indices], [games[i].time for i in indices]),
        ("timestep", np.stack([engine.time[indices]] * 2, 1), expected_counts["timestep"][indices]),
    ]
    for name in OBSERVATION_FIELDS:
        pairs.append((name, getattr(views, name)[indices] * inside[:, None], expected[name][indices]))
    for name in COUNT_FIELDS:
        pairs.append((name, getattr(views, name)[indices], expected_counts[name][indices]))
    for name, ours, theirs in pairs:
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        if not np.array_equal(ours, theirs):
            differs = (ours != theirs).reshape(len(indices), -1).any(1)
            first = int(np.flatnonzero(differs)[0])
            game = games[indices[first]]
            raise AssertionError(
                f"step {step}: {name} differs in {int(differs.sum())} games; first: game "
                f"{indices[first]} ({game.grid_dims}), ours\n{ours[first]}\nreference\n{theirs[first]}"
            )


@pytest.mark.parametrize("seed, num_games, max_steps", [(1, 500, 120), (2, 460, 120), (3, 40, 700)])
def test_lockstep_with_the_reference(seed, num_games, max_steps):
    # 1,000 games in all; the 40 long ones cross the 50-step land growth many times.
    texts = reference_maps(num_games, seed)
    layouts = [parse_map(text) for text in texts]
    engine = GeneralsEngine(num_games, 14, 14)
    engine.load(np.arange(num_games), layouts)
    games = [reference_game.Game(reference_grid.Grid(text), AGENTS) for text in texts]
    observations = [{agent: game.agent_observation(agent) for agent in AGENTS} for game in games]
    rng = np.random.default_rng(seed)
    active = np.ones(num_games, bool)
    assert_same_state(engine, games, observations, active, 0)
    for step in range(1, max_steps + 1):
        legal = engine.legal_moves()
        for index in rng.choice(np.flatnonzero(active), size=min(3, int(active.sum())), replace=False):
            rows, cols = games[index].grid_dims  # the legal-move mask is the reference's
            for player, agent in enumerate(AGENTS):
                reference_mask = reference_action.compute_valid_move_mask(observations[index][agent])
                assert np.array_equal(legal[index, player, :rows, :cols], reference_mask.astype(bool)), (
                    f"step {step}: legal moves of game {index}, {agent}"
                )
        actions = random_actions(rng, engine, legal)
        engine.step(*(actions[..., field] for field in range(5)))
        for index in np.flatnonzero(active):
            moves = {
                agent: reference_action.Action(*actions[index, player].tolist()) for player, agent in enumerate(AGENTS)
            }
            observations[index], _ = games[index].step(moves)
        assert_same_state(engine, games, observations, active, step)
        active &= ~engine.done
        if not active.any():
            break
    winners = int(engine.done.sum())
    assert winners >= num_games // 20, f"only {winners} games ended: the capture rules were barely exercised"


def test_engine_leaves_finished_games_alone():
    layout = parse_map("A..\n...\n..B")
    engine = GeneralsEngine(2, 3, 3)
    engine.load(np.arange(2), [layout, layout])
    engine.winner[0] = 1
    before = engine.armies[0].copy()
    zeros = np.zeros((2, 2), np.int64)
    stepped = engine.step(zeros + 1, zeros, zeros, zeros, zeros)
    assert stepped.tolist() == [False, True]
    assert engine.time.tolist() == [0, 1]
    np.testing.assert_array_equal(engine.armies[0], before)


def test_generated_maps_connect_the_generals_far_apart():
    rng = np.random.default_rng(0)
    settings = MapSettings(min_size=15, max_size=20, min_general_distance=12)
    for _ in range(50):
        layout = generate_map(rng, settings)
        rows, cols = layout.shape
        assert 15 <= rows <= 20 and 15 <= cols <= 20
        first, second = layout.generals
        open_land = ~layout.mountain & (layout.city_army == 0)
        assert land_distance(open_land, first)[second] >= 12
        assert not layout.mountain[first] and not layout.mountain[second]
        assert parse_map(layout.to_text()).to_text() == layout.to_text()


def test_map_errors_name_the_problem():
    with pytest.raises(MapError, match="exactly one 'B'"):
        parse_map("A..\n...")
    with pytest.raises(MapError, match="unknown characters"):
        parse_map("A.?\n..B")
    with pytest.raises(MapError, match="min_size"):
        MapSettings(min_size=10, max_size=5)
    with pytest.raises(MapError, match="attempts"):
        generate_map(np.random.default_rng(0), MapSettings(min_size=5, max_size=5, min_general_distance=30))
