"""The real Robocode engine in a JVM driven by Harvest's runner (needs `make setup`'s Debian packages)."""

import os
import signal
from pathlib import Path

import pytest

from envs.robocode import host as host_module
from envs.robocode.host import EngineStalled, RobocodeError, RobocodeHost, RobocodeInstall, RobocodeNotInstalled

pytestmark = pytest.mark.robocode
ROBOTS = ["sample.SpinBot", "sample.Target"]


def installed() -> bool:
    try:
        RobocodeInstall.find()
        return True
    except RobocodeNotInstalled:
        return False


needs_robocode = pytest.mark.skipif(not installed(), reason="Robocode is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("robocode-cache")


def run_battle(engine: RobocodeHost, seed: int) -> list[dict]:
    return list(engine.battle(ROBOTS, rounds=1, seed=seed, turn_timeout_s=10))


@needs_robocode
def test_a_seeded_battle_streams_every_turn_and_repeats_exactly(tmp_path, cache_root):
    with RobocodeHost(tmp_path / "engine", cache_root) as engine:
        assert engine.version == "1.9.3.9"
        first = run_battle(engine, seed=7)
        again = run_battle(engine, seed=7)
        other = run_battle(engine, seed=8)
    turns = [message for message in first if message["t"] == "turn"]
    assert [turn["turn"] for turn in turns] == list(range(1, len(turns) + 1)), "lockstep: no turn skipped"
    assert first[-2] == {"t": "round_end", "round": 0, "turns": len(turns)}
    assert [result["name"] for result in first[-1]["results"]] == ROBOTS
    for turn in turns:
        assert [robot["name"] for robot in turn["robots"]] == ROBOTS
        for robot in turn["robots"]:
            assert 0 <= robot["x"] <= 800 and 0 <= robot["y"] <= 600 and 0 <= robot["energy"] <= 200  # hits give energy back
            assert abs(robot["velocity"]) <= 8 and 0 <= robot["heading"] < 6.2832
    assert any(turn["bullets"] for turn in turns), "SpinBot fires"
    assert again == first, "the same seed gives the same battle, turn for turn"
    assert other != first


@needs_robocode
def test_an_unknown_robot_is_refused_naming_it(tmp_path, cache_root):
    with RobocodeHost(tmp_path / "engine", cache_root) as engine:
        with pytest.raises(RobocodeError, match=r"robots sample.SpinBot,sample.NoSuchBot: only \[sample.SpinBot\] "
                                                r"are installed \(Robocode: Can't find 'sample.NoSuchBot'\)"):
            list(engine.battle(["sample.SpinBot", "sample.NoSuchBot"]))
        assert run_battle(engine, seed=1)[-1]["t"] == "battle_end", "the engine goes on after a refused battle"


@needs_robocode
def test_a_frozen_engine_is_detected_killed_and_restarted(tmp_path, cache_root):
    engine = RobocodeHost(tmp_path / "engine", cache_root)
    try:
        frozen = engine.process
        os.kill(frozen.pid, signal.SIGSTOP)
        with pytest.raises(EngineStalled, match="nothing for 2s .* killed it. Log tail"):
            list(engine.battle(ROBOTS, turn_timeout_s=2))
        assert frozen.poll() is not None, "the frozen JVM is gone"
        engine.restart()
        assert engine.process.pid != frozen.pid
        assert run_battle(engine, seed=3)[-1]["t"] == "battle_end"
    finally:
        engine.close()
    assert engine.process.poll() is not None


def test_a_missing_install_names_the_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(host_module, "JAR_DIR", tmp_path)
    with pytest.raises(RobocodeNotInstalled, match="robocode default-jdk xvfb"):
        RobocodeInstall.find()


@needs_robocode
@pytest.mark.timeout(300)
def test_200_consecutive_seeded_rounds_never_stall(tmp_path, cache_root):
    # Unpatched, 1.9.3.9 stalls about one lockstep battle in ten at a round start (minutes
    # each); HarvestAgent closes that race, so a 10 s turn timeout is never reached.
    with RobocodeHost(tmp_path / "engine", cache_root) as engine:
        messages = list(engine.battle(ROBOTS, rounds=200, seed=11, turn_timeout_s=10))
        log = engine.log_tail(200)
    round_ends = [message for message in messages if message["t"] == "round_end"]
    assert [message["round"] for message in round_ends] == list(range(200))
    for round_end in round_ends:
        turns = [m["turn"] for m in messages if m["t"] == "turn" and m["round"] == round_end["round"]]
        assert turns == list(range(1, round_end["turns"] + 1)), f"round {round_end['round']}: a turn is missing"
    assert "HarvestAgent: could not patch" not in log
