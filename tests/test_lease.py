"""Writer leases: two runs on one output never interleave; a stale writer is taken over and
writes nothing after (local disk and S3 through moto's server)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from adamllm_core.dataset import Dataset, read_manifest
from adamllm_core.lease import LEASE_NAME, LeaseHeldError, WriterLease
from adamllm_core.schemas import PAIRS, QUARANTINE

TESTS = Path(__file__).resolve().parent

HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from adamllm_core.schemas import PAIRS, QUARANTINE
from test_dataset import pair, writer
w = writer(sys.argv[1], config={{"v": "a"}})
assert w.prepare() is None
w.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
print("holding", flush=True)
time.sleep(60)
"""


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "data")
    return f"{request.getfixturevalue('s3_bucket')}/data"


def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(
    location: str, tmp_path: Path
) -> None:
    sys.path.insert(0, str(TESTS))
    from test_dataset import pair, writer

    uri = f"{location}/pairs"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(tests=str(TESTS)))
    holder = subprocess.Popen(
        [sys.executable, str(script), uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert holder.stdout.readline().decode().strip() == "holding"
        second = writer(uri, config={"v": "b"}, overwrite=True)
        with pytest.raises(LeaseHeldError, match=rf"being written by .* pid {holder.pid}"):
            second.prepare()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (SIGKILL: its lease was never given back): taken over at once
    second = writer(uri, config={"v": "b"}, overwrite=True)
    assert second.prepare() is None
    second.write_shard(0, PAIRS.to_table([pair(5)]), QUARANTINE.to_table([]), rows_in=1)
    second.commit(1)
    assert [r["id"] for r in Dataset(uri).iter_rows(["id"])] == ["id005"]
    fs = Dataset(uri)._fs
    assert not fs.exists(f"{Dataset(uri)._path}/{LEASE_NAME}")  # given back at the commit


def test_a_stale_lease_is_taken_over_and_its_writer_writes_nothing_more(location: str) -> None:
    sys.path.insert(0, str(TESTS))
    from test_dataset import pair, writer

    uri = f"{location}/pairs"
    late = writer(uri, config={"v": "a"})
    late._lease = WriterLease(late.uri, ttl_s=0.6)
    assert late.prepare() is None
    late.write_shard(0, PAIRS.to_table([pair(0)]), QUARANTINE.to_table([]), rows_in=1)
    late._lease._stop.set()  # the writer pauses (a stalled node): no heartbeat
    time.sleep(1.0)
    taker = writer(uri, config={"v": "a"})
    assert taker.prepare() is None  # the expired lease is taken over
    with pytest.raises(LeaseHeldError, match="taken over by another run"):
        late.write_shard(1, PAIRS.to_table([pair(1)]), QUARANTINE.to_table([]), rows_in=1)
    with pytest.raises(LeaseHeldError):
        late.commit(1)
    taker.write_shard(1, PAIRS.to_table([pair(1)]), QUARANTINE.to_table([]), rows_in=1)
    assert taker.commit(2).rows == 2
    assert read_manifest(uri).rows == 2


TAKER = """
import sys
sys.path.insert(0, {tests!r})
from test_dataset import writer
print(writer(sys.argv[1], config={{"v": "a"}}).prepare() is None, flush=True)
"""


def test_a_failed_stage_gives_its_lease_back_at_once(location: str, tmp_path: Path) -> None:
    """The failing process lives on (a worker serving other runs, a test session, a
    notebook): another process, on the same host and with the lease's TTL far off, takes
    the output over at once, and the work area is kept for it to resume."""
    from adamllm_core.executor import ShardOutput, StageOutput, run_stage
    from adamllm_core.storage import filesystem

    sys.path.insert(0, str(TESTS))
    from test_dataset import pair, write_all

    source = f"{location}/in"
    write_all(source)

    def fails_at_shard_1(rows: list[dict], shard) -> ShardOutput:
        if shard.index == 1:
            raise RuntimeError("storage gave up")
        return ShardOutput(rows={"pairs": [pair(shard.index)]})

    out = f"{location}/out"
    with pytest.raises(RuntimeError, match="storage gave up") as failure:
        run_stage(
            stage="test",
            input_uri=source,
            outputs={"pairs": StageOutput(out, PAIRS)},
            config={"v": "a"},
            process=fails_at_shard_1,
            code="test",
        )
    fs, path = filesystem(out)
    assert not fs.exists(f"{path}/{LEASE_NAME}")
    assert fs.exists(f"{path}/_work")  # kept: shard 0 is done
    assert failure.value is not None  # the traceback, and with it the writer, is still alive
    script = tmp_path / "taker.py"
    script.write_text(TAKER.format(tests=str(TESTS)))
    taken = subprocess.run(
        [sys.executable, str(script), out], check=False, capture_output=True, text=True, timeout=120
    )
    assert taken.stdout.strip() == "True", taken.stderr[-2000:]


def test_a_lease_left_unrenewed_is_never_deleted_by_its_old_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old writer reads its own token, then, before its delete, another run takes the
    expired lease over (the interleaving is forced by serving the old read): the old
    writer, unrenewed for most of its TTL, leaves the file alone."""
    uri = str(tmp_path / "out")
    old = WriterLease(uri, ttl_s=0.6)
    old.acquire()
    old._stop.set()  # storage unreachable: no renewal since
    read_before_takeover = old._read()
    time.sleep(0.7)
    taker = WriterLease(uri)
    taker.acquire()
    monkeypatch.setattr(old, "_read", lambda: read_before_takeover)
    old.release()
    assert taker._read()[0]["token"] == taker.holder["token"]
    taker.release()
    assert not (tmp_path / "out" / LEASE_NAME).exists()


def test_giving_a_lease_back_waits_for_storage_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = WriterLease(str(tmp_path / "out"))
    lease.acquire()
    monkeypatch.setattr(lease, "_read", lambda: time.sleep(30))  # storage hangs
    started = time.monotonic()
    lease.give_back(timeout_s=0.5)
    assert time.monotonic() - started < 5  # the failing run reports its error, not this
    assert lease._stop.is_set()  # and the lease is no longer renewed
