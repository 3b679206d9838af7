"""Overwrite never loses a finished dataset: a writer replacing one is killed (os._exit, as
SIGKILL leaves it: no cleanup runs) at each point of its run (after one new shard, just
before its manifest, just after it), on local disk and on S3 (moto's server); after each
kill the URI holds the old complete dataset or the new complete one, never a mix or a gap,
and a re-run finishes the replacement."""

import subprocess
import sys
from pathlib import Path

import pytest

from adamllm_core.dataset import Dataset, read_manifest

TESTS = Path(__file__).resolve().parent

# The child writes the dataset (config a, or b replacing it) and dies where it is told to:
# the kill is the test's, the writer's code runs unchanged.
CHILD = """
import os, sys
sys.path.insert(0, {tests!r})
from adamllm_core.dataset import DatasetWriter
from adamllm_core.schemas import PAIRS, QUARANTINE
from test_dataset import pair, quarantined, writer

uri, config, point = sys.argv[1], sys.argv[2], sys.argv[3]
calls = {{"write_shard": 0}}
write_shard, write_manifest = DatasetWriter.write_shard, DatasetWriter._write_manifest

def dying_write_shard(self, index, *args, **kwargs):
    calls["write_shard"] += 1
    if point == "mid-shards" and calls["write_shard"] == 2:
        os._exit(9)
    return write_shard(self, index, *args, **kwargs)

def dying_write_manifest(self, target, *args, **kwargs):
    if point == "before-manifest" and target == self.uri:
        os._exit(9)
    manifest = write_manifest(self, target, *args, **kwargs)
    if point == "after-manifest" and target == self.uri:
        os._exit(9)
    return manifest

DatasetWriter.write_shard = dying_write_shard
DatasetWriter._write_manifest = dying_write_manifest
w = writer(uri, config={{"v": config}}, overwrite=True)
if w.prepare() is None:  # else: this very dataset is finished there already
    shards = 3 if config == "a" else 2
    for k in range(shards):
        if not w.is_done(k):
            w.write_shard(
                k,
                PAIRS.to_table([pair(2 * k), pair(2 * k + 1)]),
                QUARANTINE.to_table([quarantined(k)] if k == 1 else []),
                rows_in=3 if k == 1 else 2,
            )
    w.commit(shards)
"""


def run_child(script: Path, uri: str, config: str, point: str) -> int:
    return subprocess.run(
        [sys.executable, str(script), uri, config, point],
        check=False,
        capture_output=True,
        timeout=120,
    ).returncode


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "data")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/data"


@pytest.mark.parametrize("point", ["mid-shards", "before-manifest", "after-manifest"])
def test_a_killed_overwrite_leaves_the_old_or_the_new_dataset(
    location: str, point: str, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    uri = f"{location}/{point}"
    assert run_child(script, uri, "a", "none") == 0
    old = read_manifest(uri)
    assert old.rows == 6

    assert run_child(script, uri, "b", point) == 9
    seen = read_manifest(uri)
    expected = {"mid-shards": "a", "before-manifest": "a", "after-manifest": "b"}[point]
    assert seen.config == {"v": expected}
    dataset = Dataset(uri)
    dataset.verify()  # every shard the manifest names is there, byte for byte
    assert dataset.to_table().num_rows == seen.rows == (6 if expected == "a" else 4)
    quarantine = dataset.quarantine()
    assert quarantine is not None and quarantine.to_table().num_rows == 1

    assert run_child(script, uri, "b", "none") == 0
    new = Dataset(uri)
    new.verify()
    assert new.manifest.config == {"v": "b"} and new.to_table().num_rows == 4
    # the replaced dataset's files are gone: only the manifest's shards remain
    fs, path = new._fs, new._path
    shards = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path) if p.endswith(".parquet"))
    assert shards == sorted(s.path for s in new.manifest.shards)
    assert not fs.exists(f"{path}/_work")
