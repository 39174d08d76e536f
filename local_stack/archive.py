"""The telemetry archive of the cold path: a local folder or an S3-compatible bucket, cloud key layout.

The rule runner writes here and `verify` reads here. Keys follow what Kinesis Data Firehose writes
for the cloud's `batched` archive mode (GZIP, JSON lines, partitioned by arrival hour), so one reader
(`iter_records`) works on the local folder, on moto/MinIO and on the real bucket alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from factory_core.errors import UsageError
from local_stack.stack_config import endpoint_url_problem

if TYPE_CHECKING:
    from botocore.client import BaseClient as S3Client

RAW_PREFIX = "raw/"
QUARANTINE_PREFIX = "quarantine/"
DEFAULT_STREAM_NAME = "iotfactory-local-archive"
# Firehose puts the delivery stream's version in every object name; ours never changes.
STREAM_VERSION = 1
GZIP_MAGIC = b"\x1f\x8b"
GZIP_LEVEL = 1
# S3 user metadata carrying the write time with milliseconds: LastModified has whole seconds only.
WRITTEN_AT_METADATA = "written-at"

_STREAM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_REASON_PATTERN = re.compile(r"^[a-z0-9_]{1,64}$")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    written_at: dt.datetime  # UTC


@dataclass(frozen=True)
class StoredObject:
    key: str
    body: bytes
    written_at: dt.datetime  # UTC


class Archive(Protocol):
    """What the rule runner and `verify` need from a store of immutable objects."""

    @property
    def location(self) -> str:
        """Where the archive is, for people: a folder path or an s3:// URL."""
        ...

    def put_object(self, key: str, body: bytes) -> dt.datetime:
        """Store `body` durably under `key` (all or nothing) and return the write time (UTC)."""
        ...

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order; streamed, not collected."""
        ...

    def get_object(self, key: str) -> StoredObject: ...


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _TimeOrderedIds:
    """UUIDv7-layout ids (RFC 9562): a millisecond timestamp, then a counter, then randomness.

    Firehose uses random UUIDs; time-ordered ones are still UUIDs to any reader, and they make keys
    written within one second sort in write order, so listing order is archive order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def next(self, epoch_ms: int) -> uuid.UUID:
        with self._lock:
            if epoch_ms <= self._last_ms:
                epoch_ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                    epoch_ms += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = epoch_ms
            counter = self._counter
        value = (epoch_ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76  # version 7
        value |= counter << 64
        value |= 0b10 << 62  # RFC 4122 variant
        value |= secrets.randbits(62)
        return uuid.UUID(int=value)


_ids = _TimeOrderedIds()


def _partition(written_at: dt.datetime) -> str:
    return f"year={written_at:%Y}/month={written_at:%m}/day={written_at:%d}/hour={written_at:%H}/"


def _object_name(stream_name: str, written_at: dt.datetime) -> str:
    object_id = _ids.next(int(written_at.timestamp() * 1000))
    return f"{stream_name}-{STREAM_VERSION}-{written_at:%Y-%m-%d-%H-%M-%S}-{object_id}.gz"


def validate_stream_name(stream_name: str) -> str:
    if not _STREAM_NAME_PATTERN.match(stream_name):
        raise UsageError(
            f"stream name {stream_name!r}: use 1-64 letters, digits, '.', '_' or '-'"
            " (it becomes part of every object key)"
        )
    return stream_name


def batch_key(stream_name: str, written_at: dt.datetime) -> str:
    """`raw/year=YYYY/month=MM/day=DD/hour=HH/<stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>.gz` (UTC)."""
    written_at = written_at.astimezone(dt.UTC)
    return f"{RAW_PREFIX}{_partition(written_at)}{_object_name(stream_name, written_at)}"


def quarantine_key(reason: str, stream_name: str, written_at: dt.datetime) -> str:
    """The batch layout under `quarantine/<reason>/`, like Firehose's error output prefix."""
    if not _REASON_PATTERN.match(reason):
        raise ValueError(f"quarantine reason {reason!r} must be snake_case")
    written_at = written_at.astimezone(dt.UTC)
    return f"{QUARANTINE_PREFIX}{reason}/{_partition(written_at)}{_object_name(stream_name, written_at)}"


def direct_key(topic: str, written_at: dt.datetime) -> str:
    """The cloud's `direct` mode (the rule's S3 action): `${topic()}/${timestamp()}-${newuuid()}`."""
    epoch_ms = int(written_at.timestamp() * 1000)
    return f"{topic}/{epoch_ms}-{_ids.next(epoch_ms)}"


def encode_batch(lines: Iterable[bytes]) -> bytes:
    """GZIP of newline-terminated JSON lines, as Firehose delivers with GZIP compression on."""
    # Level 1: on telemetry JSON lines it costs ~40 % of the CPU of gzip's default level 6 for
    # objects ~30 % larger (measured: 1.8 vs 4.7 µs per ~330-byte line, 6.6 % vs 5.0 % of the raw
    # size). The rule runner compresses on the same thread that reads the broker, so CPU wins.
    return gzip.compress(b"".join(line + b"\n" for line in lines), compresslevel=GZIP_LEVEL, mtime=0)


def as_line(payload: bytes) -> bytes:
    """The payload as one JSON line.

    A raw CR or LF can appear in valid JSON only as insignificant whitespace (string contents must
    escape them), so replacing them with spaces keeps every byte that carries meaning while making
    the payload safe to frame by newlines.
    """
    if b"\n" in payload or b"\r" in payload:
        return payload.replace(b"\r", b" ").replace(b"\n", b" ")
    return payload


def iter_records(body: bytes) -> Iterator[bytes]:
    """Every record of one archive object: GZIP or plain; JSON lines or one message per object.

    Firehose without a newline delimiter concatenates records (`{...}{...}`); such a line is
    returned whole and the caller's JSON parser reports it, so a mis-configured stream shows up in
    `verify` instead of being silently half-read.
    """
    if body[:2] == GZIP_MAGIC:
        body = gzip.decompress(body)
    for line in body.split(b"\n"):
        line = line.strip()
        if line:
            yield line


def _from_timestamp_ns(value_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(value_ns / 1e9, dt.UTC)


def _check_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if (
        not key
        or key.startswith("/")
        or key.endswith("/")
        or any(p in ("", ".", "..") for p in key.split("/"))
    ):
        raise ValueError(f"object key {key!r} is not a plain relative path")
    return path


class LocalArchive:
    """A folder on disk; each object is a file written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self._known_dirs: set[Path] = set()

    @property
    def location(self) -> str:
        return str(self.root)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        # A new directory entry is durable only once its parent is synced; otherwise a crash can
        # lose a whole hour partition whose files were themselves fsynced.
        for created in reversed(missing):
            _fsync_dir(created.parent)
        self._known_dirs.add(directory)

    def put_object(self, key: str, body: bytes) -> dt.datetime:
        target = self.root.joinpath(*_check_key(key).parts)
        self._ensure_dir(target.parent)
        temp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(body)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            mtime_ns = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
        os.replace(temp, target)
        _fsync_dir(target.parent)
        return _from_timestamp_ns(mtime_ns)

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only below the deepest folder the prefix names, and in key order.
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir():
            return
        yield from self._walk(start, folder + "/" if folder else "", prefix)

    def _walk(self, directory: Path, key_prefix: str, wanted: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        # Sort as keys sort: a folder `a` contributes keys `a/...`, which sort after `a.gz` and `a-1`.
        # Names starting with "." are in-flight temp files, never objects.
        visible = [entry for entry in entries if not entry.name.startswith(".")]
        named = sorted(
            ((entry.name + "/" if entry.is_dir() else entry.name, entry) for entry in visible),
            key=lambda pair: pair[0],
        )
        for name, entry in named:
            key = key_prefix + name
            if entry.is_dir():
                if key.startswith(wanted) or wanted.startswith(key):
                    yield from self._walk(Path(entry.path), key, wanted)
            elif key.startswith(wanted):
                stat = entry.stat()
                yield ObjectInfo(key, stat.st_size, _from_timestamp_ns(stat.st_mtime_ns))

    def get_object(self, key: str) -> StoredObject:
        path = self.root.joinpath(*_check_key(key).parts)
        with path.open("rb") as handle:
            body = handle.read()
            mtime_ns = os.fstat(handle.fileno()).st_mtime_ns
        return StoredObject(key, body, _from_timestamp_ns(mtime_ns))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Archive:
    """A bucket (and optional key prefix) on AWS S3 or any S3-compatible endpoint (moto, MinIO).

    Credentials and region come from boto3's usual chain (environment, profile); `endpoint_url`
    (or boto3's own `AWS_ENDPOINT_URL_S3`) points it away from AWS. A PUT is atomic and durable
    once it returns, which is what the rule runner waits for before acknowledging.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        if endpoint_url is not None and (problem := endpoint_url_problem(endpoint_url)):
            raise UsageError(f"S3 endpoint URL (--s3-endpoint-url, IOTFACTORY_S3_ENDPOINT_URL): {problem}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._client = client or _s3_client(endpoint_url)

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def create_bucket(self) -> None:
        """Create the bucket if it is missing (local endpoints; cloud buckets belong to Pulumi)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)

    def check_bucket(self) -> None:
        """Fail early, with the fix, when the bucket is missing or unreachable."""
        with self.explained_errors():
            self._client.head_bucket(Bucket=self.bucket)

    @contextlib.contextmanager
    def explained_errors(self) -> Iterator[None]:
        """Turn boto's configuration failures into one-line `UsageError`s that say what to fix."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = self.endpoint_url or "AWS"
        try:
            yield
        except NoCredentialsError:
            raise UsageError(
                f"archive {self.location}: no AWS credentials; set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY (any values for moto) or AWS_PROFILE"
            ) from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchBucket"):
                raise UsageError(
                    f"archive bucket {self.bucket!r} does not exist at {where};"
                    " create it or pass --create-bucket"
                ) from None
            raise UsageError(
                f"archive {self.location}: access failed ({code}); check the credentials"
            ) from None
        except BotoCoreError as error:
            raise UsageError(f"archive endpoint {where}: {error}; check --s3-endpoint-url") from None

    def put_object(self, key: str, body: bytes) -> dt.datetime:
        _check_key(key)
        written_at = utc_now()
        self._client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=body,
            ContentType="application/gzip" if body[:2] == GZIP_MAGIC else "application/json",
            Metadata={WRITTEN_AT_METADATA: written_at.isoformat(timespec="milliseconds")},
        )
        return written_at

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self.explained_errors():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        item["Key"][len(self.prefix) :],
                        int(item["Size"]),
                        item["LastModified"].astimezone(dt.UTC),
                    )

    def get_object(self, key: str) -> StoredObject:
        with self.explained_errors():
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            body = response["Body"].read()
        stamped = response.get("Metadata", {}).get(WRITTEN_AT_METADATA)
        try:
            written_at = dt.datetime.fromisoformat(stamped) if stamped else None
        except ValueError:
            written_at = None
        return StoredObject(key, body, written_at or response["LastModified"].astimezone(dt.UTC))


def _s3_client(endpoint_url: str | None) -> S3Client:
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30),
    )


def open_archive(location: str, *, endpoint_url: str | None = None) -> LocalArchive | S3Archive:
    """`s3://bucket[/prefix]` → S3Archive; a path or `file://` URL → LocalArchive."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"archive {location!r}: expected s3://BUCKET[/PREFIX]")
        return S3Archive(bucket, prefix, endpoint_url=endpoint_url)
    if "://" in location and not location.startswith("file://"):
        raise UsageError(f"archive {location!r}: use a folder path, file:///path or s3://BUCKET[/PREFIX]")
    if endpoint_url:
        raise UsageError("--s3-endpoint-url applies only to an s3:// archive")
    return LocalArchive(Path(location.removeprefix("file://")))


def wait_for_objects(archive: Archive, prefix: str, count: int, timeout_s: float) -> list[ObjectInfo]:
    """Poll until at least `count` objects exist under `prefix` (tests and `up`'s first-message wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(archive.list_objects(prefix))
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
