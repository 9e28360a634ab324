"""Where datasets live: a local folder or an object-store prefix, through `pyarrow.fs`.

`location("artifacts/run/dataset")`, `location("s3://bucket/harvest/run")` and
`location("file:///data/x")` all give a `Location`: a pyarrow `FileSystem` and a path on it.
Every dataset writer and reader goes through one, so each works on S3-compatible storage as
well as on disk. S3 credentials come from the usual AWS environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for
MinIO, moto or another S3-compatible server) or pyarrow's default chain (profiles, instance
roles). Keys are never part of a location's printed form.

Writes are all-or-nothing: a local file is written under a temporary name in its folder and
renamed when complete; an object is uploaded in one request (S3 shows an object only once its
upload has finished). A reader therefore never sees half a file. A whole folder of files (a
dataset) is written through `staged_folder`: locally into a temporary sibling folder that is
renamed into place at the end, so a failed write leaves no stray files behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

TMP_MARK = ".tmp-"
"""Temporary files carry this in their name until they are renamed into place."""


class StorageError(OSError):
    """A location cannot be opened, read or written; the message names it."""


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    """An `S3FileSystem` with the environment's credentials and endpoint made explicit, so that
    Ray workers started before they were set (or on other nodes) use the same ones."""
    parts = urlsplit(uri)
    options: dict = {}
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        endpoint_parts = urlsplit(endpoint)
        options.update(endpoint_override=endpoint_parts.netloc or endpoint, scheme=endpoint_parts.scheme or "https")
    return pafs.S3FileSystem(**options), f"{parts.netloc}{parts.path}".rstrip("/")


@dataclass(frozen=True)
class Location:
    """A folder (or object prefix) on a pyarrow file system."""

    fs: pafs.FileSystem
    path: str
    uri: str
    """How to name it to a person (and to `location()` again); never carries credentials."""

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self) -> Path | None:
        return Path(self.path) if self.is_local else None

    def join(self, *parts: str) -> "Location":
        relative = "/".join(part.strip("/") for part in parts if part)
        if not relative:
            return self
        return Location(self.fs, f"{self.path.rstrip('/')}/{relative}", f"{self.uri.rstrip('/')}/{relative}")

    def parent(self) -> "Location":
        path, uri = self.path.rstrip("/"), self.uri.rstrip("/")
        return Location(self.fs, path.rsplit("/", 1)[0], uri.rsplit("/", 1)[0])

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot reach it: {err}") from err

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        return int(self._info().size)

    def make_dirs(self) -> None:
        """Create the folder (a no-op on object stores, which have no folders)."""
        if self.is_local:
            self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()
        except FileNotFoundError as err:
            raise StorageError(f"{self.uri}: no such file") from err
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot read it: {err}") from err

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes | pa.Buffer) -> None:
        """All-or-nothing: a temporary name renamed into place locally, one upload remotely."""
        self.write_hashed(lambda sink: sink.write(data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_hashed(self, produce: Callable[[HashingSink], object]) -> tuple[int, str]:
        """`produce(sink)` writes the file through `sink` (all-or-nothing, as `write_bytes`),
        hashed on the way: returns its size and sha256 without a second pass or an in-memory copy.
        `sink.size` is the bytes written so far."""
        try:
            if self.is_local:
                self.parent().make_dirs()
                tmp = f"{self.path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
                try:
                    with self.fs.open_output_stream(tmp) as stream:
                        sink = HashingSink(stream)
                        produce(sink)
                    self.fs.move(tmp, self.path)
                finally:
                    if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                        self.fs.delete_file(tmp)
            else:
                with self.fs.open_output_stream(self.path) as stream:
                    sink = HashingSink(stream)
                    produce(sink)
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot write it: {err}") from err
        return sink.size, sink.digest.hexdigest()

    def upload(self, local_file: Path) -> None:
        """Copy a finished local file here (all-or-nothing, as `write_bytes`)."""
        if self.is_local and Path(self.path).resolve() == local_file.resolve():
            return
        self.write_bytes(pa.py_buffer(local_file.read_bytes()))

    def list_files(self, suffix: str = "") -> list["Location"]:
        """Files under this folder (recursively), sorted, without temporary files."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot list it: {err}") from err
        root = self.path.rstrip("/") + "/"
        names = sorted(
            info.path[len(root) :]
            for info in infos
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and TMP_MARK not in info.path
        )
        return [self.join(name) for name in names]


@contextlib.contextmanager
def staged_folder(target: Location, last: str) -> Iterator[Location]:
    """Where to write the files of a new folder `target`, all-or-nothing.

    Locally, a temporary sibling (`<target>.tmp-XXXXXXXX`) that becomes `target` when the block
    ends without an error: renamed in one step when `target` does not exist (or is empty),
    otherwise its files are moved into `target` one by one, `last` (the manifest) after all the
    others, so a reader never sees a manifest before the files it lists. When the block raises,
    the temporary folder is removed with everything in it. On an object store, which has no
    folders to rename, the block writes into `target` itself (each object appears whole; write
    `last` last) and the objects it wrote are deleted when it raises.
    """
    if not target.is_local:
        before = {found.path for found in target.list_files()}
        try:
            yield target
        except BaseException:
            with contextlib.suppress(OSError):  # a cleanup that fails must not hide the error
                if not before:  # the whole prefix is ours (and the folder markers pyarrow leaves)
                    target.fs.delete_dir(target.path)
                for written in target.list_files() if before else []:
                    if written.path not in before:
                        written.fs.delete_file(written.path)
            raise
        return
    tag = f"{TMP_MARK}{uuid.uuid4().hex[:8]}"
    staging = Location(target.fs, f"{target.path.rstrip('/')}{tag}", f"{target.uri.rstrip('/')}{tag}")
    staging.make_dirs()
    try:
        yield staging
        _move_into(Path(staging.path), Path(target.path), last)
    finally:
        shutil.rmtree(staging.path, ignore_errors=True)


def _move_into(staging: Path, target: Path, last: str) -> None:
    """Move a staged folder's files into `target` (see `staged_folder`)."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staging, target)  # the whole folder appears at once
        return
    files = sorted(
        (path for path in staging.rglob("*") if path.is_file()),
        key=lambda path: path.relative_to(staging).as_posix() == last,
    )
    for path in files:
        destination = target / path.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)


class HashingSink(io.RawIOBase):
    """A write-only file object that hashes what passes through to a pyarrow output stream."""

    def __init__(self, stream: pa.NativeFile) -> None:
        super().__init__()
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.stream.write(view)
        self.size += view.nbytes
        return view.nbytes


def location(where: str | Path | Location) -> Location:
    """The `Location` of a local path or a URI (`s3://`, `file://`, anything `pyarrow.fs` opens)."""
    if isinstance(where, Location):
        return where
    text = str(where)
    scheme = urlsplit(text).scheme
    if isinstance(where, Path) or not scheme or len(scheme) == 1:  # a path (or a Windows drive letter)
        path = Path(text).expanduser().absolute().as_posix()
        return Location(pafs.LocalFileSystem(), path, path)
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise StorageError(
            f"{parts.scheme}://{parts.hostname}{parts.path}: credentials in the URI are refused; "
            "use the AWS environment variables"
        )
    try:
        if scheme == "s3":
            fs, path = _s3(text)
        else:
            fs, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as err:
        raise StorageError(f"{text}: pyarrow.fs cannot open it: {err}") from err
    return Location(fs, path, text.rstrip("/"))
