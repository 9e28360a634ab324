"""The write-ahead log on its own: what a shard folder gives back after appends, checkpoints,
a torn tail and a restart, read from real files."""

import json

import numpy as np
import pyarrow as pa

from harvest.rollout.replay.durability import WriteAheadLog

SCHEMA = pa.schema([("step", pa.int64()), ("reward", pa.float32())])


def rows(first: int, num_rows: int) -> pa.RecordBatch:
    steps = np.arange(first, first + num_rows)
    return pa.RecordBatch.from_arrays([pa.array(steps), pa.array(steps * 0.5, pa.float32())], schema=SCHEMA)


def logged_steps(restored) -> list[tuple[list[int], str, int]]:
    return [(batch.column("step").to_pylist(), source, batch_id) for batch, source, batch_id in restored.logged]


def test_appended_batches_come_back_in_order_with_their_source_and_batch_id(tmp_path):
    log = WriteAheadLog(tmp_path / "shard-000", SCHEMA)
    log.append(rows(0, 3), "collector 0", 0)
    log.append(rows(3, 2), "collector 1 #1", 7)
    # No close: an append is in the file when it returns (what a SIGKILL leaves behind).
    restored = WriteAheadLog.restore(tmp_path / "shard-000")
    assert logged_steps(restored) == [([0, 1, 2], "collector 0", 0), ([3, 4], "collector 1 #1", 7)]
    assert restored.checkpoint_rows is None and restored.checkpoint_state == {} and restored.torn_batches == 0
    log.close()


def test_a_folder_that_does_not_exist_restores_nothing(tmp_path):
    restored = WriteAheadLog.restore(tmp_path / "never-made")
    assert (restored.checkpoint_rows, restored.logged, restored.torn_batches) == (None, [], 0)


def test_a_checkpoint_replaces_the_older_files_and_restore_adds_only_later_batches(tmp_path):
    folder = tmp_path / "shard-002"
    log = WriteAheadLog(folder, SCHEMA)
    log.append(rows(0, 4), "c0", 0)
    path = log.checkpoint(pa.Table.from_batches([rows(0, 4)]), {"next_seq": 4, "last_batch": {"c0": 0}})
    assert path == folder / "checkpoint-000001.arrow"
    log.append(rows(4, 2), "c0", 1)
    log.close()
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint-000001.arrow",
        "checkpoint-000001.json",
        "wal-000001.arrow",
    ]
    restored = WriteAheadLog.restore(folder)
    assert restored.checkpoint_rows.column("step").to_pylist() == [0, 1, 2, 3]
    assert restored.checkpoint_state == {"next_seq": 4, "last_batch": {"c0": 0}}
    assert logged_steps(restored) == [([4, 5], "c0", 1)]


def test_a_checkpoint_without_its_json_does_not_count(tmp_path):
    folder = tmp_path / "shard-000"
    log = WriteAheadLog(folder, SCHEMA)
    log.append(rows(0, 2), "c0", 0)
    log.checkpoint(pa.Table.from_batches([rows(0, 2)]), {"next_seq": 2})
    log.append(rows(2, 2), "c0", 1)
    log.close()
    # A crash between the next checkpoint's .arrow and its .json: only the .arrow is there.
    (folder / "checkpoint-000002.arrow").write_bytes((folder / "checkpoint-000001.arrow").read_bytes())
    (folder / "checkpoint-000002.json.partial").write_text(json.dumps({"next_seq": 99}))
    restored = WriteAheadLog.restore(folder)
    assert restored.checkpoint_state == {"next_seq": 2}
    assert logged_steps(restored) == [([2, 3], "c0", 1)]


def test_reopening_a_folder_starts_a_new_log_after_every_file_there(tmp_path):
    folder = tmp_path / "shard-000"
    first = WriteAheadLog(folder, SCHEMA)
    first.append(rows(0, 2), "c0", 0)
    first.close()
    (folder / "checkpoint-000004.arrow").write_bytes(b"")  # an orphan of a torn checkpoint
    second = WriteAheadLog(folder, SCHEMA)  # a restarted shard's new log
    assert second.generation == 5
    second.append(rows(2, 1), "c0", 1)
    second.close()
    assert logged_steps(WriteAheadLog.restore(folder)) == [([0, 1], "c0", 0), ([2], "c0", 1)]


def test_a_torn_last_batch_is_counted_and_the_batches_before_it_kept(tmp_path):
    folder = tmp_path / "shard-000"
    log = WriteAheadLog(folder, SCHEMA)
    for batch_id in range(3):
        log.append(rows(10 * batch_id, 5), "c0", batch_id)
    log.close()
    wal = folder / "wal-000000.arrow"
    data = wal.read_bytes()
    # Arrow's stream ends with an 8-byte end-of-stream marker; cut into the last batch itself.
    wal.write_bytes(data[:-40])
    restored = WriteAheadLog.restore(folder)
    assert logged_steps(restored) == [([0, 1, 2, 3, 4], "c0", 0), ([10, 11, 12, 13, 14], "c0", 1)]
    assert restored.torn_batches == 1


def test_a_log_whose_schema_was_torn_gives_no_batches(tmp_path):
    folder = tmp_path / "shard-000"
    WriteAheadLog(folder, SCHEMA).close()
    wal = folder / "wal-000000.arrow"
    wal.write_bytes(wal.read_bytes()[:10])
    restored = WriteAheadLog.restore(folder)
    assert (restored.logged, restored.torn_batches) == ([], 1)


def test_an_empty_log_is_no_torn_batch(tmp_path):
    folder = tmp_path / "shard-000"
    folder.mkdir()
    (folder / "wal-000000.arrow").write_bytes(b"")
    assert WriteAheadLog.restore(folder).torn_batches == 0
