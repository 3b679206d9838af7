"""The stages of error-driven selection, each a dataset written through the one sharded
executor (resumable, leased, quarantine with reasons):

1. `collect_errors`: the student answers the validation set with numbered steps → `errors`
   (every answer, `correct` or not; unreadable outputs quarantined with their reason);
2. `identify_mistakes`: for each wrong answer, the teacher's probabilities after each prefix
   of the steps (answer-switch) and the one missing skill it names → `mistakes`;
3. `label_pool`: the skills each pool sample exercises, labelled once per sample and teacher;
   a grown pool labels only its new samples (a new part beside the earlier ones);
4. `write_selection`: the selected pool samples as training conversations → `selected`.
"""

import hashlib
from collections.abc import Collection, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Dataset, Manifest, ParentRef, manifest_exists
from adamllm_core.engines import EngineConfig, Message, make_engine
from adamllm_core.engines.base import ChatRequest, Engine, SamplingConfig
from adamllm_core.engines.cache import shards_on_engine
from adamllm_core.errors import Rejected
from adamllm_core.evaluation.benchmarks import benchmark
from adamllm_core.evaluation.items import EvalItem
from adamllm_core.evaluation.run import question_input, readable_items
from adamllm_core.evaluation.scoring import gold_text, score_item
from adamllm_core.executor import (
    ProgressFn,
    Shard,
    ShardedExecutor,
    ShardOutput,
    StageOutput,
    run_stage,
)
from adamllm_core.hashing import canonical_json, sha256_hex
from adamllm_core.images import ImagePolicy
from adamllm_core.pipeline import model_stage_config
from adamllm_core.schemas import (
    MISTAKES,
    POOL_LABELS,
    SELECTED,
    STUDENT_ANSWERS,
    ChatTurn,
    Mistake,
    PoolLabel,
    QuarantineRow,
    SelectedSample,
    StudentAnswer,
)
from adamllm_core.selection.retrieval import Selected
from adamllm_core.selection.skills import normalise_skill, split_skills
from adamllm_core.selection.steps import parse_reasoning, step_prompt
from adamllm_core.selection.switch import SwitchConfig, choice_probabilities, find_switch
from adamllm_core.selection.teacher import (
    TeacherPrompts,
    label_request,
    skill_request,
    switch_request,
)
from adamllm_core.storage import filesystem, join, listing_fingerprint, normalise_uri, redact
from adamllm_core.version import code_version

SELECTION_CODE = code_version(__name__)


# --- 1. the student's errors ----------------------------------------------------------------


class ErrorsConfig(BaseModel):
    """The student on the validation set (the paper's is about 1,000 questions)."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str = Field(description="any benchmark the evaluation suite reads")
    data: str = Field(description="its file or folder (release or generic jsonl/Parquet form)")
    engine: EngineConfig = Field(description="the student")
    limit: int | None = Field(default=None, gt=0, description="the first N questions only")
    max_new_tokens: int = Field(default=256, gt=0)
    prompt: Literal["steps", "question"] = Field(
        default="steps",
        description="steps: the question, its options and the numbered-steps format; question:"
        " the question alone (a student that always reasons)",
    )
    rows_per_shard: int = Field(default=256, gt=0)
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    seed: int = Field(default=0, description="seeds the benchmark's random option fallback")


def answer_id(benchmark_name: str, qid: str, student: str) -> str:
    return sha256_hex(f"{benchmark_name}\0{qid}\0{student}")[:32]


def student_request(item: EvalItem, config: ErrorsConfig) -> ChatRequest:
    question = item.question or item.prompt or ""
    content = step_prompt(question, item.choices) if config.prompt == "steps" else question
    return ChatRequest(
        messages=(Message(role="user", content=content, images=1),),
        images=(item.image,),
        sampling=SamplingConfig(max_new_tokens=config.max_new_tokens, seed=config.seed),
    )


def collect_errors(
    config: ErrorsConfig,
    out_uri: str,
    *,
    cache_uri: str | None = None,
    engine: Engine | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Manifest:
    """The `errors` dataset: the student's steps and answer for every validation question,
    scored as the benchmark scores answers. Refused questions (an unreadable image, an
    output without steps or answer) are quarantined with the reason."""
    spec = benchmark(config.benchmark)
    engine = engine or make_engine(config.engine)
    student = engine.model_identity
    settings = model_stage_config(config, engine)
    settings.pop("data")  # the listing fingerprint below stands for the files
    executor = ShardedExecutor(
        stage="errors",
        outputs={"errors": StageOutput(normalise_uri(out_uri), STUDENT_ANSWERS)},
        parents=[
            ParentRef(
                uri=redact(config.data), fingerprint=listing_fingerprint(config.data), kind="source"
            )
        ],
        config=settings,
        code=SELECTION_CODE,
        overwrite=overwrite,
    )

    def process_many(group: list[tuple[list[EvalItem], Shard]]) -> list[ShardOutput]:
        outputs, readable_of = [], []
        for chunk, shard in group:
            readable, refused = readable_items(chunk, shard, config.images, "errors")
            outputs.append(ShardOutput(rows={"errors": []}, quarantine=refused))
            readable_of.append((readable, shard))
        answered = shards_on_engine(
            engine,
            readable_of,
            lambda entry: student_request(entry[1], config),
            cache_uri,
            config.engine.batch_size,
        )
        for output, (readable, shard), (results, counts) in zip(outputs, readable_of, answered):
            output.counters.update(counts)
            for (position, item), result in zip(readable, results, strict=True):
                try:
                    if (refusal := result.refusal()) is not None:
                        raise refusal
                    reasoning = parse_reasoning(result.text)
                except Rejected as problem:
                    output.quarantine.append(
                        QuarantineRow.of(
                            problem,
                            stage="errors",
                            input_index=shard.offset + position,
                            source_ref=item.source,
                            record_id=item.qid,
                            record=result.text,
                        )
                    )
                    continue
                scored = score_item(spec, item, reasoning.answer, config.seed)
                output.rows["errors"].append(
                    StudentAnswer(
                        id=answer_id(spec.name, item.qid, student),
                        benchmark=spec.name,
                        qid=item.qid,
                        question=item.question or item.prompt or "",
                        choices=item.choices,
                        gold=gold_text(item),
                        steps=list(reasoning.steps),
                        answer=reasoning.answer,
                        correct=scored.score >= 1.0,
                        score=scored.score,
                        student=student,
                        raw_output=result.text,
                        source=item.source,
                        metadata=item.metadata,
                    )
                )
                output.counters["wrong" if scored.score < 1.0 else "correct"] += 1
        return outputs

    manifests = executor.execute(
        question_input(spec.name, config.data, config.limit, config.rows_per_shard),
        None,
        progress=progress,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
    )
    return manifests["errors"]


# --- 2. mistakes and missing skills ---------------------------------------------------------


class MistakeConfig(BaseModel):
    """The teacher's diagnosis of each wrong answer."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig = Field(description="the teacher (text only)")
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    identify: bool = Field(
        default=True,
        description="find the erroneous step by answer-switch; false (the ablation): the"
        " skill is named from the whole reasoning",
    )
    prompts: TeacherPrompts = Field(default_factory=TeacherPrompts)


def answer_options(row: dict[str, Any]) -> list[str]:
    """What the teacher weighs: the question's options; for an open question, the gold
    answer and the student's."""
    options = list(dict.fromkeys(row["choices"] or [row["gold"], row["answer"]]))
    if row["gold"] not in options:
        options.insert(0, row["gold"])
    return options


def identify_mistakes(
    errors_uri: str,
    out_uri: str,
    config: MistakeConfig,
    *,
    cache_uri: str | None = None,
    engine: Engine | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Manifest:
    """The `mistakes` dataset: each wrong answer with its answer-switch trace, status and
    erroneous step, and the missing skill the teacher names. Correct answers are counted,
    not copied; a wrong answer with one option to weigh is quarantined."""
    engine = engine or make_engine(config.engine)
    teacher = engine.model_identity
    prompts = config.prompts

    def process_many(group: list[tuple[list[dict[str, Any]], Shard]]) -> list[ShardOutput]:
        outputs, wrong_of = [], []
        for rows, shard in group:
            output = ShardOutput(rows={"mistakes": []}, rows_in=len(rows))
            wrong = []
            for position, row in enumerate(rows):
                if row["correct"]:
                    output.counters["correct_skipped"] += 1
                    continue
                options = answer_options(row)
                if len(options) < 2:
                    problem = Rejected(
                        "one_option", f"only {options!r} to weigh: the answer is the gold"
                    )
                    output.quarantine.append(
                        QuarantineRow.of(
                            problem,
                            stage="mistakes",
                            input_index=shard.offset + position,
                            source_ref=row["qid"],
                            record_id=row["id"],
                        )
                    )
                    continue
                wrong.append((position, row, options))
            outputs.append(output)
            wrong_of.append((wrong, shard))
        traces: list[list[list[dict[str, float]]]] = []
        if config.identify:
            prefixes = [
                (
                    [
                        (row, options, k)
                        for _, row, options in wrong
                        for k in range(len(row["steps"]) + 1)
                    ],
                    shard,
                )
                for wrong, shard in wrong_of
            ]
            scored = shards_on_engine(
                engine,
                prefixes,
                lambda p: switch_request(
                    p[0]["question"], p[1], p[0]["gold"], p[0]["steps"][: p[2]], prompts
                ),
                cache_uri,
                config.engine.batch_size,
            )
            for (wrong, _), (results, _) in zip(wrong_of, scored, strict=True):
                shard_traces, start = [], 0
                for _, row, options in wrong:
                    points = results[start : start + len(row["steps"]) + 1]
                    start += len(row["steps"]) + 1
                    shard_traces.append(
                        [
                            {
                                option: choice_probabilities(r.choice_scores or {}).get(
                                    f" {option}", 0.0
                                )
                                for option in options
                            }
                            for r in points
                        ]
                    )
                traces.append(shard_traces)
        else:
            traces = [[[] for _ in wrong] for wrong, _ in wrong_of]
        found = []
        for (wrong, shard), shard_traces in zip(wrong_of, traces, strict=True):
            shard_found = []
            for (position, row, options), trace in zip(wrong, shard_traces, strict=True):
                switch = find_switch(trace, row["gold"], config.switch) if trace else None
                shard_found.append((position, row, options, trace, switch))
            found.append((shard_found, shard))
        named = shards_on_engine(
            engine,
            found,
            lambda f: skill_request(
                f[1]["question"],
                f[1]["gold"],
                f[1]["answer"],
                f[1]["steps"],
                f[4].step if f[4] is not None else None,
                prompts,
            ),
            cache_uri,
            config.engine.batch_size,
        )
        for output, (shard_found, shard), (results, counts) in zip(outputs, found, named):
            output.counters.update(counts)
            for (position, row, options, trace, switch), result in zip(
                shard_found, results, strict=True
            ):
                skill = normalise_skill(result.text)
                if result.refusal() is not None or not skill:
                    problem = result.refusal() or Rejected(
                        "no_skill", f"the teacher named no skill: {result.text[:200]!r}"
                    )
                    output.quarantine.append(
                        QuarantineRow.of(
                            problem,
                            stage="mistakes",
                            input_index=shard.offset + position,
                            source_ref=row["qid"],
                            record_id=row["id"],
                        )
                    )
                    continue
                status = switch.status if switch is not None else "whole_reasoning"
                output.counters[f"status_{status}"] += 1
                output.rows["mistakes"].append(
                    Mistake(
                        id=row["id"],
                        qid=row["qid"],
                        question=row["question"],
                        gold=row["gold"],
                        answer=row["answer"],
                        steps=list(row["steps"]),
                        status=status,
                        step=switch.step if switch is not None else None,
                        wrong_option=switch.wrong_option if switch is not None else None,
                        trace={
                            "options": options,
                            "probabilities": [[point[o] for o in options] for point in trace],
                        },
                        skill_raw=result.text,
                        skill=skill,
                        teacher=teacher,
                        metadata=row["metadata"] if isinstance(row["metadata"], dict) else {},
                    )
                )
        return outputs

    manifests = run_stage(
        stage="mistakes",
        input_uri=errors_uri,
        outputs={"mistakes": StageOutput(normalise_uri(out_uri), MISTAKES)},
        config=model_stage_config(config, engine),
        process=None,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
        code=SELECTION_CODE,
        overwrite=overwrite,
        progress=progress,
    )
    return manifests["mistakes"]


# --- 3. pool labels -------------------------------------------------------------------------


class LabelConfig(BaseModel):
    """The teacher labelling pool samples with the skills they exercise."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig = Field(description="the teacher (text only)")
    prompts: TeacherPrompts = Field(default_factory=TeacherPrompts)


def teacher_key(config: LabelConfig, engine: Engine) -> str:
    """Labels are kept per teacher and prompt: another teacher labels the pool again."""
    identity = {
        "engine": config.engine.identity_dump(),
        "model_identity": engine.model_identity,
        "prompt": label_request("{instruction}", "{answer}", config.prompts).model_dump(
            mode="json"
        ),
    }
    return sha256_hex(canonical_json(identity))[:16]


def label_parts(labels_root: str) -> list[str]:
    """The finished label datasets under one teacher's folder, in name order."""
    fs, path = filesystem(labels_root)
    if not fs.exists(path):
        return []
    parts = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [
        uri
        for name in parts
        if name.startswith("part-")
        if manifest_exists(uri := join(normalise_uri(labels_root), name))
    ]


class PoolLabels(BaseModel):
    """One teacher's labels of a pool: its folder (the skill index is kept there too) and the
    finished label datasets in it, oldest first."""

    model_config = ConfigDict(frozen=True)
    root: str
    parts: list[str]


def label_pool(
    pool_uri: str,
    labels_root: str,
    config: LabelConfig,
    *,
    cache_uri: str | None = None,
    engine: Engine | None = None,
    progress: ProgressFn | None = None,
) -> PoolLabels:
    """Every pool sample labelled once by this teacher: the label datasets (parts) under
    `labels_root/<teacher key>/`. Samples some part already labels are skipped; the others
    become a new part named by the pool's fingerprint."""
    engine = engine or make_engine(config.engine)
    root = join(normalise_uri(labels_root), teacher_key(config, engine))
    pool = Dataset(pool_uri)
    part = join(root, f"part-{pool.manifest.fingerprint[:16]}")
    earlier = [uri for uri in label_parts(root) if uri != part]
    if (
        manifest_exists(part)
        and Dataset(part).manifest.parents[0].fingerprint == pool.manifest.fingerprint
    ):
        return PoolLabels(root=root, parts=[*earlier, part])
    known: set[str] = set()
    for uri in earlier:  # ids only: what a part holds is read when the index is built
        part_data = Dataset(uri)
        known.update(row["id"] for row in part_data.iter_rows(["id"]))
        if (refused := part_data.quarantine()) is not None:  # asked once already, too
            known.update(row["record_id"] for row in refused.iter_rows(["record_id"]))
    teacher = engine.model_identity

    def process_many(group: list[tuple[list[dict[str, Any]], Shard]]) -> list[ShardOutput]:
        todo = []
        outputs = []
        for rows, shard in group:
            output = ShardOutput(rows={"labels": []}, rows_in=len(rows))
            fresh = [(p, row) for p, row in enumerate(rows) if row["id"] not in known]
            output.counters["already_labelled"] = len(rows) - len(fresh)
            outputs.append(output)
            todo.append((fresh, shard))
        answered = shards_on_engine(
            engine,
            todo,
            lambda entry: label_request(
                entry[1]["instruction"], entry[1]["answer"], config.prompts
            ),
            cache_uri,
            config.engine.batch_size,
        )
        for output, (rows, shard), (results, counts) in zip(outputs, todo, answered):
            output.counters.update(counts)
            for (position, row), result in zip(rows, results, strict=True):
                skills = split_skills(result.text) if result.refusal() is None else []
                if not skills:
                    problem = result.refusal() or Rejected(
                        "no_skill", f"the teacher named no skill: {result.text[:200]!r}"
                    )
                    output.quarantine.append(
                        QuarantineRow.of(
                            problem,
                            stage="label_pool",
                            input_index=shard.offset + position,
                            source_ref=row["id"],
                            record_id=row["id"],
                        )
                    )
                    continue
                output.rows["labels"].append(
                    PoolLabel(
                        id=row["id"],
                        task=row["task"],
                        skills=skills,
                        raw=result.text,
                        teacher=teacher,
                    )
                )
        return outputs

    settings = model_stage_config(config, engine)
    settings["labelled_before"] = sorted(Dataset(uri).manifest.fingerprint for uri in earlier)
    run_stage(
        stage="label_pool",
        input_uri=pool_uri,
        outputs={"labels": StageOutput(part, POOL_LABELS)},
        config=settings,
        process=None,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
        code=SELECTION_CODE,
        columns=["id", "task", "instruction", "answer"],
        progress=progress,
    )
    return PoolLabels(root=root, parts=[*earlier, part])


def label_rows(parts: Collection[str]) -> Iterator[tuple[str, str, str]]:
    """(id, task, skills as one text) over every part: what the skill index is built from."""
    for uri in parts:
        for row in Dataset(uri).iter_rows(["id", "task", "skills"]):
            yield row["id"], row["task"], ", ".join(row["skills"])


# --- 4. the selected training data ----------------------------------------------------------


def selected_id(method: str, sample_id: str) -> str:
    return hashlib.sha256(f"{method}\0{sample_id}".encode()).hexdigest()[:32]


def write_selection(
    pool_uri: str,
    selection: list[Selected],
    method: str,
    out_uri: str,
    *,
    replay_uri: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Manifest:
    """The selected pool samples as training conversations (image, instruction, answer),
    in pool order, then every sample of `replay_uri` (a pool dataset of the student's own
    kind of data, replayed beside any selection; method `replay`). A selected id the pool
    does not hold is an error, never a silent gap."""
    chosen = {sample.id: sample for sample in selection}
    if len(chosen) != len(selection):
        raise ValueError(f"{method}: the selection names a sample more than once")
    absent = set(chosen)
    for row in Dataset(pool_uri).iter_rows(["id"]):
        absent.discard(row["id"])
    if absent:
        raise ValueError(
            f"{method}: {len(absent)} selected samples are not in the pool {redact(pool_uri)},"
            f" e.g. {min(absent)!r}"
        )

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={"selected": []}, rows_in=len(rows))
        for row in rows:
            sample = (
                chosen.get(row["id"])
                if shard.source == 0
                else Selected(row["id"], row["task"], "", 0, 0.0)
            )
            if sample is None:
                output.counters["not_selected"] += 1
                continue
            output.counters["replayed" if shard.source else "selected"] += 1
            output.rows["selected"].append(
                SelectedSample(
                    id=selected_id(method if shard.source == 0 else "replay", row["id"]),
                    sample_id=row["id"],
                    task=row["task"],
                    method=method if shard.source == 0 else "replay",
                    query=sample.query,
                    rank=sample.rank,
                    score=sample.score,
                    image=row["image"],
                    image_format=row["image_format"],
                    messages=[
                        ChatTurn(role="user", content="<image>" + row["instruction"]),
                        ChatTurn(role="assistant", content=row["answer"]),
                    ],
                )
            )
        return output

    config = {
        "method": method,
        "selection": sha256_hex(canonical_json([s.__dict__ for s in selection])),
    }
    manifests = run_stage(
        stage="select",
        input_uri=[pool_uri, replay_uri] if replay_uri else pool_uri,
        outputs={"selected": StageOutput(normalise_uri(out_uri), SELECTED)},
        config=config,
        process=process,
        code=SELECTION_CODE,
        columns=["id", "task", "instruction", "answer", "image", "image_format"],
        overwrite=overwrite,
        progress=progress,
    )
    return manifests["selected"]
