"""The engine pool of the inference stages: a stage's shards on Ray actors, each holding
one warm engine, handed out as actors free up.

`run_on_pool(stage, args, config)` runs synthesize or filter_triplets (`stage(*args,
config)`) or evaluate (`evaluate(config, *args)`):

- in this process, when no Ray cluster is named (`RAY_ADDRESS`, else `engine.ray_address`)
  and `engine.data_parallel_size` is 1;
- else on `data_parallel_size` actors (a local Ray is started when no cluster is named),
  each reserving `engine.pool_resources()` (GPUs per engine for vLLM or CUDA, one CPU for
  the transformers engine on CPU). The outputs are prepared here and their leases held
  here; each actor loads its engine once and writes the shards it is handed into the work
  area, so on a cluster the outputs must be where every node reaches them (object storage).
  A finished stage starts no actor; a resumed one hands out only the shards not yet done.
  A shard whose actor died, or ran past `engine.shard_timeout_s`, goes to a fresh actor
  (counted as retried); a shard the stage itself fails fails the stage. The stage commits
  here: the dataset is the one a single process writes (same shards, rows, fingerprint).

Actors get this process's ADAMLLM_*, AWS_* and HF_* environment (model locations,
storage endpoints and credentials), so nodes started without them still read and write
the same places.
"""

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adamllm_core.dataset import Dataset, read_work_area
from adamllm_core.engines import EngineConfig
from adamllm_core.lease import WriterLease
from adamllm_core.settings import forwarded_env
from adamllm_core.storage import normalise_uri

STAGES = ("synthesize", "filter_triplets", "evaluate")
MAX_ATTEMPTS = 3  # per shard: a shard that kills three actors fails the stage
START_TIMEOUT_S = 300  # with no shard running, how long to wait for an actor to start


def _call(stage: str, args: list[str], config: Any, **kwargs: Any) -> Any:
    """The stage itself: synthesize and filter take (inputs..., outputs..., config);
    evaluate takes (config, run URI)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} cannot run on the engine pool; choose from {STAGES}")
    if stage == "evaluate":
        from adamllm_core.evaluation.run import evaluate

        return evaluate(config, *args, **kwargs)
    from adamllm_core import pipeline

    return getattr(pipeline, stage)(*args, config, **kwargs)


def _config_class(stage: str) -> Any:
    from adamllm_core.evaluation.run import EvalConfig
    from adamllm_core.filtering import FilterConfig
    from adamllm_core.synthesis import SynthConfig

    return {"synthesize": SynthConfig, "filter_triplets": FilterConfig, "evaluate": EvalConfig}[
        stage
    ]


def _outputs(stage: str, args: list[str], config: Any) -> list[str]:
    """The stage's output URIs (their leases are held by the driver)."""
    if stage == "evaluate":
        from adamllm_core.evaluation.run import predictions_uri

        return [predictions_uri(config, args[0])]
    return args[1:]


def _shard_sizes(stage: str, args: list[str], config: Any) -> list[int]:
    """The input rows of each of the stage's shards (a benchmark: one pass over its text)."""
    if stage == "evaluate":
        from adamllm_core.evaluation.run import shard_sizes

        return shard_sizes(config)
    return [shard.rows for shard in Dataset(args[0]).manifest.shards]


def _pending(outputs: list[str], count: int) -> list[int]:
    """Shards some unfinished output has not written yet (read from the work areas the
    driver just prepared; a finished output has none and needs nothing)."""
    # Prepare readied a work area for every output not finished under this identity (one
    # being replaced, --overwrite or a new config, has it beside the old manifest).
    areas = (read_work_area(uri, beside_manifest=True) for uri in outputs)
    done = [{marker.index for marker in area.markers} for area in areas if area is not None]
    return [index for index in range(count) if not all(index in d for d in done)]


def ray_address(engine: EngineConfig) -> str | None:
    return os.environ.get("RAY_ADDRESS") or engine.ray_address


@dataclass
class PoolStats:
    """What the pool does and did: per actor (its node, the shard it runs now and since
    when, shards written, busy seconds), retries. Reported as it changes and at the end
    (`finished`)."""

    stage: str
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)
    retried: list[dict[str, Any]] = field(default_factory=list)
    # per shard written: (actor, seconds, whether it was the actor's first: engine load in it)
    shard_seconds: dict[int, tuple[str, float, bool]] = field(default_factory=dict)
    # actor -> (its shards, time.time() they were handed out), for the actors running now
    running: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)
    shards: int = 0  # the input's shards
    dispatched: int = 0  # of them, not done before: handed to the actors
    done: int = 0  # of those, written
    seconds: float = 0.0
    finished: bool = False

    def nodes(self) -> Counter[str]:
        """Shards written per Ray node."""
        counts: Counter[str] = Counter()
        for actor in self.actors.values():
            counts[actor["node"]] += actor["shards"]
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shards": self.shards,
            "dispatched": self.dispatched,
            "done": self.done,
            "running": {actor: list(shards) for actor, (shards, _) in self.running.items()},
            "finished": self.finished,
            "seconds": round(self.seconds, 2),
            "retried": self.retried,
            "actors": self.actors,
            "shards_per_node": dict(self.nodes()),
        }


class StageWorker:
    """One warm engine on a Ray actor: writes the shards it is handed (role "worker")."""

    def __init__(self, stage: str, args: list[str], config: dict[str, Any], kwargs: dict):
        import ray

        from adamllm_core.engines import make_engine

        self.stage, self.args, self.kwargs = stage, args, kwargs
        self.config = _config_class(stage).model_validate(config)
        self.engine = make_engine(self.config.engine)  # loads on its first request, then stays
        self.node = ray.get_runtime_context().get_node_id()

    def ready(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid()}

    def run(self, shards: list[int]) -> dict[str, Any]:
        started = time.perf_counter()
        _call(
            self.stage,
            self.args,
            self.config,
            engine=self.engine,
            role="worker",
            shards=shards,
            **self.kwargs,
        )
        return {"shards": shards, "seconds": time.perf_counter() - started}


def _connect(engine: EngineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = ray_address(engine)
    # No cluster named: a local Ray on this machine (its CPUs and GPUs), stopped at exit.
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def run_on_pool(
    stage: str,
    args: list[str],
    config: Any,
    *,
    report: Callable[[PoolStats], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> Any:
    """`stage(*args, config, **kwargs)`, on the engine pool when one is asked for (see the
    module docstring); `report` gets the pool's stats as they change (the same object,
    updated) and once more when it is done; `progress` (input rows done, input rows)."""
    engine: EngineConfig = config.engine
    if ray_address(engine) is None and engine.data_parallel_size == 1:
        return _call(stage, args, config, progress=progress, **kwargs)
    # The workers write without leases: this process holds the outputs' leases for them
    # (the final call below, in this process, takes them over and releases them at commit).
    outputs = _outputs(stage, args, config)
    leases = [WriterLease(normalise_uri(uri)) for uri in outputs]
    for lease in leases:
        lease.acquire()
    try:
        finished = _call(stage, args, config, role="prepare", **kwargs)
        if finished is not None and finished != {}:  # nothing to do: no actor started
            for lease in leases:
                lease.release()
            return _call(stage, args, config, **kwargs)  # its clean-up, if a commit left any
        sizes = _shard_sizes(stage, args, config)
        pending = _pending(outputs, len(sizes))
        if pending:  # else only the commit was left (it was interrupted)
            _connect(engine)
            _dispatch(stage, args, config, kwargs, sizes, pending, report, progress)
    except BaseException:
        for lease in leases:
            lease.release()
        raise
    return _call(stage, args, config, **kwargs)  # every shard is done: this commits


def _dispatch(
    stage: str,
    args: list[str],
    config: Any,
    kwargs: dict[str, Any],
    sizes: list[int],
    pending: list[int],
    report: Callable[[PoolStats], None] | None,
    progress: Callable[[int, int], None] | None,
) -> PoolStats:
    """Hands the pending shards to the actors as they free up; replaces dead actors."""
    import ray
    from ray.exceptions import RayActorError

    engine: EngineConfig = config.engine
    resources = engine.pool_resources()
    remote = ray.remote(**resources, max_restarts=0, max_concurrency=1)(StageWorker)
    dumped = config.model_dump(mode="json")
    stats = PoolStats(stage=stage, shards=len(sizes), dispatched=len(pending))
    began = time.perf_counter()
    # An actor is handed consecutive shards that together fill an engine batch (shards
    # smaller than the batch would leave it part empty); each is still written on its own.
    per_call = max(1, engine.batch_size // max(max(sizes, default=1), 1))
    calls = [tuple(pending[i : i + per_call]) for i in range(0, len(pending), per_call)]
    size = min(engine.data_parallel_size, len(calls))
    names = iter(range(10**9))
    rows_total = sum(sizes)
    rows_done = rows_total - sum(sizes[index] for index in pending)

    def changed() -> None:
        if report:
            report(stats)

    # the environment as it is now (not when Ray was first connected): per actor
    env = forwarded_env()

    def new_actor() -> tuple[str, Any]:
        name = f"{stage}-{next(names)}"
        actor = remote.options(runtime_env={"env_vars": env}).remote(stage, args, dumped, kwargs)
        stats.actors[name] = {"node": None, "pid": None, "shards": 0, "seconds": 0.0}
        return name, actor

    def retire(name: str, why: str) -> None:
        """An actor that is gone: its record says so, and a fresh one is started."""
        stats.actors[name]["ended"] = why
        stats.running.pop(name, None)
        replacement = new_actor()
        starting[replacement[1].ready.remote()] = replacement

    # An actor is handed shards once it has started: a replacement the cluster cannot
    # place yet (its node is gone and the others are busy) never holds a shard back.
    starting = {
        actor.ready.remote(): (name, actor) for name, actor in (new_actor() for _ in range(size))
    }
    idle: list[tuple[str, Any]] = []
    failed_starts: list[str] = []
    queue = list(calls)
    attempts: Counter[tuple[int, ...]] = Counter()
    running: dict[Any, tuple[str, Any, tuple[int, ...], float]] = {}
    waiting_since = time.monotonic()
    changed()
    while queue or running:
        while queue and idle:
            name, actor = idle.pop()
            call = queue.pop(0)
            attempts[call] += 1
            running[actor.run.remote(list(call))] = (name, actor, call, time.monotonic())
            stats.running[name] = (call, time.time())
            changed()
        if not running and time.monotonic() - waiting_since > START_TIMEOUT_S:
            raise RuntimeError(
                f"{stage}: no engine actor could start in {START_TIMEOUT_S} s; the cluster "
                f"has no free {engine.pool_resources()} (ray status shows what it has)"
            )
        ready, _ = ray.wait([*running, *starting], num_returns=1, timeout=1.0)
        now = time.monotonic()
        for ref in ready:
            if ref in starting:
                name, actor = starting.pop(ref)
                try:
                    stats.actors[name].update(ray.get(ref))  # its node and pid
                except RayActorError as error:  # died before it started: another one
                    failed_starts.append(f"{name}: {error}")
                    if len(failed_starts) >= MAX_ATTEMPTS * size:  # it will not start at all
                        raise RuntimeError(
                            f"{stage}: engine actors fail to start:\n" + "\n".join(failed_starts)
                        ) from error
                    retire(name, "died while starting")
                    continue
                idle.append((name, actor))
                continue
            name, actor, call, _started = running.pop(ref)
            waiting_since = now
            try:
                result = ray.get(ref)
            except RayActorError as error:  # the actor (or its node) died: elsewhere
                _retry(stats, queue, attempts, call, name, f"actor died: {type(error).__name__}")
                retire(name, "died")
                changed()
                continue
            record = stats.actors[name]
            first = record["shards"] == 0  # the engine loaded in it
            for shard in call:
                stats.shard_seconds[shard] = (name, result["seconds"] / len(call), first)
            stats.running.pop(name, None)
            record["shards"] += len(call)
            record["seconds"] = round(record["seconds"] + result["seconds"], 3)
            stats.done += len(call)
            rows_done += sum(sizes[shard] for shard in call)
            if progress:
                progress(rows_done, rows_total)
            idle.append((name, actor))
            changed()
        timeout = engine.shard_timeout_s
        for ref, (name, actor, call, started) in list(running.items()) if timeout else []:
            if now - started > timeout * len(call):  # hung: its actor goes, the shards elsewhere
                del running[ref]
                ray.kill(actor, no_restart=True)
                _retry(stats, queue, attempts, call, name, f"over shard_timeout_s {timeout:g}")
                retire(name, "killed: hung")
                changed()
    for _, actor in [*idle, *starting.values()]:
        ray.kill(actor, no_restart=True)
    stats.seconds = time.perf_counter() - began
    stats.finished = True
    changed()
    return stats


def _retry(
    stats: PoolStats,
    queue: list[tuple[int, ...]],
    attempts: Counter[tuple[int, ...]],
    call: tuple[int, ...],
    actor: str,
    reason: str,
) -> None:
    stats.retried.append({"shards": list(call), "actor": actor, "reason": reason})
    if attempts[call] >= MAX_ATTEMPTS:
        raise RuntimeError(
            f"{stats.stage}: shards {list(call)} failed {attempts[call]} times ({reason}); "
            f"retries: {stats.retried}"
        )
    queue.insert(0, call)
