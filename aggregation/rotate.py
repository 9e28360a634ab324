"""Rotation: compacting a replay into its dataset while the run is still filling it.

A long run cannot keep everything it collects in the replay's rings. With
`aggregation.rotate_every_s`, a `ShardRotator` actor per shard reads the rows inserted since its
last rotation (the shard's cursor read), writes the episodes that have finished as new Parquet
files (`shard-NNN-rRRRRR-part-NNNNN.parquet`, in the run's partition folders) and keeps the rows of
unfinished episodes for the next rotation, so an episode is never split across files. After
each rotation the driver rewrites `_manifest.json` (marked `in_progress`) and the partitions'
`_index.json`, so the dataset is readable during the run; the last rotation, once collecting
is over, writes every remaining row and the other formats, as a one-off compaction would.

A rotation is all-or-nothing for its shard: the cursor and the held rows move on only after
its files are written, so a failed rotation (storage down, say) is retried by the next one
with nothing lost, as long as the replay has not evicted the rows meanwhile (the manifest's
`evicted_rows` counts any that were).

With a `state_dir` (durable shards: `<replay.wal_dir>/rotation/`), each rotator also writes
what it has done after every rotation (`rotator-NNN.arrow`: the held rows as Arrow IPC, the
cursor, the rotation count, the episode hashes seen and the files written in its metadata; no
pickle), so `harvest run --resume` goes on rotating from there: the shards come back from their
write-ahead logs with the same sequence numbers, and rows past the cursor are read as usual.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from loguru import logger

from harvest.aggregation.compact import ShardCompaction, compact_table, finish_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.manifest import FileEntry, Manifest
from harvest.aggregation.part_files import check_layout
from harvest.aggregation.shard_rows import read_rows
from harvest.aggregation.storage import Location, location
from harvest.rollout.batch import BatchSchema
from harvest.rollout.episode_filter import FilterReport
from harvest.rollout.replay.replay import Replay


class RotationError(RuntimeError):
    """A rotation could not write some shards' files (named in the message); their rows wait
    for the next rotation."""


_STATE_KEY = b"harvest_rotator"


class ShardRotator:
    """Compacts one replay shard a slice at a time: each `rotate` writes the episodes finished
    since the previous one and holds back the rows of episodes still being played."""

    def __init__(
        self,
        shard: ray.actor.ActorHandle,
        schema: BatchSchema,
        shard_index: int,
        out: Location,
        cfg: AggregationConfig,
        read_timeout_s: float = 120.0,
        state_dir: str | None = None,
    ) -> None:
        self._shard, self._schema, self._shard_index, self._out, self._cfg = shard, schema, shard_index, out, cfg
        self._read_timeout_s = read_timeout_s
        self._cursor = 0
        self._held = schema.arrow_schema().empty_table()
        self._seen_hashes: set[str] = set()
        self._rotations = 0
        self._written = _nothing_written()
        self._state = Path(state_dir) / f"rotator-{shard_index:03d}.arrow" if state_dir else None
        if self._state is not None and self._state.is_file():
            self._load_state(self._state)

    def rotate(self, final: bool = False) -> ShardCompaction:
        """Write what finished since the last rotation (everything left when `final`); returns
        everything this shard has written so far, so a caller that missed an answer loses nothing."""
        new_rows, cursor, skipped_rows = read_rows(
            self._shard, self._schema, self._cursor, self._cfg.read_chunk_rows, self._read_timeout_s
        )
        table = pa.concat_tables([self._held, new_rows]) if new_rows.num_rows else self._held
        if final:
            ready, held = table, table.schema.empty_table()
        else:
            ready, held = _split_finished(table)
        seen_hashes = set(self._seen_hashes)
        result = compact_table(
            ready,
            self._schema,
            self._shard_index,
            self._out,
            self._cfg,
            skipped_rows=skipped_rows,
            seen_hashes=seen_hashes,
            write_empty=False,
            stem=f"shard-{self._shard_index:03d}-r{self._rotations:05d}",
            log_level="DEBUG",
        )
        # the files are written: only now does this shard move on (a failure above retries it all)
        self._cursor, self._held, self._seen_hashes = cursor, held, seen_hashes
        self._rotations += 1
        self._written = self._written.merged(result)
        if self._state is not None:
            self._save_state(self._state)
        return self._written

    def progress(self) -> tuple[ShardCompaction, int]:
        """Everything written so far and the number of rotations (a resumed rotator's too)."""
        return self._written, self._rotations

    def _save_state(self, path: Path) -> None:
        written = self._written
        state = {
            "cursor": self._cursor,
            "rotations": self._rotations,
            "seen_hashes": sorted(self._seen_hashes),
            "written": {
                "files": [asdict(entry) for entry in written.files],
                "rows": written.rows,
                "skipped_rows": written.skipped_rows,
                "episode_ids": base64.b64encode(written.episode_ids.astype("<i8").tobytes()).decode(),
                "complete_episodes": written.complete_episodes,
                "collectors": written.collectors,
                "filtered": asdict(written.filtered) if written.filtered is not None else None,
            },
        }
        held = self._held.replace_schema_metadata(
            {**(self._held.schema.metadata or {}), _STATE_KEY: json.dumps(state).encode()}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, held.schema) as writer:
            writer.write_table(held)
        partial.replace(path)  # a rotator killed while writing leaves the previous state whole

    def _load_state(self, path: Path) -> None:
        with pa.memory_map(str(path)) as source:
            held = pa.ipc.open_file(source).read_all()
        metadata = dict(held.schema.metadata or {})
        state = json.loads(metadata.pop(_STATE_KEY))
        written = state["written"]
        self._cursor, self._rotations, self._seen_hashes = (
            state["cursor"],
            state["rotations"],
            set(state["seen_hashes"]),
        )
        self._held = held.replace_schema_metadata(metadata)
        self._written = ShardCompaction(
            [FileEntry(**entry) for entry in written["files"]],
            written["rows"],
            written["skipped_rows"],
            np.frombuffer(base64.b64decode(written["episode_ids"]), "<i8").astype(np.int64),
            written["complete_episodes"],
            written["collectors"],
            FilterReport(**written["filtered"]) if written["filtered"] is not None else None,
        )
        logger.bind(actor=f"ShardRotator[{self._shard_index}]").warning(
            "resuming after rotation {} from {}: {:,} rows in {} files written, {:,} held, cursor {:,}",
            self._rotations,
            path,
            written["rows"],
            len(written["files"]),
            held.num_rows,
            self._cursor,
        )

    def held_rows(self) -> int:
        """Rows of unfinished episodes waiting for a later rotation."""
        return self._held.num_rows


def _split_finished(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows of episodes that have ended, rows of episodes still going)."""
    if table.num_rows == 0:
        return table, table
    done = pc.or_(table.column("terminated"), table.column("truncated"))
    finished = pc.unique(table.column("episode_id").filter(done))
    ended = pc.is_in(table.column("episode_id"), value_set=finished)
    return table.filter(ended), table.filter(pc.invert(ended))


class Rotation:
    """Rotates a replay into a dataset while it fills: one `ShardRotator` actor per shard,
    triggered every `cfg.rotate_every_s` seconds from a thread of the driver.

    Example:
        >>> with Rotation(replay, out, cfg, run_id, env_id) as rotation:
        ...     fill(replay)                       # collectors push rows; rotations run meanwhile
        >>> manifest = rotation.finish()           # the last rows, the other formats, the manifest
    """

    def __init__(
        self,
        replay: Replay,
        out: Location | str | Path,
        cfg: AggregationConfig,
        run_id: str,
        env_id: str,
        timeout_s: float = 600.0,
        state_dir: str | Path | None = None,
        resume: bool = False,
        description: str | None = None,
    ) -> None:
        if cfg.rotate_every_s is None:
            raise ValueError("Rotation needs aggregation.rotate_every_s (seconds between rotations)")
        check_layout(replay.schema, cfg)
        self._out, self._cfg, self._schema = location(out), cfg, replay.schema
        self._run_id, self._env_id, self._timeout_s = run_id, env_id, timeout_s
        self._description = description
        self._out.make_dirs()
        self._state_dir = str(state_dir) if state_dir is not None else None
        if self._state_dir is not None and not resume:
            shutil.rmtree(self._state_dir, ignore_errors=True)  # another run's rotation state is not ours
        actor = ray.remote(ShardRotator).options(num_cpus=cfg.num_cpus)
        self._rotators = [
            actor.remote(shard, replay.schema, index, self._out, cfg, state_dir=self._state_dir)
            for index, shard in enumerate(replay.shards)
        ]
        self._results: list[ShardCompaction | None] = [None] * len(self._rotators)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rotations = 0
        self.failures = 0
        if resume:  # the rotators read their state: the manifest goes on from what they wrote
            progress = ray.get([rotator.progress.remote() for rotator in self._rotators], timeout=timeout_s)
            self._results = [written if rotations else None for written, rotations in progress]
            self.rotations = max(rotations for _, rotations in progress)

    def __enter__(self) -> "Rotation":
        self._thread = threading.Thread(target=self._loop, name="harvest-rotation", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the periodic rotations (waits for one in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._cfg.rotate_every_s):
            try:
                self.rotate()
            except Exception as err:  # noqa: BLE001 - the rows stay in the replay; the next rotation retries
                self.failures += 1
                logger.warning("{} (retried at the next rotation)", err)

    def rotate(self, final: bool = False) -> Manifest:
        """Blocks: one rotation of every shard, then the manifest over what they have written
        (marked `in_progress` unless `final`; `final` also writes the other formats). A shard
        whose rotation failed keeps its rows for the next one; the error names it, after the
        manifest records what the other shards wrote."""
        with self._lock:
            refs = [rotator.rotate.remote(final) for rotator in self._rotators]
            rows_before, files_before = self._count()
            failed = []
            for index, ref in enumerate(refs):
                try:
                    self._results[index] = ray.get(ref, timeout=self._timeout_s)
                except (ray.exceptions.RayError, TimeoutError) as err:
                    failed.append(f"shard {index}: {getattr(err, 'cause', None) or err}")
            self.rotations += 1
            if failed and final:
                raise RotationError(
                    f"the last rotation into {self._out} failed (the replay still holds the rows): " + "; ".join(failed)
                )
            manifest = finish_dataset(
                self._shard_results(),
                self._schema,
                self._out,
                self._cfg,
                self._run_id,
                self._env_id,
                in_progress=not final,
                rotations=self.rotations,
                description=self._description,
            )
            rows, files = self._count()
            if failed:
                raise RotationError(f"rotation {self.rotations} into {self._out}: " + "; ".join(failed))
            if not final:
                logger.info(
                    "rotation {}: {:,} rows in {} new files; {} now holds {:,} rows, {} episodes",
                    self.rotations,
                    rows - rows_before,
                    files - files_before,
                    self._out,
                    manifest.rows,
                    manifest.episodes,
                )
            return manifest

    def _count(self) -> tuple[int, int]:
        done = [result for result in self._results if result is not None]
        return sum(result.rows for result in done), sum(len(result.files) for result in done)

    def finish(self) -> Manifest:
        """Blocks: stop rotating, write every row still held or in the replay, then the other
        formats and the final manifest; the rotator actors are released."""
        self.stop()
        try:
            manifest = self.rotate(final=True)
        finally:
            for rotator in self._rotators:
                ray.kill(rotator, no_restart=True)
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        return manifest

    def _shard_results(self) -> list[ShardCompaction]:
        return [_nothing_written() if result is None else result for result in self._results]


def _nothing_written() -> ShardCompaction:
    return ShardCompaction([], 0, 0, np.zeros(0, np.int64), 0, [])
