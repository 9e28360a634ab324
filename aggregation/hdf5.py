"""HDF5 export: `_dataset.h5` written with h5py, streaming the Parquet files record batch by
record batch (a dataset larger than memory is fine).

Layout `columns` (the default):

    /                 attrs: env_id, run_id, created_at, rows, episodes, schema (JSON), harvest_format
    /data/<column>    (rows, *shape) in episode order, chunked, gzip/lzf; timestamps as int64 ns
    /episodes         a compound table: episode_id, start, length, return, terminated, truncated

Layout `episodes`: `/episodes/<episode_id>/<column>` per episode, with `length`, `return`,
`terminated` and `truncated` as the group's attributes (Minari-like).

Column names keep Harvest's dots (`obs.board`); strings are variable-length UTF-8. On object
storage the file is written locally, then uploaded whole.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from harvest.aggregation.config import Hdf5Config
from harvest.aggregation.dataset import iter_episodes, iter_record_batches
from harvest.aggregation.manifest import Manifest
from harvest.aggregation.storage import Location
from harvest.rollout.batch import TransitionBatch
from harvest.rollout.episode_filter import episode_runs

HDF5_NAME = "_dataset.h5"
HDF5_FORMAT = 1
_EPISODE_DTYPE = np.dtype(
    [
        ("episode_id", np.int64),
        ("start", np.int64),
        ("length", np.int64),
        ("return", np.float64),
        ("terminated", np.bool_),
        ("truncated", np.bool_),
    ]
)


def _storable(values: np.ndarray) -> np.ndarray:
    """What h5py stores: datetimes as int64 nanoseconds, strings as UTF-8 objects."""
    if values.dtype.kind == "M":
        return values.astype("datetime64[ns]").astype(np.int64)
    if values.dtype.kind in "UO":
        return values.astype(object)
    return values


def _h5_dtype(values: np.ndarray):
    return h5py.string_dtype() if values.dtype.kind in "UO" else values.dtype


def write_hdf5(root: Location, manifest: Manifest, cfg: Hdf5Config) -> Location:
    """Write `_dataset.h5` beside the Parquet files (see the module doc for the layouts)."""
    target = root.join(HDF5_NAME)
    with tempfile.TemporaryDirectory(prefix="harvest-h5-") as scratch:
        local = Path(root.local_path() or scratch) / (f"{HDF5_NAME}.tmp" if root.is_local else HDF5_NAME)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with h5py.File(local, "w") as h5:
                h5.attrs.update(
                    {
                        "env_id": manifest.env_id,
                        "run_id": manifest.run_id,
                        "created_at": manifest.created_at,
                        "rows": manifest.rows,
                        "episodes": manifest.episodes,
                        "schema": json.dumps(manifest.schema),
                        "harvest_format": HDF5_FORMAT,
                        "layout": cfg.layout,
                    }
                )
                batches = (TransitionBatch.from_arrow(batch).columns for batch in iter_record_batches(root, manifest))
                if cfg.layout == "columns":
                    _write_columns(h5, batches, cfg)
                else:
                    _write_episodes(h5, batches, cfg)
            if root.is_local:
                local.replace(Path(target.path))
            else:
                target.upload(local)
        finally:
            local.unlink(missing_ok=True)
    return target


def _compression(cfg: Hdf5Config) -> dict:
    if cfg.compression == "none":
        return {}
    if cfg.compression == "lzf":
        return {"compression": "lzf"}
    return {"compression": "gzip", "compression_opts": cfg.compression_level}


class _EpisodeTable:
    """Running per-episode summaries (rows arrive in episode order)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._current: list | None = None
        self._offset = 0

    def add(self, columns: dict[str, np.ndarray]) -> None:
        ids = columns["episode_id"]
        for start, stop in episode_runs(ids):
            episode_id = int(ids[start])
            reward = float(columns["reward"][start:stop].sum())
            if self._current is not None and self._current[0] == episode_id:
                self._current[2] += stop - start
                self._current[3] += reward
            else:
                self._flush()
                self._current = [episode_id, self._offset + start, stop - start, reward, False, False]
            self._current[4] = bool(columns["terminated"][stop - 1])
            self._current[5] = bool(columns["truncated"][stop - 1])
        self._offset += ids.size

    def _flush(self) -> None:
        if self._current is not None:
            self.rows.append(tuple(self._current))
        self._current = None

    def finish(self) -> np.ndarray:
        self._flush()
        return np.array(self.rows, dtype=_EPISODE_DTYPE)


def _write_columns(h5: h5py.File, batches: Iterator[dict[str, np.ndarray]], cfg: Hdf5Config) -> None:
    group = h5.create_group("data")
    episodes = _EpisodeTable()
    datasets: dict[str, h5py.Dataset] = {}
    for columns in batches:
        episodes.add(columns)
        for name, values in columns.items():
            stored = _storable(values)
            if name not in datasets:
                datasets[name] = group.create_dataset(
                    name,
                    shape=(0, *stored.shape[1:]),
                    maxshape=(None, *stored.shape[1:]),
                    dtype=_h5_dtype(stored),
                    chunks=(cfg.chunk_rows, *stored.shape[1:]),
                    **_compression(cfg),
                )
                if values.dtype.kind == "M":
                    datasets[name].attrs["unit"] = "ns since 1970-01-01T00:00:00Z"
            dataset = datasets[name]
            dataset.resize(dataset.shape[0] + stored.shape[0], axis=0)
            dataset[-stored.shape[0] :] = stored
    h5.create_dataset("episodes", data=episodes.finish())


def _write_episodes(h5: h5py.File, batches: Iterator[dict[str, np.ndarray]], cfg: Hdf5Config) -> None:
    group = h5.create_group("episodes")
    for columns in iter_episodes(batches):
        episode = group.create_group(str(int(columns["episode_id"][0])))
        for name, values in columns.items():
            stored = _storable(values)
            episode.create_dataset(
                name,
                data=stored,
                dtype=_h5_dtype(stored),
                chunks=(min(cfg.chunk_rows, max(1, stored.shape[0])), *stored.shape[1:]),
                **_compression(cfg),
            )
        episode.attrs.update(
            {
                "length": columns["episode_id"].size,
                "return": float(columns["reward"].sum()),
                "terminated": bool(columns["terminated"][-1]),
                "truncated": bool(columns["truncated"][-1]),
            }
        )


def read_hdf5(path: str | Path) -> dict[str, np.ndarray]:
    """Every column of a `columns`-layout `_dataset.h5` (timestamps back as datetime64[ns])."""
    with h5py.File(path, "r") as h5:
        if h5.attrs.get("layout") != "columns":
            raise ValueError(f"{path}: layout {h5.attrs.get('layout')!r}; read_hdf5 reads the `columns` layout")
        out = {}
        for name, dataset in h5["data"].items():
            values = dataset[()]
            if dataset.attrs.get("unit", "").startswith("ns since"):
                values = values.astype("datetime64[ns]")
            elif h5py.check_string_dtype(dataset.dtype) is not None:
                values = dataset.asstr()[()].astype(object)
            out[name] = values
        return out
