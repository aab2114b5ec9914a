"""Object storage: S3 (services mode) or a local directory, behind one small interface.

Keys: raw frames under ``raw/<night>/<name>`` (static calibrations under
``static/<sha256[:16]>/<name>``, as ``musedrp submit`` puts them), products under the work
order's ``products/<night>/<stage>/<setup>/<job_key>/``.  Every object carries the SHA-256 of
its content in its metadata and downloads are checked against it.  Header-only reads go
through :class:`RangeReader`, which fetches byte ranges, never the whole 860 MB frame.
"""

import hashlib
import io
import json
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from musedrp.errors import ConfigError, DataError, MusedrpError, NotFound, Transient
from musedrp.localcache import SHA256, LocalCache, link_or_copy
from musedrp.provenance import MANIFEST, file_sha256

SHA_META = "sha256"
HEADER_BUFFER = 64 * 1024  # one ranged GET per extension header, typically
CONTROL = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1 control characters, as a regex class body


def object_key(*parts: str) -> str:
    """``parts`` joined with ``/``: every object key is built here, from message content too.

    Raises
    ------
    ValueError
        A part that is empty, ``.`` or ``..``, or holds a ``/``, a backslash or a control
        character: not one path component, so the key could leave its prefix.
    """
    for part in parts:
        if part in ("", ".", "..") or re.search(rf"[/\\{CONTROL}]", part):
            raise ValueError(f"{part!r} is not a single path component of an object key")
    return "/".join(parts)


def check_key(key: str) -> str:
    """A whole key (from a message, a setting) checked as ``object_key`` checks its parts;
    ValueError if one is not a single path component (absolute, ``..``, ``//``)."""
    return object_key(*key.split("/"))


def under(root: Path, path: Path) -> Path:
    """``path``, if it resolves inside ``root``: defence in depth behind the checked keys and
    identifiers, against a symbolic link or a bug.

    Raises
    ------
    DataError
        ``path`` resolves outside ``root``.
    """
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{path} resolves outside {root}")
    return path


def raw_key(night: str, name: str) -> str:
    return object_key("raw", night or "unknown", name)


def static_key(name: str, sha256: str) -> str:
    """Content-addressed, so a new kit with the same file names never overwrites the old one;
    the name stays, as SOFs and the planner use it."""
    return object_key("static", sha256[:16], name)


class ObjectStore(Protocol):
    cache: LocalCache | None  # what get_file links instead of downloading

    def check(self) -> None: ...
    def put_file(self, path: Path, key: str) -> None: ...
    def get_file(self, key: str, dest: Path) -> int: ...
    def put_json(self, content: dict[str, Any], key: str) -> None: ...
    def get_json(self, key: str) -> dict[str, Any] | None: ...
    def open_range(self, key: str) -> tuple["RangeReader", int]: ...
    def keys(self, prefix: str) -> list[str]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


class RangeReader(io.RawIOBase):
    """A seekable read-only file over ranged GETs; ``bytes_read`` and ``requests`` count
    what was fetched and in how many GETs."""

    def __init__(self, fetch, size: int) -> None:
        self._fetch, self.size, self._pos, self.bytes_read = fetch, size, 0, 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        data = self._fetch(self._pos, self._pos + n - 1)
        self.requests += 1
        buffer[: len(data)] = data
        self._pos += len(data)
        self.bytes_read += len(data)
        return len(data)


def upload_dir(store: ObjectStore, directory: Path, prefix: str) -> dict[str, str]:
    """Upload every file of a job directory, ``manifest.json`` last (the commit point)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    keys = {}
    for p in files:
        keys[p.name] = object_key(*prefix.split("/"), p.name)
        store.put_file(p, keys[p.name])
    if (directory / MANIFEST).exists():
        store.put_file(directory / MANIFEST, object_key(*prefix.split("/"), MANIFEST))
    return keys


class LocalStore:
    """A directory as an object store: the embedded mode, ``serve`` on one machine (its
    processes share it) and tests without a server."""

    cache = None  # reads are local already

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        try:
            check_key(key)
        except ValueError as err:
            raise DataError(f"object key {key!r} leaves the store: {err}") from err
        return under(self.root, self.root / key).resolve()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{uuid.uuid4().hex[:12]}"  # processes share it
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"store directory {self.root} is not writable: {err}") from err

    def _write(self, key: str, fill: Callable[[Path], object]) -> None:
        """``fill`` a temporary file of this call's own, then rename it to the object: a
        reader sees the old object or the whole new one, and two processes writing one key
        (a redelivered job beside the first) do not mix their bytes."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            fill(tmp)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, path: Path, key: str) -> None:
        self._write(key, lambda tmp: shutil.copyfile(path, tmp))

    def get_file(self, key: str, dest: Path) -> int:
        """Put the object at ``dest``, by hard link where the file system allows it (jobs
        only read their inputs, and a new object under the key is a new file renamed into
        place, so the link keeps what it was); returns the bytes copied, 0 for a link."""
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            return 0 if link_or_copy(src, dest) else dest.stat().st_size
        except FileNotFoundError:  # removed meanwhile
            raise NotFound(f"no object {key}") from None

    def put_json(self, content: dict[str, Any], key: str) -> None:
        text = json.dumps(content, indent=1, default=str) + "\n"
        self._write(key, lambda tmp: tmp.write_text(text))

    def get_json(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def open_range(self, key: str) -> tuple[RangeReader, int]:
        path = self._path(key)
        if not path.exists():
            raise NotFound(f"no object {key}")
        size = path.stat().st_size

        def fetch(first: int, last: int) -> bytes:
            with path.open("rb") as f:
                f.seek(first)
                return f.read(last - first + 1)

        return RangeReader(fetch, size), size

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.removesuffix("/"))  # a prefix is a directory here
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root.resolve())) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".part"))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """An S3 bucket through boto3 (multipart above 8 MB, retries within ``attempts``); with a
    ``cache``, files are kept on local disk by content and not downloaded again."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", timeout_s: float = 30.0, attempts: int = 3,
                 cache: LocalCache | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.endpoint, self.cache = bucket, endpoint, cache
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                          retries={"max_attempts": attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}))

    @classmethod
    def from_settings(cls, s, cache: LocalCache | None = None) -> "S3Store":
        return cls(s.s3_endpoint, s.s3_bucket, s.s3_access_key, s.s3_secret_key.get_secret_value(),
                   s.s3_region, s.s3_timeout_s, s.s3_attempts, cache)

    def _call(self, what: str, fn, *args, **kwargs):
        """One S3 call, its failure raised as the class :func:`s3_error` gives it."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            mapped = s3_error(err, f"{what} (s3://{self.bucket} at {self.endpoint})")
            if mapped is None:
                raise
            raise mapped from err

    def check(self) -> None:
        """The bucket exists and is writable.

        Raises
        ------
        ConfigError
            No bucket, bad credentials, or no server at the endpoint.
        """
        try:
            self._call("head bucket", self.client.head_bucket, Bucket=self.bucket)
            self.put_json({"probe": True}, ".write-probe")
        except (Transient, DataError) as err:  # at start-up, whatever it is, it is a setting
            raise ConfigError(str(err)) from err

    def create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",
                                                     "BucketAlreadyExists"):
                raise

    def put_file(self, path: Path, key: str) -> None:
        sha = file_sha256(path)
        self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket, key,
                   ExtraArgs={"Metadata": {SHA_META: sha}})
        if self.cache is not None:
            self.cache.add(path, sha)

    def get_file(self, key: str, dest: Path) -> int:
        """Download the object to ``dest``, checked against its SHA-256, or link it from the
        cache; returns the bytes downloaded (0 from the cache).

        Raises
        ------
        DataError
            The object's metadata names no valid SHA-256, or the download does not match it.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        expected = head.get("Metadata", {}).get(SHA_META)
        if expected is not None and not SHA256.fullmatch(expected):
            raise DataError(f"download {key}: its SHA-256 metadata {expected[:80]!r} is not one")
        if self.cache is not None and expected and self.cache.get(expected, dest):
            return 0
        self._call(f"download {key}", self.client.download_file, self.bucket, key, str(dest))
        if expected and file_sha256(dest) != expected:
            raise DataError(f"download {key}: SHA-256 differs from the stored one")
        if self.cache is not None and expected:
            self.cache.add(dest, expected)
        return dest.stat().st_size

    def put_json(self, content: dict[str, Any], key: str) -> None:
        body = (json.dumps(content, indent=1, default=str) + "\n").encode()
        self._call(f"upload {key}", self.client.put_object, Bucket=self.bucket, Key=key,
                   Body=body, ContentType="application/json",
                   Metadata={SHA_META: hashlib.sha256(body).hexdigest()})

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._call(f"get {key}", lambda: self.client.get_object(
                Bucket=self.bucket, Key=key)["Body"].read())
        except NotFound:
            return None
        return json.loads(body)

    def open_range(self, key: str) -> tuple[RangeReader, int]:
        head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)

        def fetch(first: int, last: int) -> bytes:
            return self._call(f"read {key}", lambda: self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}")["Body"].read())

        return RangeReader(fetch, head["ContentLength"]), head["ContentLength"]

    def keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"list {prefix}", lambda: list(
            paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def exists(self, key: str) -> bool:
        try:
            self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=key)


# S3 error codes by class; the HTTP status decides the others (5xx and 429 transient, 403
# configuration, any other 4xx a DataError)
TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                             "Throttling", "ThrottlingException", "TooManyRequests",
                             "RequestLimitExceeded"})
CONFIG_CODES = frozenset({"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                          "SignatureDoesNotMatch", "AuthorizationHeaderMalformed",
                          "RequestTimeTooSkewed", "ExpiredToken", "InvalidToken"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})  # a HEAD's error has no body


def s3_error(err: Exception, what: str) -> MusedrpError | None:
    """The class of an S3 failure, or None if ``err`` is none (a full scratch disk, a bug).

    ``Transient``: 5xx, throttling, connection errors, timeouts, broken bodies.  ``NotFound``
    (a ``DataError``): no such key.  ``DataError``: any other 4xx, a bad checksum.
    ``ConfigError``: 403 (credentials, signature, clock), no such bucket, no credentials.
    boto3's transfer manager wraps the cause: a ClientError into ``S3UploadFailedError`` (as
    its context), a body that broke on every attempt into ``RetriesExceededError``
    (``last_exception``); the cause decides.
    """
    from boto3.exceptions import Boto3Error
    from botocore import exceptions as bce
    from s3transfer import exceptions as s3t

    wrappers = (Boto3Error, s3t.RetriesExceededError, s3t.S3UploadFailedError,
                s3t.S3DownloadFailedError)
    while isinstance(err, wrappers) and (
            inner := getattr(err, "last_exception", None) or err.__cause__ or err.__context__):
        err = inner
    if isinstance(err, bce.ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in CONFIG_CODES or status == 403:
            return ConfigError(f"{what}: S3 {code or status}: check the bucket and credentials")
        if code in MISSING_CODES:
            return NotFound(f"{what}: S3 {code}: no such object")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return Transient(f"{what}: S3 {code or status}")
        return DataError(f"{what}: S3 {code or status}: {err}")
    if isinstance(err, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError
                  | ConnectionError | TimeoutError):
        return Transient(f"{what}: unreachable: {err!r}")
    if isinstance(err, bce.NoCredentialsError | bce.PartialCredentialsError):
        return ConfigError(f"{what}: {err}")
    if isinstance(err, (bce.BotoCoreError, *wrappers)):  # e.g. a checksum that does not match
        return DataError(f"{what}: {err}")
    return None


def _directory(settings) -> str | None:
    """The directory an ``s3_endpoint`` of ``file:///path`` names; None for S3."""
    endpoint = settings.s3_endpoint
    return endpoint.removeprefix("file://") if endpoint.startswith("file://") else None


def where(settings) -> str:
    """Where ``open_store`` keeps the objects, as people read it."""
    if (directory := _directory(settings)) is not None:
        return f"directory {directory}"
    return f"bucket {settings.s3_bucket} at {settings.s3_endpoint}"


def open_store(settings, cache: LocalCache | None = None) -> ObjectStore:
    """``s3_endpoint`` ``file:///path`` gives a local directory, anything else S3 (through
    ``cache``, if given)."""
    if (directory := _directory(settings)) is not None:
        return LocalStore(Path(directory))
    return S3Store.from_settings(settings, cache)
