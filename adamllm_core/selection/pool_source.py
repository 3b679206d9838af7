"""The task-agnostic pool as a dataset: Vision-Flan's annotation file (records with `id`,
`image`, `task_name` and a human/gpt `conversations` pair) or generic records (`image`,
`instruction`, `answer`, `task`), as JSON list, JSON lines, CSV or TSV, streamed. A record
without an instruction, an answer or a readable image is quarantined with the reason."""

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Manifest, ParentRef
from adamllm_core.errors import Rejected
from adamllm_core.executor import BatchInput, Shard, ShardedExecutor, ShardOutput, StageOutput
from adamllm_core.images import ImagePolicy, normalise_image
from adamllm_core.importers.base import resolve_image_uri
from adamllm_core.importers.records import read_records
from adamllm_core.schemas import POOL, PoolSample, QuarantineRow
from adamllm_core.storage import filesystem, listing_fingerprint, normalise_uri, redact
from adamllm_core.training.seed import image_keys, record_turn, strip_image_tag, task_name
from adamllm_core.version import code_version


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_root: str | None = Field(
        default=None,
        description="folder the records' image paths are relative to (default:"
        " the annotation file's folder)",
    )
    rows_per_shard: int = Field(default=256, gt=0)
    images: ImagePolicy = Field(default_factory=ImagePolicy)


def pool_record(record: dict[str, Any]) -> tuple[str, str, str]:
    """(task, instruction, answer) of a Vision-Flan or generic record; Rejected if absent."""
    instruction = record.get("instruction") or record_turn(record, ("human", "user"))
    answer = record.get("answer")
    if answer is None:
        answer = record_turn(record, ("gpt", "assistant"))
    if not isinstance(instruction, str) or not strip_image_tag(instruction):
        raise Rejected("missing_instruction", "no instruction (field or human turn)")
    if not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise Rejected("missing_answer", "no answer (field or gpt turn)")
    task = str(record["task"]) if record.get("task") else task_name(record)
    return task, strip_image_tag(instruction), str(answer).strip()


def import_pool(source: str, out: str, config: PoolConfig, *, overwrite: bool = False) -> Manifest:
    """The pool dataset of one annotation file; sample ids are the record's `id` hashed
    with its task (stable across re-imports), else its file reference."""
    source = normalise_uri(source)
    root = normalise_uri(config.image_root or source.rsplit("/", 1)[0])
    executor = ShardedExecutor(
        stage="pool",
        outputs={"pool": StageOutput(normalise_uri(out), POOL)},
        parents=[ParentRef(uri=source, fingerprint=listing_fingerprint(source), kind="source")],
        config=config,
        code=code_version(__name__),
        overwrite=overwrite,
    )

    def sample(ref: str, record: dict[str, Any]) -> PoolSample:
        task, instruction, answer = pool_record(record)
        keys = image_keys(record.get("image"))
        if keys is None:
            raise Rejected("missing_image", "record names no image")
        fs, path = filesystem(resolve_image_uri(keys[0], root))
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise Rejected(
                "missing_image", f"{keys[0]} does not exist under {redact(root)}"
            ) from None
        image = normalise_image(data, config.images)
        identifier = str(record["id"]) if record.get("id") is not None else ref
        return PoolSample(
            id=hashlib.sha256(f"{task}\0{identifier}".encode()).hexdigest()[:32],
            task=task,
            instruction=instruction,
            answer=answer,
            image=image.data,
            image_format=image.format,
            source_ref=ref,
            metadata={"id": identifier} if record.get("id") is not None else {},
        )

    def process(records: list[tuple[str, dict[str, Any] | Rejected]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={"pool": []})
        seen: set[str] = set()
        for position, (ref, record) in enumerate(records):
            try:
                if isinstance(record, Rejected):
                    raise record
                row = sample(ref, record)
                if row.id in seen:
                    raise Rejected("duplicate_id", f"id {record.get('id')!r} repeats in its shard")
                seen.add(row.id)
            except Rejected as error:
                output.quarantine.append(
                    QuarantineRow.of(
                        error,
                        stage="pool",
                        input_index=shard.offset + position,
                        source_ref=ref,
                    )
                )
                continue
            output.rows["pool"].append(row)
        return output

    return executor.execute(
        BatchInput(lambda wanted: read_records(source), config.rows_per_shard, name=redact(source)),
        process,
    )["pool"]
