"""`harvest generals-gif` on its own: its arguments, a GIF of every frame of a recorded game (one
recorded here), a GIF of a live game, and a record that cannot be read."""

import argparse
import re

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from harvest.cluster.watch import add_arguments, write_game_gif
from harvest.envs.generals.actions import encode, pass_action
from harvest.envs.generals.games import GeneralsConfig, GeneralsGames, MapConfig
from harvest.envs.generals.replays import RecordError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harvest generals-gif", exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(argv)


def gif_duration_ms(path) -> int:
    """Total play time of a GIF (Pillow merges identical frames and adds up their durations)."""
    with Image.open(path) as image:
        total = 0
        for index in range(image.n_frames):
            image.seek(index)
            total += image.info["duration"]
    return total


@pytest.fixture
def log_lines():
    lines = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def test_the_arguments_take_a_record_or_a_player_with_the_documented_defaults():
    args = parse(["--record", "game-1.json", "--out", "g.gif"])
    assert (args.record, args.player, args.opponent, args.size, args.max_steps, args.seed, args.fps) == (
        "game-1.json",
        None,
        "random",
        10,
        500,
        0,
        6.0,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "g.gif"],  # neither a record nor a player
        ["--record", "a.json", "--player", "expert", "--out", "g.gif"],  # both
        ["--player", "expert"],  # no --out
        ["--player", "expert", "--opponent", "nobody", "--out", "g.gif"],
    ],
)
def test_arguments_that_do_not_name_one_game_and_one_gif_are_refused(argv):
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parse(argv)


def test_a_recorded_game_becomes_a_gif_of_its_start_and_every_step(tmp_path, log_lines):
    games = GeneralsGames(1, GeneralsConfig(map=MapConfig(min_size=4, max_size=5), record_dir=str(tmp_path)))
    games.seed(1)
    games.reset(np.zeros(1), ["AB..\n....\n....\n...."])
    wait = pass_action(5, 5)
    for actions in [[wait, wait]] * 4 + [[wait, encode(0, 1, 1, 0, 5, 5)], [encode(0, 0, 3, 0, 5, 5), wait]]:
        games.step(np.array([actions]))  # B steps off its general at step 5; A takes it at step 6
    record = tmp_path / f"game-{int(games.game_id[0])}.json"
    out = tmp_path / "game.gif"
    path = write_game_gif(parse(["--record", str(record), "--out", str(out), "--fps", "5"]))
    assert path == out
    assert gif_duration_ms(out) == 7 * 200  # the start and 6 steps, 5 frames a second
    with Image.open(out) as image:
        assert image.size == (5 * 24, 5 * 24)
    assert log_lines == [f"{out}: 7 frames of game {int(games.game_id[0])} (6 steps, winner 0) at 5 fps"]


def test_a_live_game_is_played_to_its_end_and_written(tmp_path, log_lines):
    out = tmp_path / "live.gif"
    argv = ["--player", "random", "--size", "6", "--max-steps", "12", "--seed", "3", "--fps", "10", "--out", str(out)]
    write_game_gif(parse(argv))
    # Seeded: neither random player takes a general in 12 steps, so the game is truncated.
    assert log_lines == [f"{out}: 13 frames of a live game, random vs random (12 steps, no winner) at 10 fps"]
    assert gif_duration_ms(out) == 13 * 100
    with Image.open(out) as image:
        assert image.size == (6 * 24, 6 * 24)


def test_a_record_that_is_not_there_is_named(tmp_path):
    missing = tmp_path / "game-404.json"
    with pytest.raises(RecordError, match=rf"{re.escape(str(missing))}: no such game record"):
        write_game_gif(parse(["--record", str(missing), "--out", str(tmp_path / "x.gif")]))
    assert not (tmp_path / "x.gif").exists()
