"""Object storage: S3 (services mode) or a local directory, behind one small interface.

Keys: raw frames under ``raw/<night>/<name>`` (static calibrations under ``static/<name>``,
as ``musedrp submit`` puts them), products under the work order's
``products/<night>/<stage>/<setup>/<job_key>/``.  Every object carries the SHA-256 of
its content in its metadata and downloads are checked against it.  Header-only reads go
through :class:`RangeReader`, which fetches byte ranges, never the whole 860 MB frame.
"""

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from musedrp.errors import ConfigError, DataError, Transient
from musedrp.provenance import MANIFEST, file_sha256

SHA_META = "sha256"
HEADER_BUFFER = 64 * 1024  # one ranged GET per extension header, typically


def raw_key(night: str, name: str) -> str:
    return f"raw/{night or 'unknown'}/{name}"


class ObjectStore(Protocol):
    def check(self) -> None: ...
    def put_file(self, path: Path, key: str) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def put_json(self, content: dict[str, Any], key: str) -> None: ...
    def get_json(self, key: str) -> dict[str, Any] | None: ...
    def open_range(self, key: str) -> tuple["RangeReader", int]: ...
    def keys(self, prefix: str) -> list[str]: ...


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
        store.put_file(p, f"{prefix}/{p.name}")
        keys[p.name] = f"{prefix}/{p.name}"
    if (directory / MANIFEST).exists():
        store.put_file(directory / MANIFEST, f"{prefix}/{MANIFEST}")
    return keys


class LocalStore:
    """A directory as an object store: the embedded mode, and tests without a server."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DataError(f"object key {key!r} leaves the store")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"store directory {self.root} is not writable: {err}") from err

    def put_file(self, path: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.exists():
            raise DataError(f"no object {key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def put_json(self, content: dict[str, Any], key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(content, indent=1, default=str) + "\n")

    def get_json(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def open_range(self, key: str) -> tuple[RangeReader, int]:
        path = self._path(key)
        if not path.exists():
            raise DataError(f"no object {key}")
        size = path.stat().st_size

        def fetch(first: int, last: int) -> bytes:
            with path.open("rb") as f:
                f.seek(first)
                return f.read(last - first + 1)

        return RangeReader(fetch, size), size

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root.resolve())) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".part"))


class S3Store:
    """An S3 bucket through boto3 (multipart above 8 MB, retries within ``attempts``)."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", timeout_s: float = 30.0, attempts: int = 3) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.endpoint = bucket, endpoint
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                          retries={"max_attempts": attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}))

    @classmethod
    def from_settings(cls, s) -> "S3Store":
        return cls(s.s3_endpoint, s.s3_bucket, s.s3_access_key, s.s3_secret_key.get_secret_value(),
                   s.s3_region, s.s3_timeout_s, s.s3_attempts)

    def _call(self, what: str, fn, *args, **kwargs):
        """One S3 call with its errors mapped: unreachable or 5xx -> Transient."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise DataError(f"{what}: no such object in s3://{self.bucket}") from err
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                        "SignatureDoesNotMatch", "403"):
                raise ConfigError(f"{what}: {code} for s3://{self.bucket} at {self.endpoint}"
                                  ) from err
            if status >= 500 or code in ("SlowDown", "RequestTimeout"):
                raise Transient(f"{what}: S3 {code or status}") from err
            raise DataError(f"{what}: S3 {code or status}: {err}") from err
        except BotoCoreError as err:
            raise Transient(f"{what}: S3 at {self.endpoint} unreachable: {err}") from err

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
        except Transient as err:
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
        meta = {SHA_META: file_sha256(path)}
        self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket, key,
                   ExtraArgs={"Metadata": meta})

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        self._call(f"download {key}", self.client.download_file, self.bucket, key, str(dest))
        expected = head.get("Metadata", {}).get(SHA_META)
        if expected and file_sha256(dest) != expected:
            raise Transient(f"download {key}: SHA-256 differs from the stored one")

    def put_json(self, content: dict[str, Any], key: str) -> None:
        body = (json.dumps(content, indent=1, default=str) + "\n").encode()
        self._call(f"upload {key}", self.client.put_object, Bucket=self.bucket, Key=key,
                   Body=body, ContentType="application/json",
                   Metadata={SHA_META: hashlib.sha256(body).hexdigest()})

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            obj = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        except DataError:
            return None
        return json.loads(obj["Body"].read())

    def open_range(self, key: str) -> tuple[RangeReader, int]:
        head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)

        def fetch(first: int, last: int) -> bytes:
            obj = self._call(f"read {key}", self.client.get_object, Bucket=self.bucket, Key=key,
                             Range=f"bytes={first}-{last}")
            return obj["Body"].read()

        return RangeReader(fetch, head["ContentLength"]), head["ContentLength"]

    def keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"list {prefix}", lambda: list(
            paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def open_store(settings) -> ObjectStore:
    """``s3_endpoint`` ``file:///path`` gives a local directory, anything else S3."""
    if settings.s3_endpoint.startswith("file://"):
        return LocalStore(Path(settings.s3_endpoint.removeprefix("file://")))
    return S3Store.from_settings(settings)
