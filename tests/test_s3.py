"""Object storage through a real S3 API (moto's server on 127.0.0.1)."""

import http.client
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Self

import duckdb
import polars as pl
import pytest
import s3fs

from adamllm_core.dataset import Dataset, DatasetNotFinishedError, DatasetWriter, read_manifest
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.settings import storage_settings

pytestmark = pytest.mark.integration


def test_ingest_to_s3_and_read_back_with_polars_and_duckdb(
    broken_corpus, s3_bucket: str, s3_server
) -> None:
    source, expected = broken_corpus
    uri = f"{s3_bucket}/biomed/pairs"
    manifest = ingest(str(source), uri, IngestConfig(domain="test", rows_per_shard=10))
    assert manifest.rows == expected["valid"]

    options = storage_settings().polars_storage_options()
    frame = pl.scan_parquet(uri + "/*.parquet", storage_options=options).collect()
    assert len(frame) == expected["valid"] and frame["id"].n_unique() == len(frame)
    quarantine = pl.scan_parquet(
        uri + "/_quarantine/*/*.parquet", storage_options=options
    ).collect()
    assert len(quarantine) == sum(expected["reasons"].values())

    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    connection = duckdb.connect()
    connection.register_filesystem(fs)
    count = connection.sql(f"select count(*) from read_parquet('{uri}/*.parquet')").fetchall()
    assert count == [(expected["valid"],)]

    # nothing of the work area is left, and no credential is written anywhere
    keys = fs.find(uri.removeprefix("s3://"))
    assert not [k for k in keys if "/_work/" in k]
    documents = [k for k in keys if k.endswith(".json")]
    # the dataset's manifest and its quarantine's: the JSON a credential could leak into
    assert sum(k.endswith("/manifest.json") for k in documents) == 2, documents
    for key in documents:
        text = fs.cat_file(key).decode()
        assert s3_server["AWS_SECRET_ACCESS_KEY"] not in text
        assert s3_server["AWS_ACCESS_KEY_ID"] not in text
    assert Dataset(uri).to_table().num_rows == expected["valid"]
    Dataset(uri).verify()


def test_s3_source_and_unfinished_dataset(
    s3_bucket: str, s3_server, world_sources: tuple[Path, dict], tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    root, expected = world_sources
    bundle = root / "pairs"
    fs.put(str(bundle / "data.jsonl"), f"{s3_bucket}/raw/food/data.jsonl")
    fs.put(str(bundle / "images") + "/", f"{s3_bucket}/raw/food/images/", recursive=True)
    manifest = ingest(
        f"{s3_bucket}/raw/food", f"{s3_bucket}/food/pairs", IngestConfig(domain="food")
    )
    assert manifest.rows + manifest.quarantine.rows == expected["pairs_in"]
    assert manifest.quarantine.reasons == expected["quarantined"]
    ingest(str(bundle), str(tmp_path / "local"), IngestConfig(domain="food"))
    content = ["id", "image", "image_sha256", "caption"]  # not where each came from
    from_s3 = Dataset(f"{s3_bucket}/food/pairs").to_table(content)
    assert from_s3.equals(Dataset(str(tmp_path / "local")).to_table(content))
    assert (
        json.loads(read_manifest(f"{s3_bucket}/food/pairs").to_json())["parents"][0]["uri"]
        == f"{s3_bucket}/raw/food"
    )

    writer = DatasetWriter(
        f"{s3_bucket}/half",
        schema=Dataset(f"{s3_bucket}/food/pairs").schema,
        stage="t",
        parents=[],
        config={},
        config_hash="c",
    )
    writer.prepare()
    with pytest.raises(DatasetNotFinishedError, match="unfinished"):
        read_manifest(f"{s3_bucket}/half")


def test_credentials_come_from_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        "aws_endpoint_url: http://127.0.0.1:9\naws_secret_access_key: s3cr3t\n"
    )
    monkeypatch.setenv("ADAMLLM_SETTINGS_FILE", str(settings_file))
    settings = storage_settings()
    assert settings.s3_storage_options()["secret"] == "s3cr3t"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in settings.model_dump_json()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:10")
    assert storage_settings().aws_endpoint_url == "http://127.0.0.1:10"  # the environment wins


def bucket_source(s3_server: dict[str, str], uri: str, images: int, empty: bool = False) -> None:
    """An annotation file and `images` PNGs (img/N.png) under `uri`; `empty`: also a
    zero-byte img/empty.png."""
    from corpus import encode, gradient

    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    lines = []
    for i in range(images):
        fs.pipe_file(f"{uri}/img/{i}.png", encode(gradient().rotate(i * 15), "PNG"))
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": f"caption {i}"}))
    if empty:
        fs.pipe_file(f"{uri}/img/empty.png", b"")
        lines.append(json.dumps({"image": "img/empty.png", "caption": "an empty file"}))
    fs.pipe_file(f"{uri}/data.jsonl", ("\n".join(lines) + "\n").encode())


class SlowDownProxyServer(http.server.ThreadingHTTPServer):
    """Loopback proxy to moto (`target`) that answers image reads with 503 SlowDown,
    `failures` times per image (None: always), and forwards everything else.

    It listens on a port the kernel picks as it binds (port 0, read back from
    `server_address`: nothing can take it between a probe and the bind). What it counts is
    its own, not its handler class's: each test's proxy starts from nothing."""

    def __init__(self, target: str, failures: int | None = 0, image_delay_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), SlowDownProxy)
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.failures = failures
        self.injected: dict[str, int] = {}
        # every request (method, path with query), and image reads at once (most seen), each
        # image read held `image_delay_s` so that reads from several processes overlap
        self.requests: list[tuple[str, str]] = []
        self.image_delay_s = image_delay_s
        self.reading = [0, 0]  # now, most
        self.lock = threading.Lock()  # handlers run on threads of their own

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *args: object) -> None:
        self.shutdown()
        self.server_close()


class SlowDownProxy(http.server.BaseHTTPRequestHandler):
    """The proxy's handler: its state is the server's (`SlowDownProxyServer`)."""

    protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` before a PUT's body
    server: SlowDownProxyServer

    def _forward(self) -> None:
        proxy = self.server
        path = self.path.split("?")[0]
        with proxy.lock:
            proxy.requests.append((self.command, self.path))
        if self.command == "GET" and path.endswith(".png") and proxy.image_delay_s:
            with proxy.lock:
                proxy.reading[0] += 1
                proxy.reading[1] = max(proxy.reading)
            time.sleep(proxy.image_delay_s)
            with proxy.lock:
                proxy.reading[0] -= 1
        if self.command == "GET" and path.endswith(".png"):
            with proxy.lock:
                done = proxy.injected.get(path, 0)
                fail = proxy.failures is None or done < proxy.failures
                if fail:
                    proxy.injected[path] = done + 1
            if fail:
                body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else None
        connection = http.client.HTTPConnection(*proxy.target, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        connection.request(self.command, self.path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            # a HEAD's Content-Length is the object's size: kept as moto sent it
            if key.lower() not in ("transfer-encoding", "connection") and (
                key.lower() != "content-length" or self.command == "HEAD"
            ):
                self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        connection.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_s3_slowdowns_are_retried_or_fail_the_run_never_a_quarantine_row(
    s3_bucket: str, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket_source(s3_server, f"{s3_bucket}/raw", 4)
    config = IngestConfig(domain="test")
    with SlowDownProxyServer(s3_server["AWS_ENDPOINT_URL"], failures=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        # two 503s per image: the client retries them, every row is ingested
        manifest = ingest(f"{s3_bucket}/raw", f"{s3_bucket}/retried", config)
        assert manifest.rows == 4 and manifest.quarantine is None
        assert sum(proxy.injected.values()) == 8
        # 503 on every try: the run fails and commits nothing; no row is quarantined for it
        proxy.failures, proxy.injected = None, {}
        with pytest.raises(OSError):
            ingest(f"{s3_bucket}/raw", f"{s3_bucket}/failed", config)
        with pytest.raises(DatasetNotFinishedError):
            read_manifest(f"{s3_bucket}/failed")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["AWS_ENDPOINT_URL"])
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    assert not fs.exists(f"{s3_bucket}/failed/_lease.json")  # the failed run gave it back
    resumed = ingest(f"{s3_bucket}/raw", f"{s3_bucket}/failed", config)  # S3 answers again
    assert resumed.rows == 4 and resumed.quarantine is None


def test_a_published_model_is_pulled_once_and_checked(
    tiny_models, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish_model writes the files, then their manifest; resolve_model pulls a model
    from object storage once per machine, and refuses one whose files differ from it."""
    from adamllm_core.models import MODEL_MANIFEST, publish_model, resolve_model

    monkeypatch.setenv("ADAMLLM_MODEL_CACHE", str(tmp_path / "cache"))
    uri = f"{s3_bucket}/models/lm"
    manifest = publish_model(tiny_models["lm"], uri)
    local = Path(resolve_model(uri))
    assert local.parent == tmp_path / "cache" and local.name == manifest["identity"]
    for name in manifest["files"]:
        assert (local / name).read_bytes() == (Path(tiny_models["lm"]) / name).read_bytes()
    assert resolve_model(uri) == str(local)  # pulled once

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    fs.pipe_file(f"{uri}/config.json", b'{"changed": true}')  # the bucket's copy altered
    monkeypatch.setenv("ADAMLLM_MODEL_CACHE", str(tmp_path / "fresh"))
    with pytest.raises(ValueError, match="differs from its manifest"):
        resolve_model(uri)
    assert not any((tmp_path / "fresh").glob("[!.]*"))  # nothing half-pulled left in the cache
    fs.rm(f"{uri}/{MODEL_MANIFEST}")
    with pytest.raises(FileNotFoundError, match="not a complete published model"):
        resolve_model(uri)


def test_an_s3_source_is_listed_once_and_read_by_parallel_workers(
    s3_bucket: str, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest of a bucket source through a loopback proxy that records requests: the
    source is listed once, each image is read once, two workers read at the same time,
    and the dataset is the one a single worker makes."""
    bucket_source(s3_server, f"{s3_bucket}/par", 12, empty=True)
    single = ingest(f"{s3_bucket}/par", f"{s3_bucket}/par-one", IngestConfig(domain="test"))
    with SlowDownProxyServer(s3_server["AWS_ENDPOINT_URL"], image_delay_s=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        parallel = ingest(
            f"{s3_bucket}/par", f"{s3_bucket}/par-two", IngestConfig(domain="test", workers=2)
        )
    assert parallel.fingerprint == single.fingerprint and parallel.rows == 12
    # the empty object (S3 refuses a ranged read of it) is a row of the quarantine
    assert parallel.quarantine.reasons == {"empty_file": 1}
    source = [(m, p) for m, p in proxy.requests if "prefix=par%2F" in p or "/par/" in p]
    # the whole source (recursive: no delimiter) is listed once, for its fingerprint
    assert sum("prefix=par%2F&delimiter=&" in p for _, p in source) == 1
    # each image: one GET, and no other request (no listing or HEAD per image)
    image_requests = [
        (m, p) for m, p in source if ("/img/" in p or "img%2F" in p) and "empty" not in p
    ]
    assert sorted(image_requests) == sorted(
        ("GET", f"/{s3_bucket.removeprefix('s3://')}/par/img/{i}.png") for i in range(12)
    )
    assert proxy.reading[1] >= 2  # two workers' reads overlapped


def test_an_annotation_file_replaced_within_the_same_second_is_scanned_again(
    s3_bucket: str, s3_server
) -> None:
    """S3's LastModified has whole seconds: the scan cache is keyed by the ETag."""
    import hashlib

    from adamllm_core.importers.records import scan_record_file

    fs = s3fs.S3FileSystem(endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    uri = f"{s3_bucket}/rewritten/data.jsonl"
    for caption in (b"red", b"tan", b"sky"):  # same size each time, well within a second
        content = b'{"image": "a.png", "caption": "' + caption + b'"}\n'
        fs.pipe_file(uri, content)
        fs.invalidate_cache()
        assert scan_record_file(uri).sha256 == hashlib.sha256(content).hexdigest()
