"""Record schemas: one pydantic model per dataset kind, its Arrow schema derived from it.

Every kind is registered once under a name and version; the manifest names it. Later
kinds (task triplets, judged triplets, training conversations, predictions) follow the
same pattern and carry the ids of the rows they were made from (`lineage_fields`).
"""

import json
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Union

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adamllm_core.errors import Rejected
from adamllm_core.hashing import canonical_json


class Record(BaseModel):
    """Base of every row kind. `dict` fields are stored as JSON strings in Parquet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lineage_fields: ClassVar[tuple[str, ...]] = ()


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Arrow type for a field annotation, and whether it is nullable."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unions other than Optional[X] are not storable: {annotation}")
        arrow_type, _ = _arrow_type(members[0])
        return arrow_type, True
    if origin is Literal:
        return pa.string(), False
    if origin is list:
        (item,) = typing.get_args(annotation)
        item_type, _ = _arrow_type(item)
        return pa.list_(item_type), False
    if origin is dict or annotation is dict:
        return pa.string(), False  # JSON text: free-form metadata stays queryable in duckdb/polars
    scalar = {
        str: pa.string(),
        bytes: pa.binary(),
        bool: pa.bool_(),
        int: pa.int64(),
        float: pa.float64(),
        datetime: pa.timestamp("us", tz="UTC"),
    }
    if annotation in scalar:
        return scalar[annotation], False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(arrow_schema_for(annotation)), False
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_schema_for(model: type[BaseModel]) -> pa.Schema:
    fields = []
    for name, info in model.model_fields.items():
        arrow_type, nullable = _arrow_type(info.annotation)
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return pa.schema(fields)


def _json_fields(model: type[Record]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) in (Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if typing.get_origin(annotation) is dict or annotation is dict:
            names.add(name)
    return names


@dataclass(frozen=True)
class RecordSchema:
    """A registered dataset kind: name, version, pydantic model and Arrow schema."""

    name: str
    version: int
    model: type[Record]
    description: str

    @property
    def arrow(self) -> pa.Schema:
        return arrow_schema_for(self.model).with_metadata(
            {"adamllm.schema": self.name, "adamllm.schema_version": str(self.version)}
        )

    def to_table(self, rows: list[Record]) -> pa.Table:
        """Rows to an Arrow table in this schema (dict fields as canonical JSON)."""
        json_fields = _json_fields(self.model)
        columns: dict[str, list[Any]] = {name: [] for name in self.model.model_fields}
        for row in rows:
            if not isinstance(row, self.model):
                raise TypeError(f"{self.name} rows must be {self.model.__name__}, got {type(row)}")
            for name, values in columns.items():
                value = getattr(row, name)
                if name in json_fields and value is not None:
                    value = canonical_json(value)
                elif isinstance(value, BaseModel) or (
                    isinstance(value, list) and value and isinstance(value[0], BaseModel)
                ):
                    value = (
                        [v.model_dump() for v in value]
                        if isinstance(value, list)
                        else value.model_dump()
                    )
                values.append(value)
        return pa.Table.from_pydict(columns, schema=self.arrow)

    def from_arrow_row(self, row: dict[str, Any]) -> Record:
        json_fields = _json_fields(self.model)
        values = {
            k: (json.loads(v) if k in json_fields and isinstance(v, str) else v)
            for k, v in row.items()
            if k in self.model.model_fields
        }
        return self.model(**values)


_REGISTRY: dict[str, RecordSchema] = {}


def register_schema(schema: RecordSchema) -> RecordSchema:
    if schema.name in _REGISTRY:
        raise ValueError(f"record schema {schema.name!r} is already registered")
    _REGISTRY[schema.name] = schema
    return schema


def get_schema(name: str) -> RecordSchema:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown record schema {name!r}; known: {sorted(_REGISTRY)}") from None


# --- kinds -------------------------------------------------------------------------------


class ImageCaptionPair(Record):
    """A domain image with its caption: the input of synthesis (paper section 3.1)."""

    id: str = Field(
        description="sha256 of the original image bytes, a NUL, and the caption (hex, 32)"
    )
    image: bytes = Field(
        description="image bytes as the models take them (JPEG, PNG or WebP; RGB or L)"
    )
    image_format: str = Field(description="format of `image`: jpeg, png or webp")
    width: int
    height: int
    image_sha256: str = Field(description="sha256 of the original image file bytes")
    caption: str
    domain: str
    source: str = Field(description="URI of the source the pair was ingested from")
    source_ref: str = Field(
        description="where in the source: annotation file and line, or file and row"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="free metadata (JSON)")

    lineage_fields: ClassVar[tuple[str, ...]] = ("source_ref",)


class QuarantineRow(Record):
    """An input a stage rejected, with why; every rejected input becomes exactly one of these."""

    stage: str
    input_index: int = Field(description="position of the input in the stage's input order")
    source_ref: str
    reason: str = Field(description="machine-readable reason, e.g. truncated, duplicate")
    detail: str = Field(description="human-readable explanation")
    record_id: str | None = Field(
        default=None, description="id of the rejected row, when it has one"
    )
    duplicate_of: str | None = None
    image_sha256: str | None = None
    caption: str | None = Field(
        default=None, description="the raw caption, cut to 2,000 characters"
    )
    record: str | None = Field(
        default=None, description="the raw input record as JSON, cut to 20,000 characters"
    )

    # Cut here, once for every stage: a quarantine row must stay small whatever came in.
    @field_validator("detail", "caption", mode="before")
    @classmethod
    def _cut_text(cls, value: Any) -> Any:
        return value[:2000] if isinstance(value, str) else value

    @field_validator("record", mode="before")
    @classmethod
    def _cut_record(cls, value: Any) -> Any:
        return value[:20_000] if isinstance(value, str) else value

    @classmethod
    def of(
        cls,
        problem: Rejected,
        *,
        stage: str,
        input_index: int,
        source_ref: str,
        record_id: str | None = None,
        **extra: Any,
    ) -> "QuarantineRow":
        """The row for an input `stage` refused with `problem` (its reason and detail)."""
        return cls(
            stage=stage,
            input_index=input_index,
            source_ref=source_ref,
            reason=problem.reason,
            detail=problem.detail,
            record_id=record_id,
            **extra,
        )


PAIRS = register_schema(
    RecordSchema("pairs", 1, ImageCaptionPair, "image-caption pairs (ingest output)")
)
QUARANTINE = register_schema(
    RecordSchema("quarantine", 1, QuarantineRow, "rejected inputs of a stage, with reasons")
)


class TaskTriplet(Record):
    """A synthesized task for one pair (paper section 3.1.1)."""

    id: str = Field(description="sha256 of pair_id, a NUL and the instruction (hex, 32)")
    pair_id: str
    domain: str
    instruction: str
    precise: str
    informative: str
    synthesizer: str = Field(description="model identity (id@revision or path@content hash)")
    turns: int = Field(description="turns the synthesizer wrote")
    raw_output: str
    prompt_tokens: int
    completion_tokens: int

    lineage_fields: ClassVar[tuple[str, ...]] = ("pair_id",)


class JudgedTriplet(Record):
    """A triplet with the consistency filter's label and scores (paper section 3.1.2)."""

    id: str
    pair_id: str
    triplet_id: str
    domain: str
    instruction: str
    precise: str
    informative: str
    label: str = Field(description="Yes, No or Open: the best-scored choice")
    score_yes: float
    score_no: float
    score_open: float
    judge: str = Field(description="filter model identity")
    response: str | None = Field(
        default=None, description="chain-of-thought response, for kept triplets"
    )
    response_rule: str | None = None

    lineage_fields: ClassVar[tuple[str, ...]] = ("pair_id", "triplet_id")


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    content: str


class Conversation(Record):
    """A training record: one image and its turns (paper section 3.2)."""

    id: str
    pair_id: str
    triplet_id: str | None
    domain: str
    variant: str = Field(
        description="single_stage, caption_only, synthetic_only, two_stage_1, two_stage_2"
    )
    kind: str = Field(description="caption+task, task+caption, caption, task")
    image: bytes | None = Field(
        default=None,
        description="the image, or null for the image of pair `pair_id` in the pairs dataset "
        "the mixture was assembled from (its manifest's first parent): assemble stores each "
        "image once, in the pairs; read rows with their images through conversation_rows",
    )
    image_format: str | None = None
    messages: list[ChatTurn] = Field(
        description="role/content turns; <image> opens the first user turn"
    )
    tokens: int = Field(
        description="tokens with the target model's processor, image tokens included"
    )

    lineage_fields: ClassVar[tuple[str, ...]] = ("pair_id", "triplet_id")


class SeedExample(Record):
    """Synthesizer tuning data (paper 3.1.1, Appendix B): an image-caption pair and its task triplet."""

    id: str
    task: str = Field(description="source task name (Vision-Flan has 191)")
    split: str = Field(description="train or dev (a per-task split)")
    image: bytes
    image_format: str
    blank_image: bool = Field(
        description="the image was replaced by a blank one (modality balancing)"
    )
    caption: str
    instruction: str
    precise: str
    informative: str
    source_ref: str

    lineage_fields: ClassVar[tuple[str, ...]] = ("source_ref",)


TRIPLETS = register_schema(RecordSchema("triplets", 1, TaskTriplet, "synthesized task triplets"))
JUDGED = register_schema(
    RecordSchema("judged", 1, JudgedTriplet, "triplets with consistency labels")
)
CONVERSATIONS = register_schema(
    RecordSchema("conversations", 2, Conversation, "training conversations")
)
SEED = register_schema(RecordSchema("seed", 1, SeedExample, "synthesizer tuning examples"))


class Completion(Record):
    """A text-only training example: a prompt (masked) and the completion trained after it."""

    id: str
    task: str = Field(description="what the completion teaches, e.g. consistency")
    prompt: str
    completion: str


COMPLETIONS = register_schema(
    RecordSchema("completions", 1, Completion, "text prompts with trained completions")
)


class TextChat(Record):
    """A text-only conversation (instruction tuning): assistant turns trained, as in
    post-training, rendered with the model's own chat template."""

    id: str
    task: str = Field(description="what the conversation teaches, e.g. reading")
    messages: list[ChatTurn] = Field(description="role/content turns, user first")


TEXT_CHATS = register_schema(
    RecordSchema("text_chats", 1, TextChat, "text-only conversations with trained replies")
)


class Prediction(Record):
    """One benchmark question, the model's answer and its score (paper Appendix H)."""

    id: str = Field(description="sha256 of benchmark, qid and model identity (hex, 32)")
    benchmark: str
    domain: str
    qid: str
    model: str = Field(
        description="model identity (id@revision or path@content hash), or 'external'"
    )
    prompt: str = Field(description="Table 14's instruction for this question")
    raw_output: str
    parsed: str = Field(description="the answer read from the output (option, class, labels)")
    gold: str = Field(description="gold answer (labels joined by '; ')")
    answer_type: str | None
    group: str = Field(description="open / closed for VQA benchmarks, else the metric")
    score: float = Field(description="in [0, 1]; CLOSED: the paper-compatible rule")
    score_corrected: float | None = Field(description="CLOSED only: the corrected rule")
    fallback: bool = Field(
        description="the option was drawn at random: nothing in the output parsed"
    )
    prompt_tokens: int
    completion_tokens: int
    source: str = Field(description="benchmark file and line the question came from")

    lineage_fields: ClassVar[tuple[str, ...]] = ("qid",)


PREDICTIONS = register_schema(
    RecordSchema("predictions", 1, Prediction, "benchmark predictions with scores")
)


# --- error-driven data selection (arXiv 2412.15652) -------------------------------------


class PoolSample(Record):
    """A sample of a task-agnostic instruction pool (Vision-Flan-like), which error-driven
    selection retrieves training data from."""

    id: str
    task: str = Field(description="the task it belongs to (Vision-Flan has 191)")
    instruction: str
    answer: str
    image: bytes
    image_format: str
    source_ref: str = Field(description="where it was read from: file and line, or row")
    metadata: dict[str, Any] = Field(default_factory=dict, description="free metadata (JSON)")

    lineage_fields: ClassVar[tuple[str, ...]] = ("source_ref",)


class StudentAnswer(Record):
    """The student's reasoned answer to one validation question."""

    id: str = Field(description="sha256 of benchmark, qid and student identity (hex, 32)")
    benchmark: str
    qid: str
    question: str = Field(description="the question as released (the prompt adds the format)")
    choices: list[str] | None = Field(description="the options, for a question that has them")
    gold: str
    steps: list[str] = Field(description="the reasoning steps, in order")
    answer: str = Field(description="the final answer as the student wrote it")
    correct: bool = Field(description="scored as the benchmark scores answers (score = 1)")
    score: float
    student: str = Field(description="student model identity")
    raw_output: str
    source: str = Field(description="benchmark file and line the question came from")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the question's own")

    lineage_fields: ClassVar[tuple[str, ...]] = ("qid",)


class Mistake(Record):
    """A wrong answer diagnosed by the teacher: its erroneous step (answer-switch) and the
    one skill the student lacked there."""

    id: str = Field(description="the answer's id")
    qid: str
    question: str
    gold: str
    answer: str
    steps: list[str]
    status: str = Field(
        description="switch, final_step, no_switch or tie (answer-switch); whole_reasoning"
        " when mistake identification is off"
    )
    step: int | None = Field(description="1-based erroneous step (switch, final_step)")
    wrong_option: str | None
    trace: dict[str, Any] = Field(
        description="options and the teacher's probabilities after each prefix of the steps"
    )
    skill_raw: str = Field(description="the teacher's words")
    skill: str = Field(description="normalised (merging near-duplicates comes after)")
    teacher: str = Field(description="teacher model identity")
    metadata: dict[str, Any] = Field(default_factory=dict)

    lineage_fields: ClassVar[tuple[str, ...]] = ("id", "qid")


class PoolLabel(Record):
    """The skills the teacher says a pool sample exercises."""

    id: str = Field(description="the pool sample's id")
    task: str
    skills: list[str] = Field(description="normalised, in the teacher's order")
    raw: str = Field(description="the teacher's words")
    teacher: str

    lineage_fields: ClassVar[tuple[str, ...]] = ("id",)


class SelectedSample(Record):
    """A pool sample selected for training, as a conversation with its image."""

    id: str = Field(description="sha256 of the selection method and the sample id (hex, 32)")
    sample_id: str
    task: str
    method: str = Field(description="error_driven, random, instruction_similarity, full, ...")
    query: str = Field(description="the skill or question that retrieved it; empty if none")
    rank: int = Field(description="its place in that query's ranking, from 0")
    score: float = Field(description="BM25 score for that query")
    image: bytes
    image_format: str
    messages: list[ChatTurn] = Field(description="the instruction (<image> first), the answer")

    lineage_fields: ClassVar[tuple[str, ...]] = ("sample_id",)


POOL = register_schema(RecordSchema("pool", 1, PoolSample, "task-agnostic instruction pool"))
STUDENT_ANSWERS = register_schema(
    RecordSchema("student_answers", 1, StudentAnswer, "a student's reasoned answers")
)
MISTAKES = register_schema(
    RecordSchema("mistakes", 1, Mistake, "wrong answers with the erroneous step and skill")
)
POOL_LABELS = register_schema(
    RecordSchema("pool_labels", 1, PoolLabel, "skills a teacher named for pool samples")
)
SELECTED = register_schema(
    RecordSchema("selected", 1, SelectedSample, "pool samples selected for training")
)
