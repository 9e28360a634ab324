"""The fleet on its own, with collectors of the test's making: a call on every collector, a
collector that dies mid-call is restarted, told its incarnation, given the live settings again
and asked again; one that dies too often fails the fleet, naming it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
import ray

from harvest.rollout.collector_ids import collector_source
from harvest.rollout.collector_reports import Activity
from harvest.rollout.config import WatchdogConfig
from harvest.rollout.fleet import CollectorFailedError, Fleet


@dataclass
class Played:
    collector_id: int
    rows: int
    source: str
    setting: str | None


class DiesOnce:
    """Dies (its process exits) in its first incarnation's first `collect` when `die` names it."""

    def __init__(self, index: int, die: tuple[int, ...] = (), always: bool = False) -> None:
        self.index, self.die, self.always = index, die, always
        self.incarnation, self.setting = 0, None

    def restarted(self, incarnation: int) -> int:
        self.incarnation = incarnation
        return incarnation

    def set_flavour(self, value: str) -> None:
        self.setting = value

    def activity(self) -> Activity:
        return Activity("idle", time.time())

    def collect(self, rows: int) -> Played:
        if self.index in self.die and (self.incarnation == 0 or self.always):
            os._exit(1)
        return Played(self.index, rows, collector_source(self.index, self.incarnation), self.setting)

    def close(self) -> None:
        pass


def start(max_restarts: int, **kwargs):
    actor = ray.remote(DiesOnce).options(num_cpus=0.1, max_restarts=max_restarts, max_concurrency=2)
    return lambda index: actor.remote(index, **kwargs)


def test_each_calls_every_collector_once_in_order(ray_cluster):
    with Fleet(start(0), 3, None, 0, WatchdogConfig()) as fleet:
        answers = fleet.each("collect", [(10,), (20,), (30,)], timeout_s=120)
    assert [(a.collector_id, a.rows, a.source) for a in answers] == [
        (0, 10, "collector 0"),
        (1, 20, "collector 1"),
        (2, 30, "collector 2"),
    ]
    assert fleet.restarts == [0, 0, 0]


def test_a_collector_that_dies_is_restarted_with_its_settings_and_asked_again(ray_cluster):
    with Fleet(start(2, die=(1,)), 2, None, 2, WatchdogConfig()) as fleet:
        fleet.apply("set_flavour", "weights v7")
        answers = fleet.each("collect", [(5,), (5,)], timeout_s=120)
    assert fleet.restarts == [0, 1]
    assert answers[1].source == "collector 1 #1", "the restarted one pushes as its new incarnation"
    assert [a.setting for a in answers] == ["weights v7", "weights v7"], "the setting came back after the restart"


def test_a_collector_that_keeps_dying_fails_the_fleet_naming_it(ray_cluster):
    with Fleet(start(1, die=(0,), always=True), 1, None, 1, WatchdogConfig()) as fleet:
        with pytest.raises(CollectorFailedError, match=r"collector 0 died 2 times, more than rollout.max_restarts=1"):
            fleet.each("collect", [(5,)], timeout_s=120)


def test_each_refuses_arguments_for_another_number_of_collectors(ray_cluster):
    with Fleet(start(0), 2, None, 0, WatchdogConfig()) as fleet:
        with pytest.raises(ValueError, match="1 argument tuples for 2 collectors"):
            fleet.each("collect", [(5,)], timeout_s=60)
