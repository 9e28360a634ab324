"""Aggregation: Ray tasks that compact the replay into datasets (Parquet + manifest, NPZ)
and read them back.

The names below are imported when first used: a process that only reads datasets (a
learner, `harvest inspect`) does not load the replay and compaction stack with them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compact_replay": "harvest.aggregation.compact",
    "snapshot_replay": "harvest.aggregation.shard_rows",
    "write_dataset": "harvest.aggregation.compact",
    "Dataset": "harvest.aggregation.dataset",
    "DatasetError": "harvest.aggregation.dataset",
    "DatasetIntegrityError": "harvest.aggregation.dataset",
    "MANIFEST_NAME": "harvest.aggregation.manifest",
    "Manifest": "harvest.aggregation.manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harvest.aggregation' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
