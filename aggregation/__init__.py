"""Aggregation: Ray tasks that compact the replay into datasets (Parquet + manifest, NPZ)
and read them back."""

from aggregation.compact import compact_replay, snapshot_replay, write_dataset
from aggregation.dataset import Dataset, DatasetError, DatasetIntegrityError
from aggregation.manifest import MANIFEST_NAME, Manifest

__all__ = ["Dataset", "DatasetError", "DatasetIntegrityError", "MANIFEST_NAME", "Manifest", "compact_replay",
           "snapshot_replay", "write_dataset"]
