"""The sharded replay: `ReplayShard` actors holding rows in column rings, and `Replay`, the
handle that routes each episode to one shard."""

from harvest.rollout.replay.replay import Replay, ReplayStats, start_replay
from harvest.rollout.replay.results import InsertAck, ReadResult, ShardStats
from harvest.rollout.replay.ring import ColumnRing
from harvest.rollout.replay.shard import ReplayShard

__all__ = [
    "ColumnRing",
    "InsertAck",
    "ReadResult",
    "Replay",
    "ReplayShard",
    "ReplayStats",
    "ShardStats",
    "start_replay",
]
