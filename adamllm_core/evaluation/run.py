"""Evaluate a model on one benchmark: Table 14's prompt per question, greedy generation,
the answer parsed and scored, every question kept as a row of a `predictions` dataset.

Layout under the run's output URI: `<benchmark>/predictions/` (dataset: shards written as
they finish, manifest last, so an interrupted run resumes), `<benchmark>/_cache/` (every
engine result, so resumed shards recompute nothing) and `<benchmark>/summary.json`.
Images are normalised as ingest does (decoded in full, pixel-limited, 8-bit RGB or L, first
frame); a question whose image is rejected is quarantined with the reason and counted.
"""

import hashlib
import json
from collections.abc import Callable, Collection, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Dataset, ParentRef
from adamllm_core.engines import ChatRequest, EngineConfig, Message, SamplingConfig, make_engine
from adamllm_core.engines.base import Engine
from adamllm_core.engines.cache import shards_on_engine
from adamllm_core.errors import Rejected
from adamllm_core.evaluation.adapters import read_items
from adamllm_core.evaluation.benchmarks import BenchmarkSpec, benchmark, item_prompt
from adamllm_core.evaluation.items import EvalItem
from adamllm_core.evaluation.scoring import (
    ItemScore,
    gold_text,
    score_item,
    stored_score,
    summarise,
)
from adamllm_core.executor import (
    BatchInput,
    ProgressFn,
    Role,
    Shard,
    ShardedExecutor,
    ShardOutput,
    StageOutput,
)
from adamllm_core.images import ImagePolicy, normalise_image
from adamllm_core.schemas import PREDICTIONS, Prediction, QuarantineRow
from adamllm_core.storage import (
    filesystem,
    join,
    listing_fingerprint,
    normalise_uri,
    redact,
    write_bytes_atomic,
)
from adamllm_core.version import code_version


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark: str
    data: str = Field(
        description="benchmark file or folder (release or generic jsonl/Parquet form)"
    )
    engine: EngineConfig
    limit: int | None = Field(default=None, gt=0, description="evaluate the first N questions only")
    max_new_tokens: int | None = Field(
        default=None, gt=0, description="default: the benchmark's own limit"
    )
    system_prompt: str | None = None
    seed: int = Field(default=0, description="seeds the random option fallback (per question)")
    rows_per_shard: int = Field(default=256, gt=0)
    images: ImagePolicy = Field(
        default_factory=ImagePolicy, description="limits on benchmark images, as for ingest"
    )


def prediction_id(benchmark_name: str, qid: str, model: str) -> str:
    return hashlib.sha256(f"{benchmark_name}\0{qid}\0{model}".encode()).hexdigest()[:32]


def eval_request(spec: BenchmarkSpec, item: EvalItem, config: EvalConfig) -> ChatRequest:
    messages = (
        [Message(role="system", content=config.system_prompt)] if config.system_prompt else []
    )
    messages.append(Message(role="user", content=item_prompt(spec, item), images=1))
    return ChatRequest(
        messages=tuple(messages),
        images=(item.image,),
        sampling=SamplingConfig(
            max_new_tokens=config.max_new_tokens or spec.max_new_tokens,
            temperature=0.0,
            seed=config.seed,
        ),
    )


def prediction_row(
    spec: BenchmarkSpec,
    item: EvalItem,
    output: str | None,
    model: str,
    prompt: str,
    seed: int,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> Prediction:
    """The scored row; `output` None is a missing answer: score 0, no random fallback."""
    scored = score_item(spec, item, output or "", seed)
    if output is None:
        corrected = None if scored.score_corrected is None else 0.0
        scored = ItemScore(scored.group, "", 0.0, corrected, False)
    return Prediction(
        id=prediction_id(spec.name, item.qid, model),
        benchmark=spec.name,
        domain=spec.domain,
        qid=item.qid,
        model=model,
        prompt=prompt,
        raw_output=output or "",
        parsed=scored.parsed,
        gold=gold_text(item),
        answer_type=item.answer_type,
        group=scored.group,
        score=scored.score,
        score_corrected=scored.score_corrected,
        fallback=scored.fallback,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        source=item.source,
    )


def predictions_uri(config: EvalConfig, run_uri: str) -> str:
    return join(normalise_uri(run_uri), benchmark(config.benchmark).name, "predictions")


def _executor(
    config: EvalConfig, run_uri: str, model: str, overwrite: bool = False, lease: bool = True
) -> ShardedExecutor:
    spec = benchmark(config.benchmark)
    settings = config.model_dump(
        mode="json", exclude={"data"}
    )  # rows_per_shard decides what a shard holds
    settings["engine"] = config.engine.identity_dump()
    settings.update(model_identity=model, spec=spec.model_dump(mode="json"))
    return ShardedExecutor(
        stage="evaluate",
        outputs={"predictions": StageOutput(predictions_uri(config, run_uri), PREDICTIONS)},
        parents=[
            ParentRef(
                uri=redact(config.data), fingerprint=listing_fingerprint(config.data), kind="source"
            )
        ],
        config=settings,
        code=code_version(__name__),
        overwrite=overwrite,
        lease=lease,
    )


def _quarantine_row(
    input_index: int, item: Any, problem: Rejected, stage: str = "evaluate"
) -> QuarantineRow:
    return QuarantineRow.of(
        problem, stage=stage, input_index=input_index, source_ref=item.source, record_id=item.qid
    )


def question_input(
    benchmark_name: str, data: str, limit: int | None, rows_per_shard: int
) -> BatchInput:
    """A benchmark's questions in shards (images read only for the shards to do); refused,
    before any work area exists, when the file holds none."""
    spec = benchmark(benchmark_name)
    if next(read_items(spec.name, data, limit=1, images=False), None) is None:
        raise ValueError(f"{redact(data)}: no {spec.title} questions in it")

    def questions(wanted: Callable[[int], bool]) -> Iterator[EvalItem]:
        yield from read_items(spec.name, data, limit=limit, images=wanted)

    return BatchInput(questions, rows_per_shard, total=limit, name=redact(data))


def readable_items(
    chunk: list[EvalItem], shard: Shard, policy: ImagePolicy, stage: str
) -> tuple[list[tuple[int, EvalItem]], list[QuarantineRow]]:
    """A shard's questions with their images normalised as ingest does (decoded in full,
    pixel-limited, 8-bit RGB or L, one frame), each with its position; the others as
    quarantine rows with the reason."""
    readable, refused = [], []
    for position, item in enumerate(chunk):
        try:
            image = normalise_image(item.image, policy)
        except Rejected as problem:
            refused.append(_quarantine_row(shard.offset + position, item, problem, stage))
        else:
            readable.append((position, item.model_copy(update={"image": image.data})))
    return readable, refused


def shard_sizes(config: EvalConfig) -> list[int]:
    """The questions in each shard of the benchmark (one pass over them, no images)."""
    spec = benchmark(config.benchmark)
    questions = sum(1 for _ in read_items(spec.name, config.data, limit=config.limit, images=False))
    full, rest = divmod(questions, config.rows_per_shard)
    return [config.rows_per_shard] * full + ([rest] if rest else [])


def evaluation_identity(config: EvalConfig) -> str:
    """What the predictions dataset is made from (benchmark files, settings, model, code)."""
    return _executor(config, "", make_engine(config.engine).model_identity).identity


def evaluate(
    config: EvalConfig,
    out_uri: str,
    *,
    engine: Engine | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    role: Role = "all",
    shards: Collection[int] | None = None,
) -> dict[str, Any]:
    """Predictions dataset + summary for one benchmark; returns the summary. Roles other
    than "all" (an engine pool's driver and workers, see pool.py) return {}, except that
    "prepare" returns the summary when the predictions are already finished."""
    spec = benchmark(config.benchmark)
    root = join(normalise_uri(out_uri), spec.name)
    engine = engine or make_engine(config.engine)
    model = engine.model_identity
    # Pool workers, and the driver preparing for them, write under the lease the pool holds.
    executor = _executor(config, out_uri, model, overwrite, lease=role == "all")

    def process_many(group: list[tuple[list[EvalItem], Shard]]) -> list[ShardOutput]:
        outputs, valid = [], []
        for chunk, shard in group:
            items, refused = readable_items(chunk, shard, config.images, "evaluate")
            outputs.append(ShardOutput(rows={"predictions": []}, quarantine=refused))
            readable = [(p, item, eval_request(spec, item, config)) for p, item in items]
            valid.append((readable, shard))
        answered = shards_on_engine(
            engine,
            valid,
            lambda readable: readable[2],
            join(root, "_cache"),
            config.engine.batch_size,
        )
        for output, (readable, shard), (results, _) in zip(outputs, valid, answered, strict=True):
            for (position, item, request), result in zip(readable, results, strict=True):
                if (refusal := result.refusal()) is not None:  # this question alone refused
                    output.quarantine.append(
                        _quarantine_row(shard.offset + position, item, refusal)
                    )
                    continue
                output.rows["predictions"].append(
                    prediction_row(
                        spec,
                        item,
                        result.text,
                        model,
                        request.messages[-1].content,
                        config.seed,
                        result.prompt_tokens,
                        result.completion_tokens,
                    )
                )
            output.counters["fallbacks"] = sum(r.fallback for r in output.rows["predictions"])
        return outputs

    manifests = executor.execute(
        question_input(spec.name, config.data, config.limit, config.rows_per_shard),
        None,
        progress=progress,
        role=role,
        shards=shards,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
    )
    if not manifests:  # a worker's shards, or a driver's prepared work area
        return {}
    manifest = manifests["predictions"]
    dataset = Dataset(predictions_uri(config, out_uri))
    summary = _summary(
        spec,
        redact(config.engine.model),  # as the user named it; its identity is beside it
        [
            stored_score(r)
            for r in dataset.iter_rows(["group", "parsed", "score", "score_corrected", "fallback"])
        ],
        predictions=redact(dataset.uri),
        model_identity=model,
        unreadable=manifest.quarantine.rows if manifest.quarantine else 0,
    )
    fs, path = filesystem(join(root, "summary.json"))
    write_bytes_atomic(fs, path, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _summary(
    spec: BenchmarkSpec, model: str, scores: list[ItemScore], **counts: Any
) -> dict[str, Any]:
    """summary.json: the benchmark, the model, per-task scores (x100) and the counts given."""
    questions = len(scores) + counts.get("unreadable", 0)
    return {
        "benchmark": spec.name,
        "title": spec.title,
        "domain": spec.domain,
        "model": model,
        "questions": questions,
        **counts,
        "paper_test_size": spec.paper_test_size,
        "tasks": summarise(spec, scores),
    }


def score_predictions(
    benchmark_name: str,
    data: str,
    predictions: dict[str, str],
    *,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[list[Prediction], dict[str, Any]]:
    """Score another system's answers ({qid: prediction}) with the same rules; no model, no
    images read. A question without a prediction scores 0 (no random fallback) and is
    counted as missing; a prediction for a question not in the file is an error."""
    spec = benchmark(benchmark_name)
    every = list(read_items(spec.name, data, images=False))
    unknown = sorted(set(predictions) - {item.qid for item in every})
    if unknown:
        raise ValueError(
            f"{len(unknown)} predictions name questions not in {redact(data)}, e.g. qid {unknown[0]!r}"
        )
    items = every[:limit] if limit is not None else every
    rows = [
        prediction_row(
            spec, item, predictions.get(item.qid), "external", item_prompt(spec, item), seed
        )
        for item in items
    ]
    summary = _summary(
        spec,
        "external",
        [stored_score(r.model_dump()) for r in rows],
        missing=sum(item.qid not in predictions for item in items),
    )
    return rows, summary


def read_predictions(uri: str) -> dict[str, str]:
    """{qid: prediction} from a jsonl of {"qid", "prediction"}; errors name the line."""
    fs, path = filesystem(uri)
    answers: dict[str, str] = {}
    for number, line in enumerate(fs.cat_file(path).decode("utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{redact(uri)}, line {number}: not JSON ({error.msg})") from None
        if (
            not isinstance(record, dict)
            or "qid" not in record
            or not isinstance(record.get("prediction"), str)
        ):
            raise ValueError(f"{redact(uri)}, line {number}: needs 'qid' and a string 'prediction'")
        qid = str(record["qid"])
        if qid in answers:
            raise ValueError(f"{redact(uri)}, line {number}: qid {qid!r} appears twice")
        answers[qid] = record["prediction"]
    return answers


def read_summary(uri: str) -> dict[str, Any]:
    fs, path = filesystem(uri)
    return json.loads(fs.cat_file(path))
