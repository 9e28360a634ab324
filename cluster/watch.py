"""`harvest generals-gif`: a Generals.io game as an animated GIF, from a game record or played live."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:  # (imported when a GIF is made: `harvest --help` loads no env)
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--record", help="a game record (game-<id>.json, written by env.kwargs.record_dir)")
    source.add_argument("--player", help="play a live game: expert, random, or a checkpoint (.safetensors)")
    parser.add_argument(
        "--opponent", default="random", choices=["random", "expert", "pass"], help="who plays player 1 in a live game"
    )
    parser.add_argument("--size", type=int, default=10, help="rows and columns of the live game's map")
    parser.add_argument("--max-steps", type=int, default=500, help="the live game is cut after this many steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the live game's map and players")
    parser.add_argument("--fps", type=float, default=6.0, help="frames per second of the GIF (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the GIF to write")


def write_game_gif(args: argparse.Namespace) -> Path:
    from harvest.envs.generals.render import write_gif
    from harvest.envs.generals.replays import GameRecord, replay_frames

    if args.record:
        record = GameRecord.load(args.record)
        frames = list(replay_frames(record))
        what = f"game {record.game_id} ({len(record.actions)} steps, winner {record.winner})"
    else:
        frames, what = _live_frames(args)
    path = write_gif(frames, args.out, fps=args.fps)
    logger.info("{}: {} frames of {} at {:g} fps", path, len(frames), what, args.fps)
    return path


def _live_frames(args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    from harvest.envs.generals.env import GeneralsEnv
    from harvest.envs.generals.players import ExpertPlayer, RandomLegalPlayer

    env = GeneralsEnv(
        render_mode="rgb_array",
        opponent=args.opponent,
        max_steps=args.max_steps,
        map={"min_size": args.size, "max_size": args.size},
    )
    if args.player == "expert":
        act = ExpertPlayer(seed=args.seed).act
    elif args.player == "random":
        act = RandomLegalPlayer(seed=args.seed).act
    else:
        from harvest.learners.policy import load_torch_policy

        policy = load_torch_policy(args.player, deterministic=True, seed=args.seed)
        act = lambda obs: policy.compute_actions(obs).actions  # noqa: E731

    def frame() -> np.ndarray:
        image = env.render()
        assert image is not None  # render_mode="rgb_array" gives every frame
        return image

    obs, _ = env.reset(seed=args.seed)
    frames = [frame()]
    terminated = truncated = False
    while not (terminated or truncated):
        action = int(act({key: value[None] for key, value in obs.items()})[0])
        obs, _, terminated, truncated, info = env.step(action)
        frames.append(frame())
    outcome = {0: "player won", 1: "opponent won"}.get(info["winner"], "no winner")
    return frames, f"a live game, {args.player} vs {args.opponent} ({info['time']} steps, {outcome})"
