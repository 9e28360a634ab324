"""The replay stream over Apache Arrow Flight, for consumers outside Ray (another process,
another language): `ReplayFlightServer`, the Ray actor that hosts it, and `ReplayClient`.

A `do_get` ticket is the JSON of a `StreamSpec` (filters, batch size, follow, start, overrun
policy); the server runs the same `ReplayReader` as `stream_experiences` and sends each batch
with app metadata `{"cursor": [...], "skipped_rows": n, "lag_rows": n}`. The server binds to
127.0.0.1 unless told otherwise, and refuses to listen elsewhere without a token; with a
token every call must carry the header `authorization: Bearer <token>`. Every error reply is one
line without the server's traceback or file paths: a refused request is a `FlightServerError`
with `extra_info` b"bad-request" (`ReplayClient` raises ValueError), anything else a
`FlightInternalError` naming the call and the error type, the traceback going to the server's log.

Any Flight client can read it, e.g. in Python without Harvest:

    >>> client = pyarrow.flight.FlightClient("grpc://127.0.0.1:8815")
    >>> reader = client.do_get(pyarrow.flight.Ticket(b'{"batch_size": 512, "follow": true}'))
    >>> chunk = reader.read_chunk()   # chunk.data: a RecordBatch, chunk.app_metadata: the cursor
"""

from __future__ import annotations

import hmac
import json
from typing import Iterator, Sequence

import pyarrow as pa
import ray
from loguru import logger
from pyarrow import flight

from harvest.rollout.batch import BatchSchema, TransitionBatch
from harvest.rollout.net import is_loopback
from harvest.rollout.replay.row_filter import RowFilter
from harvest.rollout.replay.stream import (
    OnOverrun,
    ReplayReader,
    Start,
    StreamBatch,
    StreamCursor,
    StreamOverrun,
    StreamSpec,
    take_rows,
)

_OVERRUN_MARK = "[replay-overrun] "
_BAD_REQUEST = b"bad-request"
_DESCRIPTOR_PATH = [b"replay"]
_KEY_FIELD = pa.field("key", pa.int64(), nullable=False)


def stream_arrow_schema(schema: BatchSchema) -> pa.Schema:
    """The replay's Arrow schema plus the `key` column every streamed row carries."""
    return schema.arrow_schema().append(_KEY_FIELD)


class _TokenCheck(flight.ServerMiddlewareFactory):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict) -> None:
        sent = headers.get("authorization", [])
        if not any(
            hmac.compare_digest(value.encode() if isinstance(value, str) else value, self._expected) for value in sent
        ):
            raise flight.FlightUnauthenticatedError(
                "replay Flight server: missing or wrong token; send the header 'authorization: Bearer <token>'"
            )
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bad_request(message: str) -> flight.FlightServerError:
    """The reply to a request the server refuses (pyarrow sends any other exception's traceback)."""
    return flight.FlightServerError(_one_line(f"replay Flight server: {message}"), extra_info=_BAD_REQUEST)


class ReplayFlightServer(flight.FlightServerBase):
    """Serves the replay's stream to Flight clients; starts listening when constructed.

    Args:
        replay: the run's `Replay` handle.
        host: the interface to bind (default loopback only).
        port: 0 picks a free port (see `location`).
        token: required from every client when set; mandatory for a non-loopback `host`.
    """

    def __init__(self, replay, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        if not token and not is_loopback(host):
            raise ValueError(
                f"replay Flight server: host {host!r} is reachable from other machines; "
                "set a token (replay.flight.token_env) or bind 127.0.0.1"
            )
        super().__init__(f"grpc://{host}:{port}", middleware={"token": _TokenCheck(token)} if token else None)
        self.replay, self.host = replay, host
        self._schema = stream_arrow_schema(replay.schema)
        self._log = logger.bind(actor="ReplayFlightServer")

    @property
    def location(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc://{host}:{self.port}"

    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        # Every stream has this schema, so any descriptor gets it: pyarrow's _get_schema callback
        # (pyarrow/_flight.pyx) sends whatever get_schema raises with its traceback, FlightError too.
        return flight.SchemaResult(self._schema)

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        if descriptor.descriptor_type != flight.DescriptorType.PATH or descriptor.path != _DESCRIPTOR_PATH:
            asked = (
                f"path {[part.decode(errors='replace') for part in descriptor.path]}"
                if descriptor.descriptor_type == flight.DescriptorType.PATH
                else f"command {descriptor.command[:200]!r}"
            )
            raise _bad_request(
                f"no flight at {asked}; the one flight here is path ['replay'] "
                "(do_get takes a ticket with the stream's filters)"
            )
        endpoint = flight.FlightEndpoint(json.dumps(StreamSpec().to_json()).encode(), [self.location])
        return flight.FlightInfo(self._schema, descriptor, [endpoint], -1, -1)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.GeneratorStream:
        try:
            request = json.loads(ticket.ticket)
            if not isinstance(request, dict):
                raise ValueError(f"expected a JSON object, got {type(request).__name__}")
            spec = StreamSpec.from_json(request)
            reader = ReplayReader(self.replay.shards, self.replay.schema, spec)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _bad_request(f"bad ticket {ticket.ticket[:200]!r}: {err}") from err
        self._log.info("stream {!r} for {}: {}", spec.name, context.peer(), spec.to_json())
        return flight.GeneratorStream(self._schema, self._batches(reader))

    def _batches(self, reader: ReplayReader) -> Iterator[tuple[pa.RecordBatch, bytes]]:
        schema = self.replay.schema
        try:
            for item in reader:
                key = item.batch.columns.pop("key")
                record = item.batch.to_arrow(schema).append_column(_KEY_FIELD, pa.array(key, pa.int64()))
                metadata = {
                    "cursor": item.cursor.to_json(),
                    "skipped_rows": item.skipped_rows,
                    "lag_rows": item.lag_rows,
                }
                yield record, json.dumps(metadata).encode()
        except StreamOverrun as err:
            raise flight.FlightServerError(_one_line(_OVERRUN_MARK + str(err))) from err
        except ValueError as err:  # the request does not fit this replay, e.g. a cursor for other shards
            raise _bad_request(str(err)) from err
        except Exception as err:  # noqa: BLE001 - the client gets one line, the log the traceback
            self._log.opt(exception=err).error("stream {!r} failed", reader.spec.name)
            raise flight.FlightInternalError(
                f"replay Flight server: stream {reader.spec.name!r} failed ({type(err).__name__}); "
                "the server's log has the details"
            ) from err

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        yield self.get_flight_info(context, flight.FlightDescriptor.for_path(*_DESCRIPTOR_PATH))

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        raise self._read_only("do_put")

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise self._read_only("do_exchange")

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> None:
        raise self._read_only(f"do_action {action.type!r}")

    def list_actions(self, context: flight.ServerCallContext) -> list[flight.ActionType]:
        return []

    @staticmethod
    def _read_only(call: str) -> flight.FlightServerError:
        return _bad_request(
            f"{call} is not served; the replay is read-only here (do_get, get_flight_info, get_schema, list_flights)"
        )


class FlightService:
    """A Ray actor hosting a `ReplayFlightServer` for as long as the actor lives."""

    def __init__(self, replay, host: str, port: int, token: str | None) -> None:
        self.server = ReplayFlightServer(replay, host, port, token)

    def location(self) -> str:
        return self.server.location

    def shutdown(self) -> None:
        self.server.shutdown()


def start_flight_service(
    replay, host: str = "127.0.0.1", port: int = 0, token: str | None = None, timeout_s: float = 60.0
) -> tuple[ray.actor.ActorHandle, str]:
    """Start the Flight server actor next to the replay; returns it and its location."""
    actor = ray.remote(FlightService).options(num_cpus=0).remote(replay, host, port, token)
    location = ray.get(actor.location.remote(), timeout=timeout_s)
    logger.info("replay stream served over Arrow Flight at {}{}", location, " (token required)" if token else "")
    return actor, location


def _client_error(err: flight.FlightServerError) -> Exception:
    """What `ReplayClient` raises for the server's error reply: StreamOverrun, ValueError or the reply."""
    message = str(err).split(". Detail:")[0]
    if _OVERRUN_MARK in message:
        return StreamOverrun(message.split(_OVERRUN_MARK, 1)[1])
    return ValueError(message) if err.extra_info == _BAD_REQUEST else err


class ReplayClient:
    """Follow a replay served by `ReplayFlightServer` from any process.

    Example:
        >>> client = ReplayClient("grpc://127.0.0.1:8815", token=os.environ.get("HARVEST_FLIGHT_TOKEN"))
        >>> for item in client.stream(batch_size=512, follow=True, player_ids=[0]):
        ...     train_on(item.batch)     # a TransitionBatch with the replay's columns plus `key`
    """

    def __init__(self, location: str, token: str | None = None) -> None:
        self.location = location
        self._client = flight.FlightClient(location)
        self._options = flight.FlightCallOptions(
            headers=[(b"authorization", f"Bearer {token}".encode())] if token else []
        )

    def schema(self) -> BatchSchema:
        """The replay's batch schema (the streamed rows also carry `key`)."""
        result = self._client.get_schema(flight.FlightDescriptor.for_path("replay"), self._options)
        return BatchSchema.from_arrow_schema(result.schema)

    def stream(
        self,
        *,
        game_ids: Sequence[int] | None = None,
        player_ids: Sequence[int] | None = None,
        collector_ids: Sequence[int] | None = None,
        batch_size: int = 1024,
        follow: bool = False,
        start: Start | StreamCursor = "earliest",
        on_overrun: OnOverrun = "raise",
        poll_s: float = 0.25,
        name: str = "flight-client",
    ) -> Iterator[StreamBatch]:
        """The same stream as `stream_experiences` (see it for the arguments).

        Raises:
            StreamOverrun: the ring overwrote rows this consumer had not read (with "raise").
            ValueError: the server refused the request (e.g. a filter on a column the rows lack).
            pyarrow.flight.FlightUnauthenticatedError: the server wants a (different) token.
        """
        spec = StreamSpec(
            RowFilter.of(game_id=game_ids, player_id=player_ids, collector_id=collector_ids),
            batch_size,
            follow,
            start,
            on_overrun,
            poll_s,
            name,
        )
        try:
            reader = self._client.do_get(flight.Ticket(json.dumps(spec.to_json()).encode()), self._options)
        except flight.FlightServerError as err:
            raise _client_error(err) from err
        try:
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    return
                except flight.FlightServerError as err:
                    raise _client_error(err) from err
                metadata = json.loads(chunk.app_metadata.to_pybytes())
                yield StreamBatch(
                    TransitionBatch.from_arrow(chunk.data),
                    StreamCursor.from_json(metadata["cursor"]),
                    metadata["skipped_rows"],
                    metadata["lag_rows"],
                )
        finally:
            reader.cancel()

    def take(self, num_rows: int, **stream_args) -> Iterator[StreamBatch]:
        """`stream(...)` until `num_rows` rows were received (the last batch cut to fit)."""
        return take_rows(self.stream(**stream_args), num_rows)

    def close(self) -> None:
        self._client.close()
