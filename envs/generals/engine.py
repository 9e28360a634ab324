"""`GeneralsEngine`: B independent two-player Generals.io games stepped in one numpy call.

The rules are those of `generals-bots` 2.5.0 (`generals/core/game.py`), checked move for
move by `tests/envs/generals/test_engine.py`:

* A move goes from a tile the mover owns with at least 2 army to a passable neighbour,
  carrying all but one army, or half (`army // 2`) when split. Onto an own tile the armies
  merge; onto any other tile they fight: the larger side keeps the difference and the tile
  (a tie leaves the defender with 0).
* The two players' moves of a step are applied one after the other. Who goes first: player 0
  if either passes or names a tile off the grid; else whoever moves onto the tile the other
  is leaving; else whoever moves onto its own tile; else whoever moves the larger army
  (player 0 on ties).
* Capturing the opponent's general ends the game at once (the second move of that step is
  not applied) and hands all of the loser's land to the winner.
* After the moves, the step counter `time` advances; every 2nd step each owned general and
  city gains 1 army, every 50th step every owned tile does.
* A player sees the 3×3 neighbourhood of its land; everything else is fog.

Games in one engine share the array size H×W; a smaller map is padded with mountains to
the right and bottom and its own size is kept, so moves off its edge are refused exactly as
in the reference.

Armies are int32 (the reference stores int16 and would wrap above 32,767).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harvest.envs.generals.maps import MapLayout

NEUTRAL = -1
"""`owner` of a tile no player holds (plain land, unowned cities; mountains too)."""

DIRECTION_OFFSETS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
"""Row/column offset of each direction index: up, down, left, right (the reference's order)."""

LAND_GROWTH_INTERVAL = 50
STRUCTURE_GROWTH_INTERVAL = 2


@dataclass
class PlayerViews:
    """What each player sees, shaped [B, 2, H, W] (player axis second), as the reference's
    `Observation` fields; the counts are over the whole map, fog or not."""

    visible: np.ndarray
    armies: np.ndarray
    generals: np.ndarray
    cities: np.ndarray
    mountains: np.ndarray
    neutral_cells: np.ndarray
    owned_cells: np.ndarray
    opponent_cells: np.ndarray
    fog_cells: np.ndarray
    structures_in_fog: np.ndarray
    owned_land_count: np.ndarray
    owned_army_count: np.ndarray
    opponent_land_count: np.ndarray
    opponent_army_count: np.ndarray


class GeneralsEngine:
    """State and rules of `num_games` games of at most `height`×`width` tiles.

    Args:
        num_games: B, games stepped together.
        height, width: the array size every map fits in.

    Usage:
        engine = GeneralsEngine(256, 20, 20)
        engine.load(np.arange(256), [generate_map(rng, cfg) for _ in range(256)])
        engine.step(passes, rows, cols, directions, splits)   # each [B, 2]
        views = engine.views()
    """

    def __init__(self, num_games: int, height: int, width: int) -> None:
        if num_games < 1 or height < 2 or width < 2:
            raise ValueError(
                f"GeneralsEngine: expected num_games >= 1 and a map of at least 2x2, "
                f"got {num_games} games of {height}x{width}"
            )
        self.num_games, self.height, self.width = num_games, height, width
        shape = (num_games, height, width)
        self.armies = np.zeros(shape, np.int32)
        self.owner = np.full(shape, NEUTRAL, np.int8)
        self.mountain = np.ones(shape, bool)
        self.city = np.zeros(shape, bool)
        self.general = np.zeros(shape, bool)
        self.inside = np.zeros(shape, bool)
        self.map_size = np.zeros((num_games, 2), np.int64)  # (rows, cols) of each map
        self.general_position = np.zeros((num_games, 2, 2), np.int64)  # [game, player, (row, col)]
        self.time = np.zeros(num_games, np.int64)
        self.winner = np.full(num_games, -1, np.int8)

    @property
    def done(self) -> np.ndarray:
        """[B] bool: the game has a winner."""
        return self.winner >= 0

    def load(self, games: np.ndarray, layouts: list[MapLayout]) -> None:
        """Start fresh games from `layouts` in slots `games`."""
        for game, layout in zip(np.asarray(games).tolist(), layouts, strict=True):
            rows, cols = layout.mountain.shape
            if rows > self.height or cols > self.width:
                raise ValueError(f"GeneralsEngine: a {rows}x{cols} map does not fit in {self.height}x{self.width}")
            self.mountain[game] = True
            self.mountain[game, :rows, :cols] = layout.mountain
            self.city[game] = False
            self.city[game, :rows, :cols] = layout.city_army > 0
            self.general[game] = False
            self.inside[game] = False
            self.inside[game, :rows, :cols] = True
            self.armies[game] = 0
            self.armies[game, :rows, :cols] = layout.city_army
            self.owner[game] = NEUTRAL
            for player, (row, col) in enumerate(layout.generals):
                self.general[game, row, col] = True
                self.owner[game, row, col] = player
                self.armies[game, row, col] = 1
                self.general_position[game, player] = (row, col)
            self.map_size[game] = (rows, cols)
            self.time[game] = 0
            self.winner[game] = -1

    def step(
        self,
        passes: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        directions: np.ndarray,
        splits: np.ndarray,
        active: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply one step of every game that is not over (and `active`, [B] bool, if given); each
        move argument is [B, 2] (game, player).

        Moves that break a rule (not the mover's tile, under 2 army, into a mountain or off the
        map) are ignored, as in the reference. Returns [B] bool: the games this step stepped.
        """
        passes, rows, cols = (np.asarray(a, np.int64) for a in (passes, rows, cols))
        directions, splits = np.asarray(directions, np.int64), np.asarray(splits, np.int64)
        stepped = ~self.done if active is None else ~self.done & active
        games = np.arange(self.num_games)
        source_in = self._on_map(rows, cols)
        offsets = DIRECTION_OFFSETS[np.clip(directions, 0, 3)]
        dest_rows, dest_cols = rows + offsets[..., 0], cols + offsets[..., 1]
        dest_in = self._on_map(dest_rows, dest_cols)
        first = self._first_mover(passes, rows, cols, dest_rows, dest_cols, source_in, dest_in)
        for mover in (first, 1 - first):
            live = stepped & ~self.done
            pick = (games, mover)
            self._move(
                live,
                mover,
                passes[pick] == 1,
                rows[pick],
                cols[pick],
                directions[pick],
                dest_rows[pick],
                dest_cols[pick],
                source_in[pick],
                dest_in[pick],
                splits[pick] == 1,
            )
        self.time += stepped
        ended = stepped & self.done
        if ended.any():
            self._hand_over_land(np.flatnonzero(ended))
        self._grow(stepped & ~self.done)
        return stepped

    def _on_map(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        size = self.map_size[:, None, :]
        return (rows >= 0) & (rows < size[..., 0]) & (cols >= 0) & (cols < size[..., 1])

    def _gather(self, array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """array[g, rows[g, ...], cols[g, ...]] with off-grid positions clipped (mask them yourself)."""
        games = np.arange(self.num_games).reshape(-1, *([1] * (rows.ndim - 1)))
        return array[games, np.clip(rows, 0, self.height - 1), np.clip(cols, 0, self.width - 1)]

    def _first_mover(self, passes, rows, cols, dest_rows, dest_cols, source_in, dest_in) -> np.ndarray:
        """[B] the player whose move is applied first (the reference's `compute_agent_order`)."""
        default = (passes == 1).any(1) | ~source_in.all(1) | ~dest_in.all(1)
        onto_leaving = [(dest_rows[:, p] == rows[:, 1 - p]) & (dest_cols[:, p] == cols[:, 1 - p]) for p in (0, 1)]
        dest_owner = self._gather(self.owner, dest_rows, dest_cols)
        onto_own = [dest_owner[:, p] == p for p in (0, 1)]
        moved = self._gather(self.armies, rows, cols) - 1
        first = np.where(moved[:, 1] > moved[:, 0], 1, 0)
        first = np.where(onto_own[0] | onto_own[1], np.where(onto_own[0], 0, 1), first)
        first = np.where(onto_leaving[0] | onto_leaving[1], np.where(onto_leaving[0], 0, 1), first)
        return np.where(default, 0, first)

    def _move(
        self, live, mover, passing, rows, cols, directions, dest_rows, dest_cols, source_in, dest_in, split
    ) -> None:
        games = np.arange(self.num_games)
        rows_c, cols_c = np.clip(rows, 0, self.height - 1), np.clip(cols, 0, self.width - 1)
        dest_rows_c, dest_cols_c = np.clip(dest_rows, 0, self.height - 1), np.clip(dest_cols, 0, self.width - 1)
        army = self.armies[games, rows_c, cols_c].astype(np.int64)
        moving = np.minimum(np.where(split, army // 2, army - 1), army - 1)
        valid = (
            live
            & ~passing
            & source_in
            & (moving >= 1)
            & (self.owner[games, rows_c, cols_c] == mover)
            & dest_in
            & (directions >= 0)
            & (directions <= 3)
            & ~self.mountain[games, dest_rows_c, dest_cols_c]
        )
        if not valid.any():
            return
        g, mover = games[valid], mover[valid]
        source, dest = (g, rows_c[valid], cols_c[valid]), (g, dest_rows_c[valid], dest_cols_c[valid])
        moving, staying = moving[valid], army[valid] - moving[valid]
        target_army = self.armies[dest].astype(np.int64)
        target_owner = self.owner[dest].astype(np.int64)
        merge = target_owner == mover
        captured = ~merge & (target_army < moving)
        self.armies[dest] = np.where(merge, target_army + moving, np.abs(target_army - moving))
        self.armies[source] = staying
        self.owner[dest] = np.where(captured, mover, target_owner)
        took_general = captured & (target_owner == 1 - mover) & self.general[dest]
        self.winner[g[took_general]] = mover[took_general]

    def _hand_over_land(self, games: np.ndarray) -> None:
        for game in games.tolist():
            winner = self.winner[game]
            owner = self.owner[game]
            owner[owner == 1 - winner] = winner

    def _grow(self, games_mask: np.ndarray) -> None:
        owned = self.owner >= 0
        land = games_mask & (self.time % LAND_GROWTH_INTERVAL == 0)
        structures = games_mask & (self.time % STRUCTURE_GROWTH_INTERVAL == 0)
        if land.any():
            self.armies += owned & land[:, None, None]
        if structures.any():
            self.armies += owned & (self.general | self.city) & structures[:, None, None]

    def views(self) -> PlayerViews:
        """Both players' observations of every game."""
        players = np.array([0, 1], np.int8).reshape(1, 2, 1, 1)
        owner = self.owner[:, None]
        owned = owner == players
        opponent = owner == 1 - players
        visible = _dilate3x3(owned) & self.inside[:, None]
        invisible = ~visible & self.inside[:, None]
        mountain, city = self.mountain[:, None], self.city[:, None]
        inside = self.inside[:, None]
        structures_in_fog = invisible & (mountain | city)
        land = owned.sum((2, 3))
        army = (self.armies[:, None] * owned).sum((2, 3))
        return PlayerViews(
            visible=visible,
            armies=self.armies[:, None] * visible,
            generals=self.general[:, None] & visible,
            cities=city & visible,
            mountains=mountain & (visible | ~inside),  # padding reads as mountain, as the reference pads
            neutral_cells=(owner == NEUTRAL) & ~mountain & visible,
            owned_cells=owned & visible,
            opponent_cells=opponent & visible,
            fog_cells=invisible & ~structures_in_fog,
            structures_in_fog=structures_in_fog,
            owned_land_count=land,
            owned_army_count=army,
            opponent_land_count=land[:, ::-1],
            opponent_army_count=army[:, ::-1],
        )

    def legal_moves(self) -> np.ndarray:
        """[B, 2, H, W, 4] bool: player p may move from (row, col) in direction d (split or not)."""
        players = np.array([0, 1], np.int8).reshape(1, 2, 1, 1)
        can_leave = (self.owner[:, None] == players) & (self.armies[:, None] >= 2)
        passable = ~self.mountain  # padding is mountain, so this also keeps moves on the map
        open_dest = np.zeros((self.num_games, self.height, self.width, 4), bool)
        open_dest[:, 1:, :, 0] = passable[:, :-1, :]  # up: the tile above
        open_dest[:, :-1, :, 1] = passable[:, 1:, :]  # down
        open_dest[:, :, 1:, 2] = passable[:, :, :-1]  # left
        open_dest[:, :, :-1, 3] = passable[:, :, 1:]  # right
        return can_leave[..., None] & open_dest[:, None]


def _dilate3x3(mask: np.ndarray) -> np.ndarray:
    """Logical OR over each tile's 3×3 neighbourhood, over the last two axes."""
    rows = mask.copy()
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    out = rows.copy()
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out
