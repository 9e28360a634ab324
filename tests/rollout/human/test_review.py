"""`review_frames` on its own: a reviewer labels, skips, goes back and ends through real key
events in a real window (Xvfb, xdotool), and the result holds exactly what they chose."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import numpy as np
import pytest

from harvest.rollout.human.config import HumanConfig
from harvest.rollout.human.review import _frame_picture, review_frames
from harvest.rollout.human.window import KeyboardRobot
from tests.rollout.human.test_collector import WindowWatch

needs_x = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xdotool") is None,
    reason="needs Xvfb and xdotool (Debian packages xvfb, xdotool)",
)


@pytest.mark.parametrize(
    "obs, expected",
    [
        (np.full((5, 4, 3), 7, np.uint8), np.full((5, 4, 3), 7, np.uint8)),  # an image: itself
        (np.stack([np.full((5, 4, 3), value, np.uint8) for value in (1, 2, 9)]), np.full((5, 4, 3), 9, np.uint8)),
        (np.array([0.5, -1.0]), np.zeros((30, 20, 3), np.uint8)),  # numbers: shown as text on black
        (None, np.zeros((30, 20, 3), np.uint8)),
    ],
)
def test_a_frame_shows_the_observations_image_the_newest_stacked_one_or_black(obs, expected):
    np.testing.assert_array_equal(_frame_picture(obs, (20, 30)), expected)


@pytest.fixture
def display(monkeypatch):
    from pyvirtualdisplay import Display

    xvfb = Display(visible=False, size=(640, 480))
    xvfb.start()
    monkeypatch.setenv("DISPLAY", xvfb.new_display_var)  # review_frames sets it; restored afterwards
    yield xvfb.new_display_var
    xvfb.stop()


@needs_x
@pytest.mark.timeout(120)
def test_a_reviewer_labels_skips_goes_back_and_ends_early(display):
    observations = np.array([[0.0, 1.0], [0.1, 1.1], [0.2, 1.2], [0.3, 1.3]], np.float32)
    agent_actions = np.array([0, 1, 1, 0])
    cfg = HumanConfig(display=display, operator="critic", window_size=[320, 200])
    with ThreadPoolExecutor(1) as pool:
        review = pool.submit(review_frames, observations, agent_actions, gym.spaces.Discrete(2), cfg, timeout_s=60)
        person = KeyboardRobot(display, None)
        window = WindowWatch(display, person, "Harvest review - critic", timeout_s=60)
        window.act(lambda: person.hold({"right"}, then_press="return"))  # frame 1: "right" is action 1
        window.act(lambda: person.hold(set(), then_press="space"))  # frame 2: the agent was right
        window.act(lambda: person.hold({"left"}, then_press="return"))  # frame 3: labelled 0 ...
        window.act(lambda: person.hold(set(), then_press="backspace"))  # ... taken back
        window.act(lambda: person.press("space"))  # frame 3 again: skipped this time
        person.press("escape")  # on frame 4: done
        result = review.result(timeout=60)
    assert {index: int(label) for index, label in result.labels.items()} == {0: 1}
    assert (result.skipped, result.reviewed, result.ended_early) == (2, 3, True)
