"""Per-request result cache on any fsspec URI, so an interrupted stage resumes mid-shard.

Results are written in small batch files (one object each, atomic), never appended to.
A stage keeps one cache per shard (`shard_cache`): only that shard's batch files are read
back, so memory is bounded by a shard's results, not a dataset's.
"""

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from adamllm_core.engines.base import (
    ChatRequest,
    ChatResult,
    Engine,
    EngineError,
    RequestRejected,
    request_key,
)
from adamllm_core.executor import Shard, WriteBehind, prefetch_default
from adamllm_core.hashing import sha256_hex
from adamllm_core.storage import filesystem, join, write_bytes_atomic


class RequestCache:
    """Results under `uri` (written there), plus those under `read_also` (looked up only)."""

    def __init__(self, uri: str | None, *, read_also: tuple[str, ...] = ()):
        self.uri = uri
        self._results: dict[str, ChatResult] = {}
        for folder in (*read_also, *([uri] if uri is not None else [])):
            fs, path = filesystem(folder)
            if fs.exists(path):
                for file in sorted(fs.ls(path, detail=False)):
                    if file.endswith(".json") and not file.rsplit("/", 1)[-1].startswith("."):
                        for key, value in json.loads(fs.cat_file(file)).items():
                            self._results[key] = ChatResult.model_validate(value)

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: str) -> ChatResult | None:
        return self._results.get(key)

    def put_many(self, results: dict[str, ChatResult], writer: WriteBehind | None = None) -> None:
        """Keeps `results` and stores them as one batch file, through `writer` when given
        (in the background, while the engine runs the next batch)."""
        self._results.update(results)
        if self.uri is None or not results:
            return
        fs, path = filesystem(self.uri)
        body = json.dumps(
            {k: v.model_dump(mode="json") for k, v in results.items()}, sort_keys=True
        )
        name = join(path, f"batch-{sha256_hex(''.join(sorted(results)))[:24]}.json")
        if writer is None:
            write_bytes_atomic(fs, name, body.encode())
        else:
            writer.submit(write_bytes_atomic, fs, name, body.encode())


def shard_cache(uri: str | None, index: int) -> RequestCache:
    """The cache of shard `index` of a stage whose cache lives at `uri` (None: no cache).

    It also reads its neighbours' results: a refresh that inserts or removes fewer than a
    shard's worth of records before a row moves that row by one shard at most, and its
    result is still found (a larger reshuffle asks the engine again)."""
    if uri is None:
        return RequestCache(None)
    folders = [join(uri, f"shard-{k:05d}") for k in (index, index - 1, index + 1) if k >= 0]
    return RequestCache(folders[0], read_also=tuple(folders[1:]))


class EngineStats:
    """Requests found cached and computed, per cache (by its index in `run_cached`)."""

    def __init__(self) -> None:
        self.cached: Counter[int] = Counter()
        self.computed: Counter[int] = Counter()


def run_cached(
    engine: Engine,
    requests: list[ChatRequest],
    cache: RequestCache | list[RequestCache],
    *,
    batch_size: int,
    owners: list[int] | None = None,
    stats: EngineStats | None = None,
) -> list[ChatResult]:
    """Results for `requests` in order: cached ones read back, the others computed in
    batches of `batch_size`, each batch cached as soon as it is done. Several caches (the
    shards one call serves): `owners[i]` is the index of request i's cache."""
    caches = cache if isinstance(cache, list) else [cache]
    owners = owners if owners is not None else [0] * len(requests)
    keys = [request_key(engine.results_identity, engine.render(r), r) for r in requests]
    results: list[ChatResult | None] = [
        caches[owner].get(key) for owner, key in zip(owners, keys, strict=True)
    ]
    missing = [i for i, r in enumerate(results) if r is None]
    if stats:
        stats.cached.update(o for o, r in zip(owners, results, strict=True) if r is not None)
    with WriteBehind(prefetch_default()) as writer:  # a batch is cached while the next runs
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            computed = run_isolating(engine, [requests[i] for i in batch])
            for owner, owned in enumerate(caches):
                owned.put_many(
                    {
                        keys[i]: r
                        for i, r in zip(batch, computed, strict=True)
                        if owners[i] == owner and r.error_reason is None
                    },
                    writer,
                )
            for i, result in zip(batch, computed, strict=True):
                results[i] = result
            if stats:
                stats.computed.update(owners[i] for i in batch)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def run_isolating(engine: Engine, requests: list[ChatRequest]) -> list[ChatResult]:
    """`engine.run`, with one result per request, checked. A batch the engine refuses
    because of one request's content (RequestRejected) is split in halves until that
    request stands alone and becomes an error result: one bad row never fails the batch."""
    try:
        results = engine.run(requests)
    except RequestRejected as error:
        if len(requests) == 1:
            return [error.result()]
        half = len(requests) // 2
        return run_isolating(engine, requests[:half]) + run_isolating(engine, requests[half:])
    if len(results) != len(requests):
        raise EngineError(
            f"{engine.kind} engine returned {len(results)} results for {len(requests)} requests"
        )
    return results


def shards_on_engine(
    engine: Engine,
    group: list[tuple[list[Any], Shard]],
    request_of: Callable[[Any], ChatRequest],
    cache_uri: str | None,
    batch_size: int,
) -> list[tuple[list[ChatResult], Counter]]:
    """The requests of several shards' rows answered together (batches cross shard
    bounds), each shard's results read from and stored in its own cache; per shard, its
    results and counts of requests found cached and computed."""
    requests, owners = [], []
    for owner, (rows, _) in enumerate(group):
        requests += [request_of(row) for row in rows]
        owners += [owner] * len(rows)
    stats = EngineStats()
    results = run_cached(
        engine,
        requests,
        [shard_cache(cache_uri, shard.index) for _, shard in group],
        owners=owners,
        batch_size=batch_size,
        stats=stats,
    )
    answered, start = [], 0
    for owner, (rows, _) in enumerate(group):
        counts = Counter(
            requests_cached=stats.cached[owner], requests_computed=stats.computed[owner]
        )
        answered.append((results[start : start + len(rows)], counts))
        start += len(rows)
    return answered
