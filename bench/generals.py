"""Generals.io game steps per second: Harvest's batched engine vs `generals-bots`' own env, per core.

    python bench/generals.py [--batch-sizes 1 64 256] [--size 20] [--seconds 3] [--repeats 3]

One game step is one step of one game: both players' moves applied and both players'
observations produced. Both sides play the same maps (drawn once by `generate_map`, fixed
`--size`², shared as text) with uniformly random legal actions (pass, or a legal move, full or
split), in one process:

* reference: `generals-bots`' `GymnasiumGenerals.step` on one game (rules, rewards, both
  players' 15-channel padded tensors and valid-move masks), `env.reset` when a game ends;
* harvest: `GeneralsGames.step` + `GeneralsGames.observations` on B games at once (rules,
  rewards, both players' 9-channel boards and action masks: what `GeneralsVectorEnv` does per
  step), `GeneralsGames.reset` of the games that ended;
* bare engine: `GeneralsEngine.step` alone on B games (no rewards, no observations).

Only the stepping (and resetting) is timed; choosing the random actions is not. Harvest's games
start at staggered times during the warm-up, so a batch holds games at every stage, as a
long-running collector's does. Runs alternate (reference, then every B), so a slower or
faster phase of a shared host hits both alike; each figure is the median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # generals-bots imports pygame
# Run as a script, this file's folder is sys.path[0] and `import generals` would find this very
# file instead of the generals-bots package: drop that folder first.
BENCH_DIR = Path(__file__).resolve().parent
sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]

from generals.core.action import Action  # noqa: E402
from generals.core.grid import GridFactory  # noqa: E402
from generals.envs.gymnasium_generals import GymnasiumGenerals  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.envs.generals.actions import action_mask, decode  # noqa: E402
from harvest.envs.generals.games import GeneralsConfig, GeneralsGames, MapConfig  # noqa: E402
from harvest.envs.generals.maps import MapLayout, MapSettings, generate_map  # noqa: E402
from harvest.envs.generals.players import RandomLegalPlayer  # noqa: E402

AGENTS = ["player_0", "player_1"]


class MapPool:
    """A fixed list of maps handed out in turn, so both sides play the same boards and no map is
    generated inside a timed loop."""

    def __init__(self, size: int, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        settings = MapSettings(min_size=size, max_size=size)
        self.layouts: list[MapLayout] = [generate_map(rng, settings) for _ in range(count)]
        self.texts: list[str] = [layout.to_text() for layout in self.layouts]
        self._next = 0

    def take(self, count: int) -> list[int]:
        """Indices of the next `count` maps (wrapping around)."""
        picked = [(self._next + i) % len(self.layouts) for i in range(count)]
        self._next = (self._next + count) % len(self.layouts)
        return picked


# --- reference: generals-bots' Gymnasium env, one game --------------------------------------------------


class ReferenceRunner:
    """One `GymnasiumGenerals` game played with random legal actions, reset when it ends."""

    def __init__(self, maps: MapPool, size: int, max_steps: int, seed: int) -> None:
        self.maps = maps
        factory = GridFactory(min_grid_dims=(size, size), max_grid_dims=(size, size), seed=seed)
        self.env = GymnasiumGenerals(
            agents=AGENTS, grid_factory=factory, pad_observations_to=size, truncation=max_steps
        )
        self.rng = np.random.default_rng(seed)
        self.infos = self._reset()

    def _reset(self) -> dict:
        (index,) = self.maps.take(1)
        _, infos = self.env.reset(options={"grid": self.maps.texts[index]})
        return infos

    def random_action(self, valid_moves: np.ndarray) -> Action:
        """Uniform over pass and every legal move, full or split (as `RandomLegalPlayer` draws)."""
        moves = np.argwhere(valid_moves)
        choice = int(self.rng.integers(2 * len(moves) + 1))
        if choice == 2 * len(moves):
            return Action(to_pass=True)
        row, col, direction = moves[choice // 2]
        return Action(to_pass=False, row=int(row), col=int(col), direction=int(direction), to_split=choice % 2 == 1)

    def play(self, steps: int) -> None:
        """Untimed warm-up."""
        for _ in range(steps):
            self._step([self.random_action(self.infos[agent]["masks"]) for agent in AGENTS])

    def _step(self, actions: list[Action]) -> None:
        _, _, terminated, truncated, self.infos = self.env.step(actions)
        if terminated or truncated:
            self.infos = self._reset()

    def steps_per_s(self, seconds: float) -> float:
        """Game steps per second of `env.step` (and `env.reset` when a game ends), over about `seconds`."""
        steps, timed = 0, 0.0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(50):
                actions = [self.random_action(self.infos[agent]["masks"]) for agent in AGENTS]
                before = time.perf_counter()
                self._step(actions)
                timed += time.perf_counter() - before
            steps += 50
        return steps / timed


# --- harvest: GeneralsGames (engine + rewards + observations) on B games ---------------------------------


class HarvestRunner:
    """B `GeneralsGames` played with random legal actions; games that end are reset at once."""

    def __init__(self, maps: MapPool, num_games: int, size: int, max_steps: int, seed: int) -> None:
        self.maps = maps
        cfg = GeneralsConfig(max_steps=max_steps, map=MapConfig(min_size=size, max_size=size))
        self.games = GeneralsGames(num_games, cfg, seed=seed)
        self.player = RandomLegalPlayer(seed)
        self.num_games = num_games
        self._reset(np.arange(num_games))
        self.observations = self.games.observations()

    def _reset(self, games: np.ndarray) -> None:
        self.games.reset(games, [self.maps.layouts[i] for i in self.maps.take(len(games))])

    def random_actions(self, mask: np.ndarray | None = None) -> np.ndarray:
        """[B, 2] flat actions, uniform over each player's legal ones (pass included); `mask`
        [B, 2, num_actions] defaults to the last observations' action masks."""
        mask = self.observations["action_mask"] if mask is None else mask
        return self.player.act({"action_mask": mask.reshape(-1, mask.shape[-1])}).reshape(self.num_games, 2)

    def warm_up(self, steps: int) -> None:
        """Untimed: game g joins at a random step in [0, steps), so the batch ends up holding games
        of every age up to `steps`."""
        joins = self.player.rng.integers(0, steps, self.num_games) if self.num_games > 1 else np.zeros(1, int)
        for step in range(steps):
            self._step(self.random_actions(), active=joins <= step)

    def _step(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        _, terminated, truncated = self.games.step(actions, active=active)
        ended = terminated | truncated
        if ended.any():
            self._reset(np.flatnonzero(ended))
        self.observations = self.games.observations()

    def steps_per_s(self, seconds: float) -> float:
        """Game steps per second of `step` + `observations` (+ resets), over about `seconds`."""
        steps, timed = 0, 0.0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            actions = self.random_actions()
            before = time.perf_counter()
            self._step(actions)
            timed += time.perf_counter() - before
            steps += self.num_games
        return steps / timed

    def engine_steps_per_s(self, seconds: float) -> float:
        """Game steps per second of the bare `GeneralsEngine.step` (resets and action decoding untimed)."""
        engine, size = self.games.engine, self.games.size
        max_steps = self.games.cfg.max_steps
        steps, timed = 0, 0.0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            moves = decode(self.random_actions(action_mask(engine.legal_moves())), size, size)
            before = time.perf_counter()
            engine.step(*moves)
            timed += time.perf_counter() - before
            steps += self.num_games
            ended = engine.done | (engine.time >= max_steps)
            if ended.any():
                self._reset(np.flatnonzero(ended))
        self.observations = self.games.observations()
        return steps / timed


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256], help="games per Harvest step")
    parser.add_argument("--size", type=int, default=20, help="rows and columns of every map (both sides)")
    parser.add_argument("--max-steps", type=int, default=500, help="games are truncated after this many steps")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=200,
        help="untimed steps before measuring (Harvest games start staggered across them)",
    )
    parser.add_argument("--maps", type=int, default=512, help="maps in the shared pool")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    maps = MapPool(args.size, args.maps, args.seed)
    reference = ReferenceRunner(maps, args.size, args.max_steps, args.seed)
    reference.play(args.warmup_steps)
    harvest = {b: HarvestRunner(maps, b, args.size, args.max_steps, args.seed + b) for b in args.batch_sizes}
    for runner in harvest.values():
        runner.warm_up(args.warmup_steps)

    reference_runs: list[float] = []
    harvest_runs: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    engine_runs: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.repeats):
        reference_runs.append(reference.steps_per_s(args.seconds))
        for b, runner in harvest.items():
            harvest_runs[b].append(runner.steps_per_s(args.seconds))
            engine_runs[b].append(runner.engine_steps_per_s(args.seconds / 2))

    reference_median = statistics.median(reference_runs)
    # Each ratio compares a run with the reference run of the same repeat (minutes apart at most),
    # so a slower or faster phase of a shared host cancels out; the table shows their median.
    ratios = {b: [h / r for h, r in zip(harvest_runs[b], reference_runs)] for b in args.batch_sizes}
    engine_ratios = {b: [e / r for e, r in zip(engine_runs[b], reference_runs)] for b in args.batch_sizes}
    print(
        f"machine: {os.cpu_count()} cores, 1 process; {args.size}x{args.size} maps, random legal actions, "
        f"games truncated at {args.max_steps} steps; {args.repeats} runs of {args.seconds:g} s, medians"
    )
    print(
        f"reference generals-bots GymnasiumGenerals.step (1 game): {reference_median:,.0f} game-steps/s   "
        f"(runs: {_runs(reference_runs)})"
    )
    print("ratio: median over repeats of (harvest run / reference run of the same repeat)")
    print()
    print(
        f"{'B':>5}  {'harvest game-steps/s':>21}  {'reference game-steps/s':>23}  {'ratio':>7}  "
        f"{'bare engine steps/s':>20}  {'ratio':>7}"
    )
    for b in args.batch_sizes:
        print(
            f"{b:>5}  {statistics.median(harvest_runs[b]):>21,.0f}  {reference_median:>23,.0f}  "
            f"{statistics.median(ratios[b]):>6.1f}x  {statistics.median(engine_runs[b]):>20,.0f}  "
            f"{statistics.median(engine_ratios[b]):>6.1f}x"
        )
    print()
    for b in args.batch_sizes:
        print(
            f"B={b}: harvest runs {_runs(harvest_runs[b])} (ratios {', '.join(f'{r:.1f}' for r in ratios[b])}); "
            f"bare engine runs {_runs(engine_runs[b])}"
        )
    if 256 in ratios:
        print(f"ratio at B=256: {statistics.median(ratios[256]):.1f} x (target >= 20x)")


if __name__ == "__main__":
    main()
