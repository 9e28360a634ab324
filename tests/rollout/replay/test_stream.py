"""Streaming the replay to consumers: `stream_experiences` (a Ray streaming generator) and the
Arrow Flight server and client; order, filters, cursors, overruns, tokens, and a load test."""

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from pyarrow import flight

from harvest.rollout.config import ReplayConfig
from harvest.rollout.replay.flight import ReplayClient, ReplayFlightServer, start_flight_service
from harvest.rollout.replay.replay import start_replay
from harvest.rollout.replay.shard import KEY_SHARD_SHIFT
from harvest.rollout.replay.stream import StreamOverrun, stream_experiences
from tests.rollout.replay.test_shard import SCHEMA, numbered_batch


def produce(replay, first: int, num_rows: int, batch_rows: int = 100, source: str = "producer") -> None:
    """Insert rows numbered first..first+num_rows (`step` = global insertion number), episodes of 7
    rows spread over the shards, collector id = episode parity; each push acknowledged."""
    for start in range(first, first + num_rows, batch_rows):
        batch = numbered_batch(start, min(batch_rows, first + num_rows - start))
        batch.columns["episode_id"] = batch["step"] // 7
        batch.columns["collector_id"] = batch["episode_id"] % 2
        ray.get(replay.insert_async(batch, source, batch_id=start), timeout=60)


def assert_in_insertion_order(keys: np.ndarray, steps: np.ndarray, contiguous: bool = True) -> None:
    """Per shard, sequence numbers and global step numbers only go up (consecutively unless filtered)."""
    for shard in np.unique(keys >> KEY_SHARD_SHIFT):
        mine = (keys >> KEY_SHARD_SHIFT) == shard
        seqs = keys[mine] & ((1 << KEY_SHARD_SHIFT) - 1)
        assert (np.diff(seqs) == 1).all() if contiguous else (np.diff(seqs) > 0).all(), f"shard {shard} out of order"
        assert (np.diff(steps[mine]) > 0).all()


@pytest.fixture
def replay(ray_cluster):
    handle = start_replay(ReplayConfig(num_shards=2, capacity_rows=50_000, num_cpus=0.1), SCHEMA)
    yield handle
    handle.kill()


def collected(items) -> tuple[np.ndarray, np.ndarray, list]:
    items = list(items)
    keys = np.concatenate([item.batch["key"] for item in items]) if items else np.zeros(0, np.int64)
    steps = np.concatenate([item.batch["step"] for item in items]) if items else np.zeros(0, np.int64)
    return keys, steps, items


def test_a_stream_gives_every_row_once_in_order_and_resumes_from_its_cursor(replay):
    produce(replay, 0, 1000)
    keys, steps, items = collected(stream_experiences(replay, batch_size=128))
    assert [item.num_rows for item in items] == [128] * 7 + [104]
    np.testing.assert_array_equal(np.sort(steps), np.arange(1000))
    assert_in_insertion_order(keys, steps)
    assert set(items[-1].batch.columns) == {*SCHEMA.columns, "key"}

    first = list(stream_experiences(replay, batch_size=128).take(300))
    assert sum(item.num_rows for item in first) == 300
    rest = list(stream_experiences(replay, batch_size=128, start=first[-1].cursor))
    resumed = np.concatenate([item.batch["step"] for item in first + rest])
    np.testing.assert_array_equal(np.sort(resumed), np.arange(1000)), "no row lost or repeated across the resume"

    odd = np.concatenate([item.batch["step"] for item in stream_experiences(replay, collector_ids=[1])])
    np.testing.assert_array_equal(np.sort(odd), np.flatnonzero((np.arange(1000) // 7) % 2 == 1))
    with pytest.raises(ValueError, match="no 'game_id' column"):
        stream_experiences(replay, game_ids=[3])


def test_a_following_stream_from_latest_sees_only_new_rows_and_the_last_partial_batch(replay):
    produce(replay, 0, 500)
    with stream_experiences(replay, batch_size=64, follow=True, start="latest", poll_s=0.1) as stream:
        producer = threading.Thread(target=produce, args=(replay, 500, 300))
        producer.start()
        keys, steps, items = collected(stream.take(300))  # 300 is not a multiple of 64: a quiet shard flushes
        producer.join(timeout=60)
    np.testing.assert_array_equal(np.sort(steps), np.arange(500, 800))
    assert_in_insertion_order(keys, steps)


def test_a_consumer_the_ring_overtook_is_told_never_silently_skipped(ray_cluster):
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=200, num_cpus=0.1), SCHEMA)
    try:
        produce(replay, 0, 100)
        stream = stream_experiences(replay, batch_size=50, follow=True, max_buffered=1, poll_s=0.1)
        iterator = iter(stream)
        assert next(iterator).num_rows == 50
        produce(replay, 100, 2000)  # the paused reader does not hold the producer back
        with pytest.raises(StreamOverrun, match="overwrote .* rows .* before this consumer read them"):
            for _ in iterator:
                pass
        stream.close()

        reported = stream_experiences(
            replay,
            batch_size=50,
            follow=True,
            max_buffered=1,
            poll_s=0.1,
            on_overrun="report",
            start=next(iter(stream_experiences(replay, batch_size=1))).cursor,
        )
        iterator = iter(reported)
        received, skipped = next(iterator).num_rows, 0
        produce(replay, 2100, 2000)
        for item in iterator:
            received, skipped = received + item.num_rows, skipped + item.skipped_rows
            if item.batch["step"][-1] == 4099:
                break
        reported.close()
        assert skipped > 0
        assert received + skipped == 4100 - 2100 + 199, "every row is either received or counted as lost"
    finally:
        replay.kill()


def test_flight_serves_the_stream_with_a_token_and_refuses_clients_without_it(replay):
    produce(replay, 0, 700)
    actor, location = start_flight_service(replay, token="s3cret")
    try:
        assert location.startswith("grpc://127.0.0.1:")
        client = ReplayClient(location, token="s3cret")
        assert client.schema().columns == SCHEMA.columns
        keys, steps, items = collected(client.stream(batch_size=100))
        np.testing.assert_array_equal(np.sort(steps), np.arange(700))
        assert_in_insertion_order(keys, steps)
        rest = list(client.stream(batch_size=100, start=items[2].cursor))
        assert sum(item.num_rows for item in rest) == 400
        odd = np.concatenate([item.batch["step"] for item in client.stream(collector_ids=[1])])
        assert ((odd // 7) % 2 == 1).all() and odd.size == np.sum((np.arange(700) // 7) % 2 == 1)
        for token in (None, "wrong"):
            with pytest.raises(flight.FlightUnauthenticatedError, match="missing or wrong token"):
                list(ReplayClient(location, token=token).stream())
        with pytest.raises(ValueError, match="no .game_id. column"):  # ArrowInvalid is a ValueError
            list(client.stream(game_ids=[1]))
    finally:
        ray.kill(actor)
    with pytest.raises(ValueError, match="set a token"):
        ReplayFlightServer(replay, host="0.0.0.0")


def _do_get(ticket: bytes, token: bytes = b"s3cret"):
    return lambda client: client.do_get(
        flight.Ticket(ticket), flight.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token)])
    ).read_all()


def _call(method: str, *args):
    return lambda client: getattr(client, method)(
        *args, flight.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])
    )


BAD_FLIGHT_CALLS = {  # what a careless or hostile client sends, and what the one-line reply must say
    "a ticket that is not JSON": (_do_get(b"{not json"), flight.FlightServerError, "bad ticket"),
    "a ticket that is not an object": (_do_get(b"[1, 2]"), flight.FlightServerError, "expected a JSON object"),
    "a ticket with a bad value": (_do_get(b'{"batch_size": "x"}'), flight.FlightServerError, "invalid literal"),
    "a ticket with an unknown field": (_do_get(b'{"nope": 1}'), flight.FlightServerError, "unknown fields"),
    "a filter on a column the rows lack": (
        _do_get(b'{"where": {"game_id": [1]}}'),
        flight.FlightServerError,
        "no 'game_id' column",
    ),
    "a cursor for another replay's shards": (
        _do_get(b'{"start": [1, 2, 3]}'),
        flight.FlightServerError,
        "3 shard positions",
    ),
    "a wrong token": (_do_get(b"{}", token=b"guess"), flight.FlightUnauthenticatedError, "wrong token"),
    "a descriptor of no flight": (
        _call("get_flight_info", flight.FlightDescriptor.for_path("etc", "passwd")),
        flight.FlightServerError,
        "no flight at path",
    ),
    "a command descriptor": (
        _call("get_flight_info", flight.FlightDescriptor.for_command(b"DROP")),
        flight.FlightServerError,
        "no flight at command",
    ),
    "a write": (
        lambda client: _call("do_put", flight.FlightDescriptor.for_path("replay"), pa.schema([("a", pa.int64())]))(
            client
        )[0].close(),
        flight.FlightServerError,
        "do_put is not served",
    ),
    "an action": (
        lambda client: list(_call("do_action", flight.Action("shutdown", b""))(client)),
        flight.FlightServerError,
        "do_action 'shutdown' is not served",
    ),
}


def assert_one_clean_line(message: str) -> None:
    """An error reply as a client sees it: one line, none of the server's traceback or file paths."""
    repo = str(Path(__file__).resolve().parents[3])
    for leak in ("\n", "Traceback", 'File "', '.py"', ".pyx", repo, "site-packages"):
        assert leak not in message, f"{leak!r} in the reply: {message}"


@pytest.mark.parametrize("call", list(BAD_FLIGHT_CALLS))
def test_flight_error_replies_are_one_line_without_server_tracebacks_or_paths(replay, call):
    produce(replay, 0, 100)
    actor, location = start_flight_service(replay, token="s3cret")
    send, error, says = BAD_FLIGHT_CALLS[call]
    client = flight.FlightClient(location)
    try:
        with pytest.raises(error, match=says) as caught:
            send(client)
        assert str(caught.value).startswith("replay Flight server: ")
        assert_one_clean_line(str(caught.value))
    finally:
        client.close()
        ray.kill(actor)


def test_flight_says_in_one_line_that_the_replay_is_gone(ray_cluster):
    replay = start_replay(ReplayConfig(num_shards=1, num_cpus=0.1), SCHEMA)
    actor, location = start_flight_service(replay)
    client = flight.FlightClient(location)
    try:
        replay.kill()
        with pytest.raises(flight.FlightInternalError, match="failed \\(ActorDiedError\\)") as caught:
            client.do_get(flight.Ticket(b"{}")).read_all()
        assert_one_clean_line(str(caught.value))
    finally:
        client.close()
        ray.kill(actor)


def test_flight_tells_a_consumer_the_ring_overtook(ray_cluster):
    replay = start_replay(ReplayConfig(num_shards=1, capacity_rows=200, num_cpus=0.1), SCHEMA)
    actor, location = start_flight_service(replay)
    try:
        produce(replay, 0, 100)
        stream = ReplayClient(location).stream(batch_size=50, follow=True, poll_s=0.1)
        assert next(stream).num_rows == 50
        produce(replay, 100, 20_000)  # more than the reader and the transport buffer hold
        with pytest.raises(StreamOverrun, match="before this consumer read them"):
            for _ in stream:
                pass
    finally:
        ray.kill(actor)
        replay.kill()


def test_ten_consumers_five_in_ray_five_over_flight_each_get_exactly_10000_rows_in_order(replay):
    actor, location = start_flight_service(replay)
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    errors = []
    streams = [stream_experiences(replay, batch_size=256, follow=True, name=f"ray-{i}") for i in range(5)]

    def consume(name, items):
        try:
            keys, steps, _ = collected(items)
            results[name] = (keys, steps)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append((name, err))

    threads = [
        threading.Thread(target=consume, args=(f"ray-{i}", stream.take(10_000))) for i, stream in enumerate(streams)
    ]
    threads += [
        threading.Thread(
            target=consume,
            args=(f"flight-{i}", ReplayClient(location).take(10_000, batch_size=256, follow=True, name=f"flight-{i}")),
        )
        for i in range(5)
    ]
    for thread in threads:
        thread.start()
    try:
        produce(replay, 0, 12_000, batch_rows=250)
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert sorted(results) == sorted([f"ray-{i}" for i in range(5)] + [f"flight-{i}" for i in range(5)])
        stored = {}
        for shard_index, shard in enumerate(replay.shards):
            rows = ray.get(shard.read.remote(0, 100_000), timeout=60)
            stored.update(zip((np.int64(shard_index) << KEY_SHARD_SHIFT) | rows.seqs, rows.batch["step"]))
        for name, (keys, steps) in results.items():
            assert keys.size == 10_000, name
            assert_in_insertion_order(keys, steps)
            assert np.unique(keys).size == 10_000, f"{name}: a row twice"
            assert all(stored[key] == step for key, step in zip(keys.tolist(), steps.tolist())), name
    finally:
        ray.kill(actor)


def test_a_run_config_starts_the_flight_server_and_refuses_exposure_without_a_token(ray_cluster, monkeypatch):
    from pydantic import ValidationError

    from harvest.rollout.config import FlightConfig

    with pytest.raises(ValidationError, match="exposes the replay beyond this machine"):
        FlightConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="HARVEST_TEST_TOKEN is not set"):
        start_replay(
            ReplayConfig(num_shards=1, num_cpus=0.1, flight=FlightConfig(token_env="HARVEST_TEST_TOKEN")), SCHEMA
        )
    monkeypatch.setenv("HARVEST_TEST_TOKEN", "t0ken")
    replay = start_replay(
        ReplayConfig(num_shards=1, num_cpus=0.1, flight=FlightConfig(token_env="HARVEST_TEST_TOKEN")), SCHEMA
    )
    try:
        produce(replay, 0, 10)
        rows = sum(item.num_rows for item in ReplayClient(replay.flight_location, token="t0ken").stream())
        assert rows == 10
    finally:
        replay.kill()


def test_a_trainer_in_another_process_reads_the_stream_with_plain_pyarrow(replay):
    import json
    import subprocess
    import sys

    produce(replay, 0, 500)
    actor, location = start_flight_service(replay, token="tok")
    reader = f"""
import json, pyarrow.flight as fl
client = fl.FlightClient({location!r})
options = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer tok")])
ticket = fl.Ticket(json.dumps({{"batch_size": 64, "where": {{"collector_id": [0]}}}}).encode())
stream = client.do_get(ticket, options)
table = stream.read_all()
print(json.dumps({{"rows": table.num_rows, "steps": table.column("step").to_pylist()}}))
"""
    try:
        out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120, check=True)
    finally:
        ray.kill(actor)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = np.flatnonzero((np.arange(500) // 7) % 2 == 0)
    assert result["rows"] == expected.size
    np.testing.assert_array_equal(np.sort(result["steps"]), expected)
