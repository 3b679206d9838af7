"""A dataset-to-dataset stage: input shard k becomes output shard k of every output.

Used by synthesis, filtering and assembly: resumable per shard (and, through the request
cache, per request inside a shard), a no-op when its outputs already exist.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

ProgressFn = Callable[[int, int], None]


@dataclass
class ShardOutput:
    rows: dict[str, list[Record]]
    quarantine: list[QuarantineRow] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class StageOutput:
    uri: str
    schema: RecordSchema


def stage_parents(inputs: list[str]) -> list[ParentRef]:
    return [ParentRef(uri=uri, fingerprint=Dataset(uri).manifest.fingerprint) for uri in inputs]


def stage_identity(
    inputs: list[str], output: StageOutput, config: BaseModel | dict[str, Any], code: str
) -> str:
    """`code`: the stage's code version (`version.code_version` of its module)."""
    return identity_hash(output.schema, stage_parents(inputs), config_hash(config), code)


def run_stage(
    *,
    stage: str,
    input_uri: str,
    outputs: dict[str, StageOutput],
    config: BaseModel | dict[str, Any],
    process: Callable[[list[dict[str, Any]], int], ShardOutput],
    code: str,
    columns: list[str] | None = None,
    extra_inputs: list[str] = (),
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Manifest]:
    """Run `process(rows, offset)` over every shard of `input_uri`; returns each output's manifest.

    The first output is the primary one: it holds the stage's quarantine and its manifest
    is written last. With `world` > 1 this process writes only shards `k % world == rank`
    and commits nothing (returns {}): one process per GPU, then a final call with world=1
    finds every shard done and commits.
    """
    source = Dataset(input_uri)
    parents = stage_parents([input_uri, *extra_inputs])
    dumped = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    writers = {
        name: DatasetWriter(
            out.uri,
            schema=out.schema,
            stage=stage,
            parents=parents,
            config=dumped,
            config_hash=config_hash(dumped),
            code_version=code,
            overwrite=overwrite,
            lease=world == 1,
        )
        for name, out in outputs.items()
    }
    finished = {name: writer.existing() for name, writer in writers.items()}
    if all(m is not None for m in finished.values()):
        return finished  # type: ignore[return-value]
    if any(m is not None for m in finished.values()):
        # Some outputs finished, some not: only a commit was interrupted; redo the rest.
        writers = {
            name: DatasetWriter(
                out.uri,
                schema=out.schema,
                stage=stage,
                parents=parents,
                config=dumped,
                config_hash=config_hash(dumped),
                code_version=code,
                overwrite=True,
                lease=world == 1,
            )
            for name, out in outputs.items()
        }
        for writer in writers.values():
            writer.existing()

    n_shards = max(1, len(source.manifest.shards))
    primary = next(iter(outputs))
    total = source.manifest.rows
    done_rows = 0
    for index, shard in enumerate(source.manifest.shards):
        if index % world != rank or all(w.is_done(index) for w in writers.values()):
            done_rows += shard.rows
            continue
        clock = Stopwatch()
        rows = source.read_shard(index, columns)
        result = process(rows, sum(s.rows for s in source.manifest.shards[:index]))
        for name, writer in writers.items():
            schema = outputs[name].schema
            quarantine = result.quarantine if name == primary else []
            out_rows = result.rows.get(name, [])
            writer.write_shard(
                index,
                schema.to_table(out_rows),
                QUARANTINE.to_table(quarantine),
                rows_in=len(rows) if name == primary else len(out_rows),
                counters=dict(result.counters) if name == primary else {},
                seconds=clock.seconds,
            )
        done_rows += shard.rows
        if progress:
            progress(done_rows, total)
    if world > 1:
        return {}
    if not source.manifest.shards:
        for name, writer in writers.items():
            if not writer.is_done(0):
                writer.write_shard(
                    0, outputs[name].schema.to_table([]), QUARANTINE.to_table([]), rows_in=0
                )
    committed = {name: writers[name].commit(n_shards) for name in outputs if name != primary}
    committed[primary] = writers[primary].commit(n_shards)
    return {name: committed[name] for name in outputs}
