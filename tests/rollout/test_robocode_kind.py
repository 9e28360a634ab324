"""The Robocode env kind's plain decisions, without an engine: which runs it claims, the battles
each collector plays, fixed shares, chunks, the evaluation tank, and `env.kwargs` errors."""

import pytest

from harvest.envs.config import EnvConfig
from harvest.rollout.config import RolloutConfig
from harvest.rollout.robocode_kind import ROBOCODE_GYM_ID, RobocodeKind

KIND = RobocodeKind()
DUEL = EnvConfig(id="robocode", kwargs={"robots": ["sample.Corners", "sample.Crazy"], "width": 1000, "height": 800})


def test_it_claims_robocode_runs_only():
    assert KIND.claims(DUEL) and not KIND.claims(EnvConfig(id="CartPole-v1"))


def test_each_collector_plays_battles_seeded_from_the_run_seed_and_its_index():
    battles = [KIND.battles(DUEL, seed=5, collector_id=index) for index in range(3)]
    assert [b.seed for b in battles] == [5, 1005, 2005]
    assert battles[0].robots == ("sample.Corners", "sample.Crazy") and (battles[0].width, battles[0].height) == (
        1000,
        800,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": 3}, r"env.kwargs.seed: unexpected key \(battles are seeded from run.seed\)"),
        ({"robotz": ["a.B", "c.D"]}, r"env.kwargs.robotz: unexpected key"),
        ({"width": 100}, r"env.kwargs.width: Input should be greater than or equal to 400 \(got 100\)"),
        ({"robots": ["sample.Target"]}, r"robots: a battle needs at least 2 robots, got \['sample.Target'\]"),
    ],
)
def test_kwargs_that_are_not_battles_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KIND.check_kwargs(EnvConfig(id="robocode", kwargs=kwargs), seed=0)


def test_several_bad_kwargs_are_named_one_per_line():
    with pytest.raises(ValueError) as raised:
        KIND.battles(EnvConfig(id="robocode", kwargs={"width": 100, "colour": "red"}), seed=0)
    lines = str(raised.value).splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("env.kwargs.width: ")
        and lines[1] == "env.kwargs.colour: unexpected key"
    )


@pytest.mark.parametrize(
    "steps, num_collectors, shares", [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (5, 1, [5]), (7, 0, [7])]
)
def test_each_collectors_share_is_fixed_and_the_shares_add_up(steps, num_collectors, shares):
    rollout = RolloutConfig(steps=steps, num_collectors=num_collectors)
    assert KIND.shares(rollout) == shares and sum(shares) == steps


def test_a_chunk_is_one_collectors_share_rounded_up_unless_configured():
    assert KIND.chunk_rows(RolloutConfig(steps=10, num_collectors=3)) == 4
    assert KIND.chunk_rows(RolloutConfig(steps=10, num_collectors=3, chunk_rows=2)) == 2


def test_policies_are_evaluated_in_the_gymnasium_tank_against_the_second_robot_on_the_same_field():
    assert KIND.eval_env(DUEL, None, seed=0) == EnvConfig(
        id=ROBOCODE_GYM_ID, num_envs=1, kwargs={"opponent": "sample.Crazy", "width": 1000, "height": 800}
    )
    configured = EnvConfig(id=ROBOCODE_GYM_ID, kwargs={"opponent": "sample.Walls"})
    assert KIND.eval_env(DUEL, configured, seed=0) is configured
    assert KIND.learner_env(DUEL) is None


def test_the_description_names_the_battles_and_the_recorded_robots():
    recorded = EnvConfig(id="robocode", kwargs={**DUEL.kwargs, "record": ["sample.Crazy"], "rounds_per_battle": 2})
    assert KIND.describe(recorded, seed=4) == (
        "Robocode expert battles sample.Corners vs sample.Crazy (1000x800, 2 rounds each, run seed 4); "
        "rows of sample.Crazy"
    )
    assert KIND.describe(DUEL, seed=4).endswith("rows of sample.Corners, sample.Crazy")
