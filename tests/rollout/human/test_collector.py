"""Teleoperation: the key map, the scripted CarRacing driver, and a real window under Xvfb
played through real key events (xdotool) into the sharded replay."""

import csv
import json
import shutil
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import pytest
import ray

from harvest.envs.car_racing import CarRacingDriver
from harvest.envs.config import EnvConfig
from harvest.envs.registry import make_env
from harvest.rollout.config import ReplayConfig
from harvest.rollout.human.collector import HumanCollector, human_schema
from harvest.rollout.human.config import AxisConfig, ControlConfig, GamepadConfig, HumanConfig
from harvest.rollout.human.keymap import KeyMap, KeyMapError
from harvest.rollout.human.window import KeyboardRobot, x_keysym
from harvest.rollout.replay.replay import start_replay
from tests.waiting import wait_for

needs_x = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xdotool") is None,
    reason="needs Xvfb and xdotool (Debian packages xvfb, xdotool)",
)
DRIVING = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))


def test_the_driving_key_map_adds_held_controls_and_clips_to_the_space():
    keymap = KeyMap(HumanConfig(), DRIVING)
    assert keymap.controls_of(["w", "left", "x"]) == ["throttle", "steer_left"]
    np.testing.assert_array_equal(keymap.action(["throttle", "steer_left"]), [-1, 1, 0])
    np.testing.assert_allclose(keymap.action(["steer_left", "steer_right", "brake"]), [0, 0, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(keymap.action([]), [0, 0, 0])
    assert keymap.key_for("brake") == "s" and keymap.action(["throttle"]).dtype == np.float32
    # a gamepad: half right on the stick, right trigger three quarters in, left trigger at rest
    np.testing.assert_allclose(keymap.action([], {0: 0.5, 5: 0.5, 4: -1.0}), [0.5, 0.75, 0])
    np.testing.assert_allclose(keymap.action([], {0: 0.05}), [0, 0, 0])  # inside the deadzone


def test_discrete_key_maps_and_configured_ones():
    keymap = KeyMap(HumanConfig(noop_action=1), gym.spaces.Discrete(3))
    assert keymap.action(keymap.controls_of(["left"])) == 0 and keymap.action([]) == 1
    assert keymap.action(keymap.controls_of(["3", "right"])) == 1, "the key pressed last wins"
    custom = HumanConfig(
        keys={"space": "jump"}, controls={"jump": ControlConfig(value=2)}, gamepad=GamepadConfig(buttons={0: "jump"})
    )
    assert KeyMap(custom, gym.spaces.Discrete(3)).action(["jump"]) == 2
    box = HumanConfig(
        keys={"j": "push"},
        controls={"push": ControlConfig(index=1, value=0.5)},
        gamepad=GamepadConfig(axes={2: AxisConfig(index=0)}),
    )
    np.testing.assert_allclose(KeyMap(box, gym.spaces.Box(-1, 1, (2,))).action(["push"], {2: -0.5}), [-0.5, 0.5])


@pytest.mark.parametrize(
    "cfg, space, message",
    [
        (HumanConfig(), gym.spaces.Box(-1, 1, (2,)), "no default key map"),
        (HumanConfig(keys={"q": "fly"}), DRIVING, r"human.keys.q: no control 'fly'"),
        (
            HumanConfig(controls={"jump": ControlConfig(value=7)}, keys={"j": "jump"}),
            gym.spaces.Discrete(3),
            r"human.controls.jump.value: 7.0 is not an action",
        ),
        (HumanConfig(controls={"x": ControlConfig(index=3)}, keys={"x": "x"}), DRIVING, r"human.controls.x.index: 3"),
        (HumanConfig(noop_action=5), gym.spaces.Discrete(3), "human.noop_action: 5"),
    ],
)
def test_a_key_map_that_does_not_fit_the_action_space_is_refused_by_name(cfg, space, message):
    with pytest.raises(KeyMapError, match=message):
        KeyMap(cfg, space)


def test_x_keysyms_for_pygame_key_names():
    assert [x_keysym(k) for k in ("up", "f12", "w", "escape", "left shift")] == ["Up", "F12", "w", "Escape", "Shift_L"]


def test_the_scripted_driver_laps_car_racing_well():
    """The repeatable "person": key-press controls only, at least 700 on average."""

    def key_action(controls):
        return np.array(
            [
                ("steer_right" in controls) - ("steer_left" in controls),
                "throttle" in controls,
                0.8 * ("brake" in controls),
            ],
            np.float32,
        )

    returns = []
    for seed in (0, 1, 2):
        env, driver = gym.make("CarRacing-v3"), CarRacingDriver()
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(key_action(driver.controls(env)))
            total, done = total + reward, terminated or truncated
        env.close()
        returns.append(total)
    assert np.mean(returns) >= 700, returns


@pytest.fixture
def xvfb():
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(800, 600))
    display.start()
    yield display.new_display_var
    display.stop()


def replay_rows(replay) -> dict[str, np.ndarray]:
    parts = [ray.get(shard.read.remote(0, 1_000_000)).batch for shard in replay.shards]
    rows = {name: np.concatenate([part[name] for part in parts if part.num_rows]) for name in parts[0].columns}
    order = np.lexsort((rows["step"], rows["episode_id"]))
    return {name: column[order] for name, column in rows.items()}


class WindowWatch:
    """The window as the person at the keyboard sees it: they send a frame's keys once the window
    has taken the last ones (its picture changed), as a person does - keys sent ahead pile up,
    and SDL merges a key's release and its next press that arrive together into one held key."""

    def __init__(self, display: str, person: KeyboardRobot, title: str, timeout_s: float = 240) -> None:
        self.display = display
        self.window_id = person.focus_window(title, timeout_s=timeout_s)
        self.x, self.y, self.width, self.height = person.geometry(self.window_id)

    def pixels(self) -> np.ndarray:
        from PIL import ImageGrab

        box = (self.x, self.y, self.x + self.width, self.y + self.height)
        return np.asarray(ImageGrab.grab(bbox=box, xdisplay=self.display).convert("RGB"))

    def wait_for_the_first_frame(self, timeout_s: float = 120) -> None:
        """Until the window shows a frame below its status lines (the black `starting` picture before)."""
        wait_for(lambda: self.pixels()[80:].max() > 0, timeout_s, "the window's first frame")

    def act(self, send: Callable[[], None], timeout_s: float = 120) -> None:
        """`send()` the keys of one frame, and wait until the window shows what they did."""
        before = self.pixels()
        send()
        wait_for(
            lambda: not np.array_equal(self.pixels(), before), timeout_s, "the window to take the keys", poll_s=0.02
        )

    def wait_for_frames(self, count: int, timeout_s: float = 240) -> None:
        """Until the window has shown `count` new pictures (at least `count` frames passed)."""
        shown, last = 0, self.pixels()

        def counted() -> bool:
            nonlocal shown, last
            now = self.pixels()
            if not np.array_equal(now, last):
                shown, last = shown + 1, now
            return shown >= count

        wait_for(counted, timeout_s, f"{count} frames in the window", poll_s=0.05)


@needs_x
@pytest.mark.timeout(300)
def test_the_scripted_driver_plays_car_racing_through_real_key_events_frame_for_frame(ray_cluster, xvfb, tmp_path):
    from PIL import ImageGrab

    from harvest.aggregation.dataset import Dataset
    from harvest.aggregation.importers import import_driving_sessions

    env_cfg = EnvConfig(id="CarRacing-v3")
    cfg = HumanConfig(
        driver="scripted", lockstep=True, display=xvfb, operator="pilot", seed=3, batch_rows=64, window_size=[600, 400]
    )
    probe = make_env(env_cfg)
    replay = start_replay(ReplayConfig(num_shards=2, capacity_rows=20_000, num_cpus=0.1), human_schema(probe, cfg))
    probe.close()
    collector = (
        ray.remote(HumanCollector)
        .options(num_cpus=0.5)
        .remote(env_cfg, cfg, replay, 0, "teleop", str(tmp_path / "sessions"))
    )
    try:
        session = collector.run.remote()
        wait_for(lambda: replay.inserted_rows() >= 128, 200, "rows in the replay")
        # the window as a person sees it: the track (grey) on grass (green), the status line on top
        person = KeyboardRobot(xvfb, None)
        x, y, width, height = person.geometry(person.focus_window("Harvest teleop"))
        assert (width, height) == (600, 400)
        pixels = np.asarray(ImageGrab.grab(xdisplay=xvfb).convert("RGB"))[y : y + height, x : x + width].astype(int)
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        grass = (green > red + 60) & (green > blue + 60)
        road = (np.abs(red - green) < 12) & (np.abs(green - blue) < 12) & (red > 80) & (red < 130)
        assert grass.mean() > 0.15 and road.mean() > 0.03, (grass.mean(), road.mean())
        assert pixels[:40].max() == 255, "the status line"
        person.press("escape")  # a person ends the session
        result = ray.get(session, timeout=120)
        ray.get(collector.close.remote(), timeout=60)
    finally:
        ray.kill(collector, no_restart=True)
    try:
        rows, inserted = replay_rows(replay), replay.stats().inserted_rows
    finally:
        replay.kill()

    assert result.ended_by == "end_key" and result.lockstep and result.frames >= 128
    assert result.rows == result.frames == rows["step"].size == inserted
    np.testing.assert_array_equal(rows["action"], rows["intended_action"])  # frame for frame
    assert len(np.unique(rows["action"], axis=0)) >= 4, "steering, throttle and brake all used"
    assert set(rows["source"]) == {"human"} and set(rows["operator"]) == {"pilot"}
    assert set(rows["driver"]) == {"scripted"} and rows["truncated"][-1], "ESC ends the episode as truncated"
    np.testing.assert_array_equal(rows["frame"], np.arange(result.frames))
    assert rows["telemetry.speed"][-1] > 10 and rows["telemetry.tiles_visited"][-1] > 0

    folder = tmp_path / "sessions" / result.session_id
    assert result.session_folder == str(folder)
    with open(folder / "metadata" / "expert_data.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == result.frames == len(list((folder / "screenshots").glob("*.png")))
    assert not list(folder.rglob("*.partial")), "every file complete"
    lines = [json.loads(line) for line in (folder / "telemetry" / "episode_001.jsonl").read_text().splitlines()]
    assert [line["action"] for line in lines] == rows["action"].tolist()

    imported = import_driving_sessions([tmp_path / "sessions"], tmp_path / "imported")
    assert not imported.errors and imported.manifest.rows == result.frames
    back = Dataset.open(tmp_path / "imported").read_columns(["action", "obs.image"])
    np.testing.assert_allclose(back["action"][:, [2, 0, 1]], rows["action"], atol=1e-4)  # steering, throttle, brake
    np.testing.assert_array_equal(back["obs.image"], rows["obs"])


@needs_x
@pytest.mark.timeout(180)
def test_a_person_resets_pauses_and_ends_a_session_by_keys(ray_cluster, xvfb):
    """CartPole with the arrow keys, frame by frame (lockstep): the test is the person at the keyboard."""
    env_cfg = EnvConfig(id="CartPole-v1")
    cfg = HumanConfig(lockstep=True, display=xvfb, operator="ada", seed=0, window_size=[300, 200])
    probe = make_env(env_cfg)
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=1_000, num_cpus=0.1), human_schema(probe, cfg))
    probe.close()
    collector = ray.remote(HumanCollector).options(num_cpus=0.5).remote(env_cfg, cfg, replay, 1, "teleop", None)
    try:
        session = collector.run.remote()
        person = KeyboardRobot(xvfb, None)
        window = WindowWatch(xvfb, person, "Harvest teleop")
        window.wait_for_the_first_frame()
        for key in ["left"] * 3 + ["right"] * 3:
            window.act(lambda key=key: person.hold({key}, then_press="f12"))
        person.hold(set(), then_press="r")  # reset: the episode ends after 6 steps
        window.act(lambda: person.press("f12"))
        person.press("p")  # pause: frames pass, nothing is played
        window.act(lambda: person.press("f12"))  # the status line says PAUSED
        person.press("f12")  # a paused frame shows what the last one showed
        person.press("p")
        for _ in range(4):
            window.act(lambda: person.hold({"right"}, then_press="f12"))
        person.release_all()
        person.press("escape")
        result = ray.get(session, timeout=120)
        ray.get(collector.close.remote(), timeout=60)
    finally:
        ray.kill(collector, no_restart=True)
    try:
        rows = replay_rows(replay)
    finally:
        replay.kill()
    assert [e["ended"] for e in result.episodes] == ["reset", "session_end"]
    assert [e["length"] for e in result.episodes] == [6, 4] and result.frames == 10
    first = rows["episode_id"] == result.episodes[0]["episode_id"]
    assert rows["action"][first].tolist() == [0, 0, 0, 1, 1, 1] and rows["truncated"][first].tolist()[-1]
    assert rows["action"][~first].tolist() == [1, 1, 1, 1] and set(rows["driver"]) == {"person"}
    assert result.gamepad is None and result.session_folder is None  # CartPole is not a driving game
    quality = [e["quality"] for e in result.episodes]  # the seed 002 checks ran on both episodes
    assert [q["frames"] for q in quality] == [6, 4] and {f["check"] for f in quality[1]["findings"]} == {"short"}


@needs_x
@pytest.mark.timeout(300)
def test_harvest_teleop_puts_a_session_and_simulators_in_one_dataset_tagged_by_source(ray_cluster, xvfb, tmp_path):
    from harvest.aggregation.dataset import Dataset
    from harvest.cluster.cli import main

    overrides = [
        "env.id=CarRacing-v3",
        "env.num_envs=2",
        "rollout.num_collectors=1",
        "rollout.steps=200",
        "rollout.policy.kind=random",
        "rollout.batch_rows=100",
        "rollout.num_cpus=0.25",
        "replay.num_cpus=0.1",
        "aggregation.num_cpus=0.1",
        "aggregation.formats=[parquet]",
        f"run.output_dir={tmp_path}",
        f"human={{driver: scripted, lockstep: true, max_frames: 150, operator: pilot, display: '{xvfb}'}}",
    ]
    assert main(["teleop", "--run-id", "tele", *sum((["--set", item] for item in overrides), [])]) == 0
    rows = Dataset.open(tmp_path / "tele" / "dataset").read_columns(
        ["source", "driver", "operator", "session", "telemetry.speed", "intended_action", "action"]
    )
    human = rows["source"] == "human"
    assert human.sum() == 150 and set(rows["source"][~human]) == {"random"} and (~human).sum() >= 200
    assert set(rows["driver"][human]) == {"scripted"} and set(rows["operator"][human]) == {"pilot"}
    assert set(rows["driver"][~human]) == {"random"} and set(rows["operator"][~human]) == {""}
    assert np.isnan(rows["telemetry.speed"][~human]).all() and not np.isnan(rows["telemetry.speed"][human]).any()
    np.testing.assert_array_equal(rows["intended_action"][human], rows["action"][human])
    summary = json.loads((tmp_path / "tele" / "summary.json").read_text())
    (session,) = summary["collect"]["human_sessions"]
    assert session["frames"] == 150 and session["ended_by"] == "max_frames"
    assert len(list((tmp_path / "tele" / "sessions" / session["session_id"] / "screenshots").glob("*.png"))) == 150
    assert summary["collect"]["rows"] == summary["dataset_rows"]

    # the driving data, learned over the keyboard's action set: BC, then DQfD from BC's checkpoint
    train = [
        "learner.stages=[bc, dqfd]",
        "learner.action_set=driving",
        "learner.model=pixels",
        "learner.bc.epochs=1",
        "learner.conv_channels=[8, 16]",
        "learner.hidden_sizes=[32]",
        "learner.batch_size=32",
        "learner.dqfd.pretrain_steps=40",
        "learner.dqfd.n_step=3",
        "learner.dqfd.log_every=40",
        "learner.eval.episodes=1",
        "learner.eval.max_steps=50",
        "learner.num_cpus=0.5",
    ]
    assert main(["train", str(tmp_path / "tele"), *sum((["--set", item] for item in train), [])]) == 0
    from harvest.learners.checkpoint import load_checkpoint

    for stage in ("1-bc", "2-dqfd"):
        loaded = load_checkpoint(tmp_path / "tele" / "learner" / stage / "best.safetensors")
        assert loaded.model.action_space == gym.spaces.Discrete(9) and len(loaded.info["action_set"]) == 9
    from harvest.learners.policy import load_torch_policy

    policy = load_torch_policy(
        str(tmp_path / "tele" / "learner" / "best.safetensors"), env_action_space=gym.make("CarRacing-v3").action_space
    )
    frames = Dataset.open(tmp_path / "tele" / "dataset").read_columns(["obs"])["obs"][:4]
    assert policy.compute_actions(frames).actions.shape == (4, 3)


@needs_x
@pytest.mark.timeout(900)  # 1,200 frames of CarRacing beside a learner: minutes on a busy machine
def test_shadow_training_beside_live_play_agrees_more_as_the_session_goes_on(ray_cluster, xvfb, tmp_path):
    import threading

    from harvest.aggregation.dataset import Dataset
    from harvest.cluster.cli import main

    def hand_over_and_back() -> None:  # a person hands the controls to the shadow, then takes them back
        person = KeyboardRobot(xvfb, None)
        window = WindowWatch(xvfb, person, "Harvest teleop")
        window.wait_for_frames(30)  # the shadow has had rounds to learn
        person.press("h")
        window.wait_for_frames(10)  # taken within 2 frames: the shadow drives at least 8
        person.press("h")

    overrides = [
        "env.id=CarRacing-v3",
        "rollout.num_collectors=0",
        "replay.num_cpus=0.1",
        "aggregation.num_cpus=0.1",
        "aggregation.formats=[parquet]",
        f"run.output_dir={tmp_path}",
        "learner.model=pixels",
        "learner.conv_channels=[16, 32, 32]",
        "learner.hidden_sizes=[64]",
        "learner.batch_size=32",
        "learner.lr=0.001",
        f"human={{driver: scripted, lockstep: true, max_frames: 1200, seed: 1, "
        f"display: '{xvfb}', shadow: {{interval_s: 1.0, updates_per_round: 20, agreement_window: 100, "
        f"num_cpus: 0.5}}}}",
    ]
    helper = threading.Thread(target=hand_over_and_back, daemon=True)
    helper.start()
    assert main(["teleop", "--run-id", "shadow", *sum((["--set", item] for item in overrides), [])]) == 0
    helper.join(timeout=60)
    summary = json.loads((tmp_path / "shadow" / "summary.json").read_text())
    shadow, (session,) = summary["collect"]["shadow"], summary["collect"]["human_sessions"]
    assert shadow["versions"] >= 3 and Path(shadow["agreement_plot"]).stat().st_size > 10_000
    agreement = [point["agreement"] for point in session["shadow_agreement"]]
    versions = [point["version"] for point in session["shadow_agreement"]]
    assert versions[0] == 0 and versions[-1] >= 3 and versions == sorted(versions)
    assert np.mean(agreement[-3:]) > agreement[0] + 0.05, agreement

    rows = Dataset.open(tmp_path / "shadow" / "dataset").read_columns(
        ["driver", "action", "intended_action", "shadow_action", "shadow_version"]
    )
    by_shadow = rows["driver"] == "shadow"
    assert 0 < by_shadow.sum() == session["shadow_frames"] and set(rows["driver"]) == {"scripted", "shadow"}
    np.testing.assert_array_equal(rows["action"][by_shadow], rows["shadow_action"][by_shadow])
    np.testing.assert_array_equal(rows["action"][~by_shadow], rows["intended_action"][~by_shadow])
    assert rows["shadow_version"].max() == versions[-1] or rows["shadow_version"].max() >= 3


@needs_x
@pytest.mark.timeout(120)
def test_a_reviewer_labels_an_agents_frames_through_the_review_window(xvfb, tmp_path):
    """The person's side of DAgger: step through frames, hold the better action, label, skip, go back."""
    import threading

    from harvest.aggregation.compact import write_dataset
    from harvest.aggregation.config import AggregationConfig
    from harvest.aggregation.dataset import Dataset
    from harvest.learners.dagger import reviewed_corrections
    from harvest.rollout.batch import BatchSchema
    from tests.rollout.test_batch import random_batch

    observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    schema = BatchSchema.for_spaces(observation_space, DRIVING)
    batch = random_batch(schema, 12, seed=4)
    batch.columns.update(
        episode_id=np.zeros(12, np.int64),
        step=np.arange(12),
        action=np.tile(np.array([0, 0.5, 0], np.float32), (12, 1)),
    )
    write_dataset([batch], schema, tmp_path / "play", AggregationConfig(formats=["parquet"]), run_id="p", env_id="x")

    def reviewer() -> None:  # every key shows the next (or the previous) frame
        person = KeyboardRobot(xvfb, None)
        window = WindowWatch(xvfb, person, "Harvest review")
        window.wait_for_the_first_frame()
        for keys, then in [
            ({"up"}, "return"),
            ({"left", "up"}, "return"),
            (set(), "space"),
            ({"down"}, "return"),
            (set(), "backspace"),
            ({"right"}, "return"),
        ]:
            window.act(lambda keys=keys, then=then: person.hold(keys, then_press=then))
        person.release_all()
        person.press("escape")

    helper = threading.Thread(target=reviewer, daemon=True)
    helper.start()
    manifest = reviewed_corrections(
        Dataset.open(tmp_path / "play"),
        tmp_path / "corrections",
        HumanConfig(display=xvfb, window_size=[300, 300]),
        every=1,
        run_id="review",
    )
    helper.join(timeout=30)
    rows = Dataset.open(tmp_path / "corrections").read_columns(["step", "action", "agent_action", "source"])
    assert manifest.rows == 3 and rows["step"].tolist() == [0, 1, 3]
    np.testing.assert_allclose(rows["action"], [[0, 1, 0], [-1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(rows["agent_action"], np.tile([0, 0.5, 0], (3, 1)))
    assert set(rows["source"]) == {"correction"}


@needs_x
@pytest.mark.timeout(120)
def test_by_the_clock_a_session_keeps_its_frame_rate_and_reports_it(ray_cluster, xvfb):
    env_cfg = EnvConfig(id="CartPole-v1")
    cfg = HumanConfig(display=xvfb, fps=20, max_frames=30, window_size=[300, 200], seed=0)
    collector = HumanCollector(env_cfg, cfg, None, 0, "clock")
    try:
        result = collector.run()
    finally:
        collector.close()
    assert result.ended_by == "max_frames" and result.frames == 30 and not result.lockstep
    assert result.target_fps == 20 and 0 < result.achieved_fps <= 21, "paced, never faster than the target"
    assert result.seconds >= 29 / 20 and 0 <= result.late_frames <= 30
