"""`LEARNERS`: the algorithms a run's `learner.stages` name, each a class
answering `learners.learner.Learner` (how it is built from a run, its work and unit, its checks)."""

from __future__ import annotations

from harvest.learners.bc import BCLearner
from harvest.learners.dqfd import DQfDLearner
from harvest.learners.learner import Learner
from harvest.learners.ppo import PPOLearner

LEARNERS: dict[str, type[Learner]] = {"bc": BCLearner, "dqfd": DQfDLearner, "ppo": PPOLearner}


def learner_class(algorithm: str) -> type[Learner]:
    """The class of `algorithm`, or a KeyError naming the known ones."""
    if algorithm not in LEARNERS:
        raise KeyError(f"learner.stages: {algorithm!r}: unknown; known: {sorted(LEARNERS)}")
    return LEARNERS[algorithm]
