"""The one executor for sharded work: an input cut into shards → a process function → the
outputs' writers (rows per output, quarantine on the primary one).

Ingest, synthesize, filter, assemble, evaluate and seed building all run through it. It
owns the work area (through `DatasetWriter`: plan, shard markers, leases): `finished()`
only reads; `prepare()` takes the outputs' leases and readies their work areas (resuming
one left by an interrupted run of the same identity); `run_shards` writes every shard not
yet done; `commit()` publishes, primary output last. Engine-pool workers `attach()` to the
work area their driver prepared: they never prepare or delete.
"""

import multiprocessing
import os
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel

from adamllm_core.dataset import (
    Dataset,
    DatasetWriter,
    Manifest,
    ParentRef,
    Stopwatch,
    identity_hash,
)
from adamllm_core.hashing import config_hash
from adamllm_core.schemas import QUARANTINE, QuarantineRow, Record, RecordSchema
from adamllm_core.settings import forwarded_env

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")
Role = Literal["all", "prepare", "worker"]


@dataclass(frozen=True)
class Shard:
    index: int
    offset: int = 0  # position of its first row in the whole input
    source: int = 0  # which of the input's datasets it comes from (DatasetInput of several)
    source_index: int | None = None  # its index in that dataset (default: `index`)

    @property
    def local_index(self) -> int:
        return self.index if self.source_index is None else self.source_index


@dataclass
class ShardOutput:
    """What `process` made of one shard: rows per output name, the rejected inputs."""

    rows: dict[str, list[Record]]
    quarantine: list[QuarantineRow] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    # Inputs this shard consumed, when not one per input row (ingest: a record may give
    # several pairs, one per caption): rows_in == rows_out + quarantined.
    rows_in: int | None = None


@dataclass(frozen=True)
class StageOutput:
    uri: str
    schema: RecordSchema


ProcessFn = Callable[[list[Any], Shard], ShardOutput]
# several shards' rows at once (one engine call for all), an output for each, in order
ManyFn = Callable[[list[tuple[list[Any], Shard]]], list[ShardOutput]]


class ShardInput(Protocol):
    def total(self) -> int | None:
        """Input rows, when known up front (for progress)."""

    def shards(
        self, skip: Callable[[int], bool]
    ) -> Iterator[tuple[Shard, int, Callable[[], list[Any]]]]:
        """(shard, its row count or -1 if unknown before reading, a reader of its rows)."""


class DatasetInput:
    """The shards of a finished dataset, or of several one after another (their shards
    numbered on): input shard k becomes output shard k."""

    def __init__(self, uris: str | list[str], columns: list[str] | None = None):
        self.datasets = [Dataset(uri) for uri in ([uris] if isinstance(uris, str) else uris)]
        self.columns = columns

    def total(self) -> int:
        return sum(dataset.manifest.rows for dataset in self.datasets)

    def shards(
        self, skip: Callable[[int], bool]
    ) -> Iterator[tuple[Shard, int, Callable[[], list[Any]]]]:
        offset = index = 0
        for source, dataset in enumerate(self.datasets):
            for local, info in enumerate(dataset.manifest.shards):
                shard = Shard(index, offset, source, local)
                yield (
                    shard,
                    info.rows,
                    lambda dataset=dataset, local=local: dataset.read_shard(local, self.columns),
                )
                offset += info.rows
                index += 1


class BatchInput:
    """Shards cut from a stream of items, `size` at a time (a source's records, benchmark
    questions). `items(wanted)` makes the stream; `wanted(position)` is False for items of
    shards already done, so a reader can skip their costly part (an image read)."""

    def __init__(
        self,
        items: Callable[[Callable[[int], bool]], Iterable[Any]],
        size: int,
        *,
        total: int | None = None,
        name: str = "the input",
    ):
        self.items = items
        self.size = size
        self._total = total
        self.name = name

    def total(self) -> int | None:
        return self._total

    def shards(
        self, skip: Callable[[int], bool]
    ) -> Iterator[tuple[Shard, int, Callable[[], list[Any]]]]:
        expected = None if self._total is None else -(-self._total // self.size)
        stream = iter(self.items(lambda position: not skip(position // self.size)))
        index = 0
        while chunk := list(islice(stream, self.size)):
            if expected is not None and index >= expected:
                raise RuntimeError(
                    f"{self.name} changed while it was read: more items than counted"
                )
            yield Shard(index, index * self.size), len(chunk), lambda chunk=chunk: chunk
            index += 1


def stage_parents(inputs: list[str]) -> list[ParentRef]:
    return [ParentRef(uri=uri, fingerprint=Dataset(uri).manifest.fingerprint) for uri in inputs]


def stage_identity(
    inputs: list[str], output: StageOutput, config: BaseModel | dict[str, Any], code: str
) -> str:
    """`code`: the stage's code version (`version.code_version` of its module)."""
    return identity_hash(output.schema, stage_parents(inputs), config_hash(config), code)


TASKS_IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker process: busy, memory bounded
PREFETCH_ENV = "ADAMLLM_PREFETCH"  # 0: no read-ahead or write-behind
_process_pools: dict[tuple[int, tuple[tuple[str, str], ...]], ProcessPoolExecutor] = {}
_pool_users: Counter[int] = Counter()  # runs using each pool (by id) now
_process_pools_lock = threading.Lock()


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes for CPU-bound stage work, started once and reused by later runs
    in this process with the same environment (storage endpoints and credentials,
    `settings.forwarded_env`: a worker keeps the one it was started with). Pools of other
    environments are shut down once no run uses them. Spawned, not forked: the caller may
    hold threads (Prefect's event loop) that a fork would copy. The caller releases it
    (`release_pool`) when done."""
    # Read-ahead is the driver's own business: toggling it must not restart the workers.
    environment = {k: v for k, v in forwarded_env().items() if k != PREFETCH_ENV}
    key = (workers, tuple(sorted(environment.items())))
    with _process_pools_lock:
        pool = _process_pools.get(key)
        if pool is not None and getattr(pool, "_broken", False):  # a worker died since
            del _process_pools[key]
            pool = None
        if pool is None:
            for other_key, other in list(_process_pools.items()):
                if other_key[0] == workers and not _pool_users[id(other)]:
                    other.shutdown(wait=False)
                    del _process_pools[other_key]
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            _process_pools[key] = pool
        _pool_users[id(pool)] += 1
        return pool


def release_pool(pool: ProcessPoolExecutor) -> None:
    with _process_pools_lock:
        _pool_users[id(pool)] -= 1
        if _pool_users[id(pool)] <= 0:
            del _pool_users[id(pool)]


def _apply(fn: Callable[[Any], T], chunk: list[Any]) -> list[T]:
    return [fn(item) for item in chunk]


def ordered_map(
    fn: Callable[[Any], T], items: Iterable[Any], *, workers: int, chunk: int = 16
) -> Iterator[T]:
    """`map(fn, items)` on `workers` processes (`process_pool`), results in input order,
    up to `chunk` items per task and at most TASKS_IN_FLIGHT_PER_WORKER tasks per worker ahead
    of the consumer, so memory stays bounded however long `items` is (Python 3.14's
    `Executor.map(buffersize=...)`). One worker: in this process."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = process_pool(workers)
    pending: deque[Future] = deque()
    stream = iter(items)
    size = 1  # tasks grow 1, 2, 4 ... `chunk` items: every worker starts at once
    try:
        while batch := list(islice(stream, size)):
            size = min(chunk, size * 2)
            pending.append(pool.submit(_apply, fn, batch))
            if len(pending) >= workers * TASKS_IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:  # a pool broken by a dying worker (killed, out of memory) is replaced next run
        for future in pending:
            future.cancel()
        release_pool(pool)


WRITES_IN_FLIGHT = 2  # processed shards waiting for the writer thread (memory bound)


def prefetch_default() -> bool:
    """Read ahead and write behind unless ADAMLLM_PREFETCH=0 (the output is the same)."""
    return os.environ.get(PREFETCH_ENV, "1") != "0"


def prefetched(items: Iterator[T], enabled: bool) -> Iterator[T]:
    """`items`, produced one ahead in a thread: the next is read while the caller works on
    this one. An error in the thread is raised here; leaving early stops the thread."""
    if not enabled:
        yield from items
        return
    ready: queue.Queue = queue.Queue()
    slot = threading.Semaphore(1)  # one item ahead of the consumer: read or being read
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            while True:
                while not slot.acquire(timeout=0.1):  # the consumer took the last one
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(items, end)
                ready.put((item, None))
                if item is end:
                    return
        except BaseException as error:  # noqa: BLE001 (raised again in the consumer)
            ready.put((end, error))

    thread = threading.Thread(target=produce, name="shard-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            slot.release()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class WriteBehind:
    """Runs writes (processed shards, cached engine results) in one background thread, in
    the order submitted, with at most WRITES_IN_FLIGHT waiting; a failed write is raised at
    the next submit or at the end (`flush`, or leaving the `with` block). Disabled: each
    write happens at its submit."""

    def __init__(self, enabled: bool):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer") if enabled else None
        self.pending: deque[Future] = deque()

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        if self.pool is None:
            write(*args)
            return
        while len(self.pending) >= WRITES_IN_FLIGHT:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(write, *args))

    def flush(self) -> None:
        """Waits for every write submitted so far; raises the first that failed."""
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if self.pool is None:
            return
        try:
            if error is None:
                self.flush()
            else:  # what was done is still written (a shard, a batch's cached results);
                wait(self.pending)  # their own errors give way to the one being raised
        finally:
            self.pool.shutdown(wait=True)


class ShardedExecutor:
    """Writes the outputs of one stage; the first output is the primary one: it holds the
    stage's quarantine and counters, and its manifest is written last (its presence means
    the whole stage is done)."""

    def __init__(
        self,
        *,
        stage: str,
        outputs: dict[str, StageOutput],
        parents: list[ParentRef],
        config: BaseModel | dict[str, Any],
        code: str,
        overwrite: bool = False,
        lease: bool = True,
        prefetch: bool | None = None,
    ):
        self.stage = stage
        self.prefetch = prefetch if prefetch is not None else prefetch_default()
        self.outputs = outputs
        self.primary = next(iter(outputs))
        dumped = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        self.writers = {
            name: DatasetWriter(
                out.uri,
                schema=out.schema,
                stage=stage,
                parents=parents,
                config=dumped,
                config_hash=config_hash(dumped),
                code_version=code,
                overwrite=overwrite,
                lease=lease,
            )
            for name, out in outputs.items()
        }
        self._pending: dict[str, DatasetWriter] = dict(self.writers)

    @property
    def identity(self) -> str:
        return self.writers[self.primary].identity

    # -- the work area --

    def finished(self) -> dict[str, Manifest] | None:
        """Every output's manifest when all are finished with this identity; reads only."""
        manifests = {name: writer.finished() for name, writer in self.writers.items()}
        if any(m is None for m in manifests.values()):
            return None
        return manifests  # type: ignore[return-value]

    def prepare(self) -> dict[str, Manifest] | None:
        """Take the leases and ready the work areas; the manifests when already finished.

        An output already finished with this identity (a commit interrupted between two
        outputs' manifests) is left as it is; only the others are written."""
        finished = {name: writer.finished() for name, writer in self.writers.items()}
        if all(m is not None for m in finished.values()):
            return {name: self.writers[name].prepare() for name in self.writers}  # type: ignore[misc]
        self._pending = {name: w for name, w in self.writers.items() if finished[name] is None}
        for writer in self.writers.values():
            writer.prepare()  # a finished output: only removes what its commit left behind
        return None

    def attach(self) -> None:
        """For a data-parallel rank: adopt the work areas the parent prepared."""
        self._pending = {name: w for name, w in self.writers.items() if w.finished() is None}
        for writer in self._pending.values():
            writer.attach()

    def is_done(self, index: int) -> bool:
        return all(writer.is_done(index) for writer in self._pending.values())

    def done_column(self, output: str, column: str) -> Iterator[Any]:
        """Values of one column over an output's finished shards (state to resume with)."""
        return self.writers[output].done_column(column)

    # -- running --

    def run_shards(
        self,
        source: ShardInput,
        process: ProcessFn | None,
        *,
        progress: ProgressFn | None = None,
        only: Collection[int] | None = None,
        process_many: ManyFn | None = None,
        rows_per_call: int = 0,
    ) -> int:
        """Process and write every shard not yet done (of `only`, when given: the input is
        read no further than the last of them); returns the number of shards the input has
        (with `only`, shards read).

        With `process_many` (then `process` may be None), consecutive shards to do are
        handed over together until they hold `rows_per_call` rows (an engine's batch:
        shards of any size fill it); each still becomes its own output shard.

        With `prefetch` (the default; `ADAMLLM_PREFETCH=0` turns it off), the next shard is
        read in a thread while this one is processed, and finished shards are written by
        another (at most WRITES_IN_FLIGHT waiting), so an engine does not wait for storage.
        Shards are processed in order in the calling thread either way: same output."""
        total = source.total()
        done_rows = 0
        shards = 0
        last = max(only, default=-1) if only is not None else None
        many = process_many or (lambda group: [process(rows, shard) for rows, shard in group])
        group: list[tuple[list[Any], Shard]] = []

        def skip(index: int) -> bool:
            return (only is not None and index not in only) or self.is_done(index)

        def read_ahead() -> Iterator[tuple[Shard, int, list[Any] | None]]:
            for shard, size, read in source.shards(skip):
                yield shard, size, None if skip(shard.index) else read()
                if last is not None and shard.index >= last:
                    return

        # A shard's seconds: its share of the time since the previous call ended (reading,
        # which overlaps, included), so that the shards' seconds add up to the stage's time.
        clock = Stopwatch()
        with WriteBehind(self.prefetch) as writer:

            def run_group() -> None:
                nonlocal done_rows, clock
                results = many(group)
                if len(results) != len(group):
                    raise RuntimeError(
                        f"{self.stage}: {len(results)} outputs for {len(group)} shards"
                    )
                rows_in = sum(len(rows) for rows, _ in group) or 1
                seconds, clock = clock.seconds, Stopwatch()  # a wait for the writer: the next's
                for (rows, shard), result in zip(group, results, strict=True):
                    share = seconds * max(len(rows), 1) / rows_in
                    writer.submit(self._write, shard, len(rows), result, share)
                done_rows += sum(len(rows) for rows, _ in group)
                group.clear()
                if progress:
                    progress(done_rows, max(total or 0, done_rows))

            for shard, size, rows in prefetched(read_ahead(), self.prefetch):
                shards = shard.index + 1
                if rows is None:
                    done_rows += max(size, 0)
                    continue
                group.append((rows, shard))
                if sum(len(r) for r, _ in group) >= rows_per_call:
                    run_group()
            if group:
                run_group()
        return shards

    def _write(self, shard: Shard, rows: int, result: ShardOutput, seconds: float) -> None:
        """Write one processed shard (of `rows` input rows) to every pending output."""
        for name, writer in self._pending.items():
            primary = name == self.primary
            out_rows = result.rows.get(name, [])
            rows_in = result.rows_in if result.rows_in is not None else rows
            writer.write_shard(
                shard.index,
                self.outputs[name].schema.to_table(out_rows),
                QUARANTINE.to_table(result.quarantine if primary else []),
                rows_in=rows_in if primary else len(out_rows),
                counters=dict(result.counters) if primary else {},
                seconds=seconds,
            )

    def commit(self, shards: int) -> dict[str, Manifest]:
        """Publish every output (an empty input gives one empty shard), primary last; the
        work areas are removed after the primary's manifest, so an interrupted commit
        resumes without redoing a shard."""
        if shards == 0:  # an empty input: one empty shard per output
            shards = 1
            for name, writer in self._pending.items():
                writer.write_shard(
                    0, self.outputs[name].schema.to_table([]), QUARANTINE.to_table([]), rows_in=0
                )
        manifests = {
            name: writer.finished()
            for name, writer in self.writers.items()
            if name not in self._pending
        }
        order = [n for n in self._pending if n != self.primary]
        order += [self.primary] if self.primary in self._pending else []
        for name in order:
            manifests[name] = self._pending[name].commit(shards, finish=False)
        for name in order:
            self._pending[name].finish(manifests[name])
        return {name: manifests[name] for name in self.outputs}  # type: ignore[misc]

    def execute(
        self,
        source: ShardInput,
        process: ProcessFn | None,
        *,
        progress: ProgressFn | None = None,
        role: Role = "all",
        shards: Collection[int] | None = None,
        on_resume: Callable[["ShardedExecutor"], None] | None = None,
        process_many: ManyFn | None = None,
        rows_per_call: int = 0,
    ) -> dict[str, Manifest]:
        """The whole stage (role "all"): prepare, run, commit; a no-op returning the
        manifests when finished. On an engine pool (see pool.py) the driver runs role
        "prepare" once, each worker role "worker" on the shards it is handed (written, never
        committed), then the driver role "all" finds every shard done and commits. Roles
        other than "all" return {}. `on_resume` runs once the work area is ready (to rebuild
        state from done shards)."""
        grouping = {"process_many": process_many, "rows_per_call": rows_per_call}
        if role == "worker":
            self.attach()
            self.run_shards(source, process, progress=progress, only=shards, **grouping)
            return {}
        try:
            finished = self.prepare()
            if finished is not None:
                return finished
            if role == "prepare":
                return {}
            if on_resume:
                on_resume(self)
            shards = self.run_shards(source, process, progress=progress, **grouping)
            return self.commit(shards)
        except BaseException:
            self.give_back_leases()
            raise

    def give_back_leases(self) -> None:
        """A failed or interrupted run gives its outputs' leases back at once, so a re-run
        anywhere can take over without waiting for them to expire; the work areas stay for
        it to resume. Storage that cannot be reached leaves a lease to expire instead."""
        for writer in self.writers.values():
            writer.give_back_lease()


def run_stage(
    *,
    stage: str,
    input_uri: str | list[str],
    outputs: dict[str, StageOutput],
    config: BaseModel | dict[str, Any],
    process: ProcessFn | None,
    code: str,
    columns: list[str] | None = None,
    extra_inputs: list[str] = (),
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    role: Role = "all",
    shards: Collection[int] | None = None,
    process_many: ManyFn | None = None,
    rows_per_call: int = 0,
) -> dict[str, Manifest]:
    """A dataset-to-dataset stage (synthesize, filter, assemble): input shard k of
    `input_uri` (or of several datasets' shards one after another) becomes shard k of every
    output; see `ShardedExecutor.execute` for roles."""
    inputs = [input_uri] if isinstance(input_uri, str) else list(input_uri)
    executor = ShardedExecutor(
        stage=stage,
        outputs=outputs,
        parents=stage_parents([*inputs, *extra_inputs]),
        config=config,
        code=code,
        overwrite=overwrite,
        # Workers, and the driver preparing for them, write under the leases the pool holds.
        lease=role == "all",
    )
    return executor.execute(
        DatasetInput(inputs, columns),
        process,
        progress=progress,
        role=role,
        shards=shards,
        process_many=process_many,
        rows_per_call=rows_per_call,
    )
