"""The sharded executor: roles, resume after a commit interrupted between outputs, a worker
that finds no prepared work area, and the read-only view of a work area."""

from pathlib import Path

import pytest

from adamllm_core.dataset import Dataset, DatasetError, DatasetWriter, ParentRef, read_work_area
from adamllm_core.executor import (
    BatchInput,
    DatasetInput,
    Shard,
    ShardedExecutor,
    ShardOutput,
    StageOutput,
    process_pool,
    release_pool,
)
from adamllm_core.schemas import QUARANTINE, QuarantineRow


def row(n: int, stage: str = "in") -> QuarantineRow:
    return QuarantineRow(stage=stage, input_index=n, source_ref=f"r{n}", reason="x", detail="d")


def source(tmp_path: Path, shards: int = 3, per_shard: int = 4) -> str:
    uri = str(tmp_path / "source")
    writer = DatasetWriter(
        uri, schema=QUARANTINE, stage="in", parents=[], config={}, config_hash="in"
    )
    writer.prepare()
    for k in range(shards):
        rows = [row(k * per_shard + i) for i in range(per_shard)]
        writer.write_shard(k, QUARANTINE.to_table(rows), QUARANTINE.to_table([]), rows_in=per_shard)
    writer.commit(shards)
    return uri


def executor(
    tmp_path: Path, inputs: str, config: dict | None = None, prefix: str = ""
) -> ShardedExecutor:
    return ShardedExecutor(
        stage="copy",
        outputs={
            "even": StageOutput(str(tmp_path / f"{prefix}even"), QUARANTINE),
            "odd": StageOutput(str(tmp_path / f"{prefix}odd"), QUARANTINE),
        },
        parents=[ParentRef(uri=inputs, fingerprint=Dataset(inputs).manifest.fingerprint)],
        config=config or {"k": 1},
        code="test",
    )


class Counting:
    """A process function that splits rows by parity and counts its calls."""

    def __init__(self) -> None:
        self.shards: list[int] = []

    def __call__(self, rows: list[dict], shard: Shard) -> ShardOutput:
        self.shards.append(shard.index)
        out = ShardOutput(rows={"even": [], "odd": []})
        for position, r in enumerate(rows):
            assert r["input_index"] == shard.offset + position
            copied = row(r["input_index"], "copy")
            out.rows["even" if r["input_index"] % 2 == 0 else "odd"].append(copied)
        return out


def test_a_commit_killed_between_outputs_resumes_without_redoing_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = source(tmp_path)
    process = Counting()
    original = DatasetWriter.commit

    def commit_then_die(self: DatasetWriter, n: int, **kwargs: object):
        if self.uri.endswith("/even"):  # the primary: after "odd" was committed
            raise KeyboardInterrupt("killed")
        return original(self, n, **kwargs)

    monkeypatch.setattr(DatasetWriter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        executor(tmp_path, inputs).execute(DatasetInput(inputs), process)
    assert process.shards == [0, 1, 2]
    assert (tmp_path / "odd" / "manifest.json").exists()
    assert (tmp_path / "even" / "_work").exists() and (tmp_path / "odd" / "_work").exists()

    monkeypatch.setattr(DatasetWriter, "commit", original)
    again = Counting()
    manifests = executor(tmp_path, inputs).execute(DatasetInput(inputs), again)
    assert again.shards == []  # every shard was done: only the primary's commit was left
    assert manifests["even"].rows == manifests["odd"].rows == 6
    assert manifests["even"].stats.rows_in == 12  # the primary counts every input row
    assert not (tmp_path / "even" / "_work").exists() and not (tmp_path / "odd" / "_work").exists()
    assert executor(tmp_path, inputs).finished() == manifests


def test_finished_only_reads_and_prepare_resumes(tmp_path: Path) -> None:
    inputs = source(tmp_path)
    first = executor(tmp_path, inputs)
    assert first.finished() is None
    assert not (tmp_path / "even").exists()  # the query created nothing
    assert first.prepare() is None
    first.run_shards(DatasetInput(inputs), Counting(), only={0, 2})
    area = read_work_area(str(tmp_path / "even"))
    assert area is not None and [m.index for m in area.markers] == [0, 2]
    assert area.stage == "copy" and area.lease_holder is not None  # this process holds it
    del first

    resumed = Counting()
    executor(tmp_path, inputs).execute(DatasetInput(inputs), resumed)
    assert resumed.shards == [1]
    assert read_work_area(str(tmp_path / "even")) is None


def test_a_worker_never_prepares(tmp_path: Path) -> None:
    inputs = source(tmp_path)
    worker = executor(tmp_path, inputs)
    with pytest.raises(DatasetError, match="driver prepares it before its workers start"):
        worker.execute(DatasetInput(inputs), Counting(), role="worker", shards=[0])
    assert not (tmp_path / "even").exists() and not (tmp_path / "odd").exists()

    parent = ShardedExecutor(
        stage="copy",
        outputs={
            "even": StageOutput(str(tmp_path / "even"), QUARANTINE),
            "odd": StageOutput(str(tmp_path / "odd"), QUARANTINE),
        },
        parents=[ParentRef(uri=inputs, fingerprint=Dataset(inputs).manifest.fingerprint)],
        config={"k": 1},
        code="test",
        lease=False,
    )
    assert parent.execute(DatasetInput(inputs), Counting(), role="prepare") == {}
    workers = [Counting(), Counting()]
    for handed, process in zip(([2, 0], [1]), workers, strict=True):  # as a pool hands them out
        executor(tmp_path, inputs).execute(
            DatasetInput(inputs), process, role="worker", shards=handed
        )
    assert [w.shards for w in workers] == [[0, 2], [1]]
    final = Counting()
    manifests = executor(tmp_path, inputs).execute(DatasetInput(inputs), final)
    assert final.shards == [] and manifests["odd"].rows == 6


def test_a_batch_input_that_grows_while_read_fails_the_stage(tmp_path: Path) -> None:
    inputs = source(tmp_path)
    rows = [r for r in Dataset(inputs).iter_rows()]
    batch = BatchInput(lambda wanted: rows, 4, total=8, name="the growing file")
    with pytest.raises(RuntimeError, match="the growing file changed while it was read"):
        executor(tmp_path, inputs).execute(batch, Counting())
    assert not (tmp_path / "even" / "manifest.json").exists()


@pytest.mark.parametrize("prefetch", [True, False])
def test_reading_ahead_is_one_shard_and_a_failure_keeps_the_shards_done(
    tmp_path: Path, prefetch: bool
) -> None:
    """While shard k is processed, at most shard k+1 has been read; when processing shard 2
    fails, the shards processed before it are written (their markers are there) and the
    next run processes only what is left."""
    inputs = source(tmp_path, shards=5)
    reads: list[int] = []
    seen_when_processing: list[tuple[int, list[int]]] = []

    class Tracked(BatchInput):
        def shards(self, skip):
            for shard, size, read in super().shards(skip):
                yield shard, size, lambda read=read, k=shard.index: reads.append(k) or read()

    rows = list(Dataset(inputs).iter_rows())

    def failing(chunk: list[dict], shard: Shard) -> ShardOutput:
        seen_when_processing.append((shard.index, list(reads)))
        if shard.index == 2:
            raise ValueError("shard 2 fails")
        return Counting()(chunk, shard)

    stage = executor(tmp_path, inputs)
    stage.prefetch = prefetch
    with pytest.raises(ValueError, match="shard 2 fails"):
        stage.execute(Tracked(lambda wanted: rows, 4, total=20), failing)
    for index, read_so_far in seen_when_processing:
        assert max(read_so_far) <= index + 1
    area = read_work_area(str(tmp_path / "even"))
    assert [m.index for m in area.markers] == [0, 1]

    resumed = Counting()
    again = executor(tmp_path, inputs)
    again.prefetch = prefetch
    manifests = again.execute(BatchInput(lambda wanted: rows, 4, total=20), resumed)
    assert resumed.shards == [2, 3, 4] and manifests["even"].stats.rows_in == 20


def test_several_shards_in_one_call_each_become_their_own_shard(tmp_path: Path) -> None:
    """`process_many` with rows_per_call 10 over shards of 4 rows: shards go three at a
    time (12 rows), then the rest; the dataset is the one made shard by shard."""
    inputs = source(tmp_path, shards=5)
    groups: list[list[int]] = []

    def many(group: list[tuple[list[dict], Shard]]) -> list[ShardOutput]:
        groups.append([shard.index for _, shard in group])
        return [Counting()(rows, shard) for rows, shard in group]

    grouped = executor(tmp_path, inputs, prefix="grouped-").execute(
        DatasetInput(inputs), Counting(), process_many=many, rows_per_call=10
    )
    single = executor(tmp_path, inputs).execute(DatasetInput(inputs), Counting())
    assert groups == [[0, 1, 2], [3, 4]]
    assert [m.shards for m in grouped.values()] == [m.shards for m in single.values()]


def test_worker_processes_outlive_a_prefetch_toggle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-ahead is the driver's setting: flipping it keeps the started workers, while a
    storage variable (which workers read) gets workers started with the new value."""
    monkeypatch.setenv("ADAMLLM_PREFETCH", "1")
    first = process_pool(2)
    release_pool(first)
    monkeypatch.setenv("ADAMLLM_PREFETCH", "0")
    again = process_pool(2)
    release_pool(again)
    assert again is first
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    other = process_pool(2)
    release_pool(other)
    assert other is not first
