"""Rollout: collectors (`RolloutWorker`) that step envs with a policy, transition batches, the
sharded replay, and evaluation."""

from harvest.rollout.batch import BatchSchema, BatchSchemaError, TransitionBatch
from harvest.rollout.config import PolicyConfig, ReplayConfig, RolloutConfig

__all__ = ["BatchSchema", "BatchSchemaError", "PolicyConfig", "ReplayConfig", "RolloutConfig", "TransitionBatch"]
