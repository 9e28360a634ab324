"""Generals.io maps: seeded generation and the text format of `generals-bots`.

Text format (one row per line): `.` plain land, `#` mountain, `0`–`9` a city with 40 + digit
army, `x` a city with 50, `A` and `B` the two generals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MapLayout:
    """One map: `mountain` and `city_army` are [rows, cols]; `generals` is ((row, col), (row, col))."""

    mountain: np.ndarray
    city_army: np.ndarray
    generals: tuple[tuple[int, int], tuple[int, int]]

    @property
    def shape(self) -> tuple[int, int]:
        return self.mountain.shape

    def to_text(self) -> str:
        cells = np.full(self.shape, ".", dtype="<U1")
        cells[self.mountain] = "#"
        is_city = self.city_army > 0
        digits = self.city_army - 40
        cells[is_city & (digits >= 0) & (digits <= 9)] = np.char.mod("%d", digits)[
            is_city & (digits >= 0) & (digits <= 9)
        ]
        cells[is_city & (self.city_army == 50)] = "x"
        for letter, (row, col) in zip("AB", self.generals):
            cells[row, col] = letter
        return "\n".join("".join(row) for row in cells)


class MapError(ValueError):
    """A map text or map settings that cannot make a valid game."""


def parse_map(text: str) -> MapLayout:
    """A `MapLayout` from the text format above.

    Raises:
        MapError: ragged rows, an unknown character, or not exactly one `A` and one `B`.
    """
    lines = text.strip().split("\n")
    if len({len(line) for line in lines}) != 1:
        raise MapError(f"map text: rows have different lengths {sorted({len(line) for line in lines})}")
    cells = np.array([list(line) for line in lines])
    unknown = set(np.unique(cells)) - set(".#xAB0123456789")
    if unknown:
        raise MapError(f"map text: unknown characters {sorted(unknown)}; expected . # x A B 0-9")
    generals = []
    for letter in "AB":
        found = np.argwhere(cells == letter)
        if len(found) != 1:
            raise MapError(f"map text: expected exactly one {letter!r}, found {len(found)}")
        generals.append((int(found[0, 0]), int(found[0, 1])))
    city_army = np.zeros(cells.shape, np.int32)
    is_digit = np.char.isdigit(cells)
    city_army[is_digit] = 40 + cells[is_digit].astype(np.int32)
    city_army[cells == "x"] = 50
    return MapLayout(cells == "#", city_army, (generals[0], generals[1]))


@dataclass(frozen=True)
class MapSettings:
    """How maps are drawn (the `map:` keys of the env's kwargs).

    Args:
        min_size, max_size: rows and columns are each drawn from [min_size, max_size].
        mountain_density: chance that a tile is a mountain.
        city_density: chance that a tile is a city (army 40–50, like the reference's `0`–`9`, `x`).
        min_general_distance: the generals are at least this many steps apart by land (None:
            half the larger side).
    """

    min_size: int = 15
    max_size: int = 20
    mountain_density: float = 0.2
    city_density: float = 0.05
    min_general_distance: int | None = None

    def __post_init__(self) -> None:
        if not 4 <= self.min_size <= self.max_size:
            raise MapError(
                f"map: expected 4 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}"
            )
        if self.mountain_density < 0 or self.city_density < 0 or self.mountain_density + self.city_density >= 0.8:
            raise MapError(
                f"map: mountain_density={self.mountain_density} and city_density={self.city_density}: "
                "expected non-negative densities that leave at least 20 % plain land"
            )


def generate_map(rng: np.random.Generator, settings: MapSettings, max_attempts: int = 100) -> MapLayout:
    """A random map whose generals are connected by plain land at least the minimum distance apart.

    Raises:
        MapError: no such map was found in `max_attempts` draws (densities too high for the size).
    """
    for _ in range(max_attempts):
        rows, cols = (int(n) for n in rng.integers(settings.min_size, settings.max_size + 1, size=2))
        draw = rng.random((rows, cols))
        mountain = draw < settings.mountain_density
        is_city = (draw >= settings.mountain_density) & (draw < settings.mountain_density + settings.city_density)
        city_army = np.where(is_city, rng.integers(40, 51, size=(rows, cols)), 0).astype(np.int32)
        open_land = ~mountain & ~is_city
        candidates = np.argwhere(open_land)
        if len(candidates) < 2:
            continue
        first_row, first_col = (int(v) for v in candidates[rng.integers(len(candidates))])
        first = (first_row, first_col)
        distance = land_distance(open_land, first)
        min_distance = settings.min_general_distance or max(rows, cols) // 2
        far = np.argwhere((distance >= min_distance) & (distance < np.iinfo(np.int32).max))
        if len(far) == 0:
            continue
        second_row, second_col = (int(v) for v in far[rng.integers(len(far))])
        second = (second_row, second_col)
        return MapLayout(mountain, city_army, (first, second))
    raise MapError(
        f"map: no {settings.min_size}-{settings.max_size} map with connected generals "
        f"{settings.min_general_distance or 'half the side'} apart in {max_attempts} attempts; "
        "lower the densities or the distance"
    )


def land_distance(open_land: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Steps from `start` to every tile through `open_land` (int32 max where unreachable)."""
    unreachable = np.iinfo(np.int32).max
    distance = np.full(open_land.shape, unreachable, np.int32)
    frontier = np.zeros(open_land.shape, bool)
    frontier[start] = True
    step = 0
    while frontier.any():
        distance[frontier] = step
        grown = frontier.copy()
        grown[1:] |= frontier[:-1]
        grown[:-1] |= frontier[1:]
        grown[:, 1:] |= frontier[:, :-1]
        grown[:, :-1] |= frontier[:, 1:]
        frontier = grown & open_land & (distance == unreachable)
        step += 1
    return distance
