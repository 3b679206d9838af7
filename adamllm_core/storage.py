"""Object storage through fsspec: local paths and any fsspec URI, s3:// first-class."""

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from adamllm_core.settings import storage_settings

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def storage_options(uri: str) -> dict[str, Any]:
    if protocol_of(uri) in ("s3", "s3a"):
        # Listings change under us while stages write: never trust s3fs's listing cache.
        return {**storage_settings().s3_storage_options(), "use_listings_cache": False}
    return {}


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem for a URI and the path inside it."""
    return fsspec.core.url_to_fs(uri, **storage_options(uri))


def normalise_uri(uri: str) -> str:
    """Absolute local paths, and no trailing slash, so URIs compare and join cleanly."""
    uri = uri.rstrip("/") or "/"
    if protocol_of(uri) == "file":
        uri = uri.removeprefix("file://")
        return os.path.abspath(os.path.expanduser(uri))
    return uri


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def redact(uri: str) -> str:
    """Drop credentials embedded in a URI (s3://KEY:SECRET@bucket/...)."""
    return _USERINFO.sub(r"\1", uri)


def unique_suffix() -> str:
    return uuid.uuid4().hex[:12]


STAGING_SUFFIX = ".staging"


def staging_name(name: str) -> str:
    """Where a local file is written before its rename: hidden, and ending in neither its
    own suffix nor `.parquet`, so that no reader's glob (polars and duckdb match hidden
    files) picks up one that a killed writer left half written."""
    return f".{name}.{unique_suffix()}{STAGING_SUFFIX}"


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the whole object or nothing.

    An S3 PUT is atomic on its own; a local file is written beside its target and renamed.
    """
    if protocol_of(fs.unstrip_protocol(path)) == "file":
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, staging_name(os.path.basename(path)))
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def put_file_atomic(fs: AbstractFileSystem, local_file: str, path: str) -> None:
    """Publish a finished local file at `path`: readers see the whole object or nothing
    (a local rename; an object store uploads in parts and shows the object at the end)."""
    if protocol_of(fs.unstrip_protocol(path)) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), staging_name(os.path.basename(path)))
        shutil.copyfile(local_file, tmp)
        os.replace(tmp, path)
    else:
        fs.put_file(local_file, path)


def move(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Rename on local disk (atomic); copy then delete on object stores (each object atomic)."""
    if protocol_of(fs.unstrip_protocol(src)) == "file":
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    else:
        fs.copy(src, dst)
        fs.rm(src)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_json_object(uri: str) -> dict[str, Any] | None:
    """The JSON object in the file at `uri`; None when the file is absent or holds none."""
    try:
        value = json.loads(read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def listing_fingerprint(
    root: str, *extra: bytes, listing: dict[str, dict[str, Any]] | None = None
) -> str:
    """Hash of a folder's file names, sizes and modification stamps (no file is read).
    `listing`: the folder's `find(detail=True)` when the caller has listed it already
    (a listing of millions of objects is done once)."""
    fs, path = filesystem(root)
    digest = hashlib.sha256()
    for chunk in extra:
        digest.update(chunk)
    if listing is None and protocol_of(root) == "file" and os.path.isdir(path):
        lines = sorted(_local_listing_lines(path.rstrip("/")))  # "\0" sorts first: name order
    else:
        if listing is None:
            listing = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
        lines = [_listing_line(name[len(path) :], listing[name]) for name in sorted(listing)]
    for line in lines:
        digest.update(line.encode())
    return digest.hexdigest()[:32]


def content_version(info: dict[str, Any]) -> str | None:
    """What changes whenever a file's content does, from `fs.info`: the ETag on object
    storage (LastModified has whole seconds), else inode, mtime and ctime (a rewrite that
    keeps size and mtime, or puts them back, still moves ctime). None for a file without
    an ETag changed in the last 2 s: timestamps advance in ticks (on some kernels
    milliseconds, on some filesystems seconds), so a second rewrite within one tick would
    keep the same version; such a file is not to be cached (as git treats racy entries)."""
    etag = info.get("ETag") or info.get("etag")  # GCS and Azure spell it in lower case
    if etag:
        return f"etag:{etag}"
    stamps = [info.get(key) for key in ("mtime", "created")]
    if any(isinstance(t, int | float) and time.time() - t < 2.0 for t in stamps):
        return None
    return ":".join(str(info.get(key)) for key in ("ino", "mtime", "created", "LastModified"))


def _listing_line(name: str, info: dict[str, Any]) -> str:
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{name}\0{info.get('size')}\0{stamp}\n"


def _local_listing_lines(root: str) -> Iterator[str]:
    """The lines `fs.find(root, detail=True)` would give, from os.scandir: one short string
    per file instead of a dict of eleven fields (a folder of 1.5M images is listed in a
    fraction of the memory)."""
    folders = [root]
    seen = {(os.stat(root).st_dev, os.stat(root).st_ino)}  # a symlink loop is walked once
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stat = entry.stat()
                    if (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        folders.append(entry.path)
                    continue
                stat = entry.stat()
                line = {"size": stat.st_size, "mtime": stat.st_mtime, "created": stat.st_ctime}
                yield _listing_line(entry.path[len(root) :], line)
