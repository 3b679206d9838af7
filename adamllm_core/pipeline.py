"""The AdaMLLM data stages over datasets: synthesize, filter, assemble, export.

Each is a plain function from input dataset URIs to output dataset URIs (see stage.py for
resume and idempotency); `tasks/` wraps them for Prefect.
"""

import hashlib
import io
import json
import random
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterator
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Dataset, DatasetError, Manifest, RowGroupReader
from adamllm_core.engines import Engine, make_engine
from adamllm_core.engines.base import ChatResult, ImageResolution, Message
from adamllm_core.engines.cache import shards_on_engine
from adamllm_core.engines.hf import HFRenderer, SizedTokenCounter, model_identity
from adamllm_core.errors import Rejected
from adamllm_core.executor import (
    ProgressFn,
    Role,
    Shard,
    ShardOutput,
    StageOutput,
    run_stage,
    stage_identity,
)
from adamllm_core.filtering import FilterConfig, chain_of_thought, judge_request, label_of
from adamllm_core.hashing import pair_id
from adamllm_core.models import resolve_model
from adamllm_core.schemas import (
    CONVERSATIONS,
    JUDGED,
    PAIRS,
    SEED,
    TRIPLETS,
    ChatTurn,
    Conversation,
    ImageCaptionPair,
    JudgedTriplet,
    QuarantineRow,
    TaskTriplet,
)
from adamllm_core.storage import (
    filesystem,
    join,
    normalise_uri,
    put_file_atomic,
    redact,
    write_bytes_atomic,
)
from adamllm_core.synthesis import (
    PromptContext,
    SynthConfig,
    parse_triplet,
    prompt_context,
    synth_request,
    triplet_id,
)
from adamllm_core.version import code_version

# Synthesize, filter and assemble: outputs change with this module and what it imports.
PIPELINE_CODE = code_version(__name__)


def _refused(result: ChatResult) -> None:
    """A request the engine refused on its own (see run_isolating) quarantines its row."""
    if (refusal := result.refusal()) is not None:
        raise refusal


def model_stage_config(config: BaseModel, engine: Engine) -> dict[str, Any]:
    """What decides a model stage's output: its settings and the model's identity, not the engine."""
    dumped = config.model_dump(mode="json")
    dumped["engine"] = config.engine.identity_dump()  # type: ignore[attr-defined]
    dumped["model_identity"] = engine.model_identity
    return dumped


# --- synthesize ---------------------------------------------------------------------------


def synthesize(
    pairs_uri: str,
    out: str,
    config: SynthConfig,
    *,
    cache_uri: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    engine: Engine | None = None,
    role: Role = "all",
    shards: Collection[int] | None = None,
) -> Manifest | None:
    """Pairs → task triplets; unparseable outputs are quarantined with their reason and raw text.

    Roles other than "all" (an engine pool's driver and workers, see pool.py) return None,
    except that "prepare" returns the manifest when the stage is already finished.
    """
    engine = engine or make_engine(config.engine)

    @cache  # on the first shard to do: a finished stage loads no processor
    def context() -> PromptContext:
        renderer = getattr(engine, "renderer", None)  # reuse the engine's loaded processor
        if config.template_model or not isinstance(renderer, HFRenderer):
            renderer = HFRenderer(resolve_model(config.template_model or config.engine.model))
        return prompt_context(renderer, config)

    def process_many(group: list[tuple[list[dict[str, Any]], Shard]]) -> list[ShardOutput]:
        answered = shards_on_engine(
            engine,
            group,
            lambda r: synth_request(r["caption"], r["image"], config, context()),
            cache_uri,
            config.engine.batch_size,
        )
        return [build(rows, shard, *found) for (rows, shard), found in zip(group, answered)]

    def build(
        rows: list[dict[str, Any]], shard: Shard, results: list[ChatResult], counts: Counter
    ) -> ShardOutput:
        output = ShardOutput(rows={"triplets": []})
        output.counters.update(counts)
        for position, (row, result) in enumerate(zip(rows, results, strict=True)):
            try:
                _refused(result)
                parsed = parse_triplet(result.text, context().delimiters)
            except Rejected as error:
                output.quarantine.append(
                    QuarantineRow.of(
                        error,
                        stage="synthesize",
                        input_index=shard.offset + position,
                        source_ref=row["id"],
                        record_id=row["id"],
                        record=result.text,
                    )
                )
                continue
            output.rows["triplets"].append(
                TaskTriplet(
                    id=triplet_id(row["id"], parsed.instruction),
                    pair_id=row["id"],
                    domain=row["domain"],
                    instruction=parsed.instruction,
                    precise=parsed.precise,
                    informative=parsed.informative,
                    synthesizer=engine.model_identity,
                    turns=parsed.turns,
                    raw_output=result.text,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                )
            )
        output.counters["completion_tokens"] += sum(r.completion_tokens for r in results)
        return output

    manifests = run_stage(
        stage="synthesize",
        input_uri=pairs_uri,
        outputs={"triplets": StageOutput(out, TRIPLETS)},
        config=model_stage_config(config, engine),
        process=None,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
        code=PIPELINE_CODE,
        columns=["id", "image", "caption", "domain"],
        overwrite=overwrite,
        progress=progress,
        role=role,
        shards=shards,
    )
    return manifests.get("triplets")


# --- filter -------------------------------------------------------------------------------


def filter_triplets(
    triplets_uri: str,
    out_kept: str,
    out_rejected: str,
    config: FilterConfig,
    *,
    cache_uri: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    engine: Engine | None = None,
    role: Role = "all",
    shards: Collection[int] | None = None,
) -> tuple[Manifest, Manifest] | None:
    """Triplets → `filtered` (label in keep, with chain-of-thought response) and `rejected`."""
    engine = engine or make_engine(config.engine)

    def process_many(group: list[tuple[list[dict[str, Any]], Shard]]) -> list[ShardOutput]:
        answered = shards_on_engine(
            engine,
            group,
            lambda r: judge_request(
                r["instruction"], r["informative"], r["precise"], config.template
            ),
            cache_uri,
            config.engine.batch_size,
        )
        return [build(rows, shard, results) for (rows, shard), (results, _) in zip(group, answered)]

    def build(rows: list[dict[str, Any]], shard: Shard, results: list[ChatResult]) -> ShardOutput:
        output = ShardOutput(rows={"filtered": [], "rejected": []})
        for position, (row, result) in enumerate(zip(rows, results, strict=True)):
            if (refusal := result.refusal()) is not None:
                output.quarantine.append(
                    QuarantineRow.of(
                        refusal,
                        stage="filter",
                        input_index=shard.offset + position,
                        source_ref=row["id"],
                        record_id=row["id"],
                    )
                )
                continue
            label, scores = label_of(result.choice_scores or {})
            kept = label in config.keep
            response, rule = (
                chain_of_thought(
                    row["informative"], row["precise"], seed=config.seed, key=row["id"]
                )
                if kept
                else (None, None)
            )
            judged = JudgedTriplet(
                id=row["id"],
                pair_id=row["pair_id"],
                triplet_id=row["id"],
                domain=row["domain"],
                instruction=row["instruction"],
                precise=row["precise"],
                informative=row["informative"],
                label=label,
                score_yes=scores["Yes"],
                score_no=scores["No"],
                score_open=scores["Open"],
                judge=engine.model_identity,
                response=response,
                response_rule=rule,
            )
            output.rows["filtered" if kept else "rejected"].append(judged)
            output.counters[f"label_{label.lower()}"] += 1
        return output

    manifests = run_stage(
        stage="filter",
        input_uri=triplets_uri,
        outputs={
            "filtered": StageOutput(out_kept, JUDGED),
            "rejected": StageOutput(out_rejected, JUDGED),
        },
        config=model_stage_config(config, engine),
        process=None,
        process_many=process_many,
        rows_per_call=config.engine.batch_size,
        code=PIPELINE_CODE,
        columns=["id", "pair_id", "domain", "instruction", "precise", "informative"],
        overwrite=overwrite,
        progress=progress,
        role=role,
        shards=shards,
    )
    return (manifests["filtered"], manifests["rejected"]) if manifests else None


# --- assemble -----------------------------------------------------------------------------

# The caption task's instruction when a pair brings none of its own (ingest keeps a
# record's, e.g. "Generate a recipe for this delicious food.", as metadata.caption_prompt):
# one drawn per record from a pool of describe-the-image requests, as the paper draws from
# ALLaVA's (Chen et al., 2024a). The wording here is ours, not a copy of ALLaVA's list.
CAPTION_PROMPTS = (
    "Describe the image.",
    "Describe the image in detail.",
    "What is shown in this image?",
    "Write a detailed description of this image.",
    "Provide a caption for this image.",
    "Explain the contents of the image.",
    "Give a thorough description of what you see in the image.",
    "Summarize the visual content of the image.",
    "What can you tell me about this image?",
    "Describe the key elements of this picture.",
    "Can you describe this image for me?",
    "Write a caption that describes the image.",
)

Variant = Literal[
    "single_stage",
    "two_stage",
    "caption_only",
    "synthetic_only",
    "two_stage_reuse",
    "no_filter_precise",
    "no_filter_informative",
    "general_cot",
    "general_cot_domain_caption",
]
# The mixtures (output datasets) of each variant: paper 3.2, and Table 5's ablations.
VARIANT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "single_stage": ("single_stage",),
    "two_stage": ("two_stage_1", "two_stage_2"),
    "caption_only": ("caption_only",),
    "synthetic_only": ("synthetic_only",),
    "two_stage_reuse": ("two_stage_1", "two_stage_reuse_2"),
    "no_filter_precise": ("no_filter_precise",),
    "no_filter_informative": ("no_filter_informative",),
    "general_cot": ("general_cot",),
    "general_cot_domain_caption": ("general_cot_domain_caption",),
}
VARIANTS = tuple(dict.fromkeys(name for names in VARIANT_OUTPUTS.values() for name in names))
# Without the consistency filter: every parsed triplet, answered by one of its responses.
UNFILTERED_RESPONSE = {"no_filter_precise": "precise", "no_filter_informative": "informative"}
# Trained on the seed data in the task format (general_tasks, then the same filter).
GENERAL_OUTPUTS = ("general_cot", "general_cot_domain_caption")
# Outputs with separate caption and task records of one pair
MIXED_KINDS = ("two_stage_reuse_2", "general_cot_domain_caption")


class AssembleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_model: str = Field(description="the MLLM to post-train: its processor counts tokens")
    max_seq_len: int = Field(default=6144, gt=0)
    over_length: Literal["drop", "keep"] = Field(
        default="drop", description="records over max_seq_len"
    )
    seed: int = 0
    variants: tuple[Variant, ...] = Field(
        default=("single_stage",),
        description="single_stage (the paper's); Table 5's ablations: two_stage (captions,"
        " then tasks), caption_only, synthetic_only, two_stage_reuse (captions, then tasks"
        " with the captions again), no_filter_precise and no_filter_informative (every parsed"
        " triplet, one response), general_cot (the seed data in the task format, filtered"
        " the same way) and general_cot_domain_caption (that, with the domain's captions)",
    )
    image_resolution: ImageResolution = Field(
        default_factory=ImageResolution,
        description="pixel bounds for a Qwen2-VL-family target: the training's own",
    )


def seeded_rng(seed: int, *parts: str) -> random.Random:
    """A generator seeded by (seed, parts): the same draws for the same key, on any machine."""
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def caption_turn(pair: dict[str, Any], seed: int) -> tuple[str, str]:
    """The caption task of a pair: its own caption prompt where it has one, else one
    drawn from the pool by the pair's id."""
    metadata = pair.get("metadata")
    if isinstance(metadata, str):
        metadata = json.loads(metadata or "{}")
    prompt = (metadata or {}).get("caption_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        prompt = seeded_rng(seed, "prompt", pair["id"]).choice(CAPTION_PROMPTS)
    return prompt.strip(), pair["caption"]


def _records(
    output: str,
    pair: dict[str, Any],
    *,
    caption: tuple[str, str],
    general: bool,
    kept: dict[str, Any] | None,
    parsed: dict[str, Any] | None,
    seed: int,
) -> list[tuple[str, list[tuple[str, str]]]]:
    """The records (kind, rounds) a pair gives in one output. `caption`: its caption turn;
    `general`: a pair of the seed data; `kept`: its task that passed the filter; `parsed`:
    its first parsed triplet."""
    task = (kept["instruction"], kept["response"]) if kept else None
    if output in GENERAL_OUTPUTS:
        if general:
            return [("task", [task])] if task else []
        return [("caption", [caption])] if output == "general_cot_domain_caption" else []
    if general:
        return []
    if output in UNFILTERED_RESPONSE:
        task = (parsed["instruction"], parsed[UNFILTERED_RESPONSE[output]]) if parsed else None
    if output in ("caption_only", "two_stage_1"):
        return [("caption", [caption])]
    if output in ("synthetic_only", "two_stage_2"):
        return [("task", [task])] if task else []
    if output == "two_stage_reuse_2":  # stage 2 has the tasks and stage 1's captions again
        return [("caption", [caption])] + ([("task", [task])] if task else [])
    # single stage (with or without the filter): one record with both tasks, in seeded order
    if task is None:
        return [("caption", [caption])]
    if seeded_rng(seed, "order", pair["id"]).random() < 0.5:
        return [("caption+task", [caption, task])]
    return [("task+caption", [task, caption])]


def assemble(
    pairs_uri: str,
    filtered_uri: str,
    outs: dict[str, str],
    config: AssembleConfig,
    *,
    triplets_uri: str | None = None,
    general: tuple[str, str] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Manifest]:
    """Pairs + kept triplets → training mixtures, one dataset per output (`outs` keys from
    VARIANTS). The no-filter outputs also read `triplets_uri` (the filter's input); the
    General CoT outputs read `general`: (pairs, kept triplets) of the seed data in the task
    format (`general_tasks`, then `filter_triplets`), whose shards follow the domain's."""
    from PIL import Image

    inputs, extra = _assemble_inputs(pairs_uri, filtered_uri, list(outs), triplets_uri, general)
    renderer = HFRenderer(resolve_model(config.target_model), resolution=config.image_resolution)
    kept_of = [_first_tasks(pairs, kept, KEPT_COLUMNS) for pairs, kept in zip(inputs, extra)]
    parsed_of = (
        _first_tasks(pairs_uri, triplets_uri, PARSED_COLUMNS)
        if triplets_uri is not None and triplets_uri in extra
        else None
    )

    # Image tokens from the stored width and height through the processor's own resize
    # rule, so assembly reads no pixels; a processor without one is run on the pixels
    # (read then, a shard at a time). Loaded at the first shard: a finished stage loads
    # neither the processor nor transformers.
    @cache
    def sized_count() -> SizedTokenCounter:
        if not renderer.multimodal:
            raise ValueError(f"target_model {config.target_model} is not a vision-language model")
        probe = [
            Message(role="user", content="What is shown?", images=1),
            Message(role="assistant", content="A scan."),
        ]
        return SizedTokenCounter(renderer.processor, renderer.chat_text(probe))

    def count_tokens(
        turns: list[tuple[str, str]], pair: dict[str, Any], pixels: Callable[[], bytes]
    ) -> int:
        messages = []
        for i, (question, answer) in enumerate(turns):
            messages.append(Message(role="user", content=question, images=int(i == 0)))
            messages.append(Message(role="assistant", content=answer))
        text = renderer.chat_text(messages)
        counter = sized_count()
        if counter.available:
            if counter.placeholders(text) != 1:
                raise Rejected(
                    "image_placeholder",
                    "the rendered record does not hold exactly one image placeholder (a caption"
                    " or task with the model's image token?)",
                )
            counted = counter(text, [(pair["width"], pair["height"])])
            if counted is not None:  # else the rule fails for this size: the pixels
                return counted
        return counter.on_pixels(text, Image.open(io.BytesIO(pixels())).convert("RGB"))

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={name: [] for name in outs})
        ids = {pair["id"] for pair in rows}
        kept_tasks = kept_of[shard.source](shard.local_index, ids)
        is_general = shard.source == 1
        parsed_tasks = (
            parsed_of(shard.local_index, ids) if parsed_of is not None and not is_general else {}
        )
        shard_images = cache(
            lambda: {
                r["id"]: r["image"]
                for r in Dataset(inputs[shard.source]).read_shard(
                    shard.local_index, ["id", "image"]
                )
            }
        )
        for position, pair in enumerate(rows):
            kept, parsed = kept_tasks.get(pair["id"]), parsed_tasks.get(pair["id"])
            caption = caption_turn(pair, config.seed)
            counted: dict[tuple[tuple[str, str], ...], int] = {}  # variants share records
            quarantined = False
            for name in outs:
                records = _records(
                    name,
                    pair,
                    caption=caption,
                    general=is_general,
                    kept=kept,
                    parsed=parsed,
                    seed=config.seed,
                )
                for kind, turns in records:
                    try:
                        key = tuple(turns)
                        if key not in counted:
                            counted[key] = count_tokens(
                                turns, pair, lambda pair=pair: shard_images()[pair["id"]]
                            )
                        tokens = counted[key]
                        if tokens > config.max_seq_len:
                            output.counters[f"over_max_len_{name}"] += 1
                            if config.over_length == "drop":
                                raise Rejected(
                                    "too_long",
                                    f"{tokens} tokens > max_seq_len {config.max_seq_len}"
                                    f" ({name}, {kind})",
                                )
                    except Rejected as problem:
                        if not quarantined:  # one quarantine row per pair
                            quarantined = True
                            output.quarantine.append(
                                QuarantineRow.of(
                                    problem,
                                    stage="assemble",
                                    input_index=shard.offset + position,
                                    source_ref=pair["id"],
                                    record_id=pair["id"],
                                )
                            )
                        continue
                    messages = []
                    for i, (question, answer) in enumerate(turns):
                        messages.append(
                            ChatTurn(role="user", content=("<image>" if i == 0 else "") + question)
                        )
                        messages.append(ChatTurn(role="assistant", content=answer))
                    # a pair may give a caption and a task record here (the same image
                    # and caption may be in the general data too): the kind tells them apart
                    key = f"{name}\0{pair['id']}" + (f"\0{kind}" if name in MIXED_KINDS else "")
                    task = parsed if name in UNFILTERED_RESPONSE else kept
                    output.rows[name].append(
                        Conversation(
                            id=hashlib.sha256(key.encode()).hexdigest()[:32],
                            pair_id=pair["id"],
                            triplet_id=task["id"] if task and "task" in kind else None,
                            domain=pair["domain"],
                            variant=name,
                            kind=kind,
                            messages=messages,  # the image stays in the pairs: see conversation_rows
                            tokens=tokens,
                        )
                    )
                    output.counters[f"{name}_{kind}"] += 1
        # Every pair is accounted for: it gave records, was quarantined, or is counted here.
        output.rows_in = len(rows)
        return output

    return run_stage(
        stage="assemble",
        input_uri=inputs,
        outputs={name: StageOutput(uri, CONVERSATIONS) for name, uri in outs.items()},
        config=_assemble_config(config),
        process=process,
        code=PIPELINE_CODE,
        columns=["id", "caption", "domain", "metadata", "width", "height"],
        extra_inputs=extra,
        overwrite=overwrite,
        progress=progress,
    )


def _assemble_inputs(
    pairs_uri: str,
    filtered_uri: str,
    outputs: list[str],
    triplets_uri: str | None,
    general: tuple[str, str] | None,
) -> tuple[list[str], list[str]]:
    """What assembling these outputs reads: the pairs (the domain's, then the general
    ones: their shards numbered on), then the kept tasks of each, then the parsed
    triplets when a no-filter output needs them."""
    if unknown := set(outputs) - set(VARIANTS):
        raise ValueError(f"outputs {sorted(unknown)}: not among {', '.join(VARIANTS)}")
    inputs, extra = [pairs_uri], [filtered_uri]
    if any(name in GENERAL_OUTPUTS for name in outputs):
        if general is None:
            raise ValueError(
                "the general_cot outputs need the seed data's pairs and kept triplets"
                " (general_tasks, then the filter)"
            )
        inputs.append(general[0])
        extra.append(general[1])
    if any(name in UNFILTERED_RESPONSE for name in outputs):
        if triplets_uri is None:
            raise ValueError("the no_filter outputs need the filter's input triplets")
        extra.append(triplets_uri)
    return inputs, extra


KEPT_COLUMNS = ["pair_id", "id", "instruction", "response"]
PARSED_COLUMNS = ["pair_id", "id", "instruction", "precise", "informative"]


def _first_tasks(
    pairs_uri: str, tasks_uri: str, columns: list[str]
) -> Callable[[int, set[str]], dict[str, dict[str, Any]]]:
    """`tasks(k, pair_ids)`: the first task (in the tasks dataset's order: one per image)
    of each pair of pairs shard k, without holding every triplet.

    Synthesize and filter keep shard k of their input as their shard k, so when the tasks
    descend from these very pairs (their lineage says so) shard k of them holds every task
    of pairs shard k. Otherwise (tasks made elsewhere) each pairs shard scans the tasks:
    slower, memory still bounded."""
    pairs = Dataset(pairs_uri)
    tasks_dataset = Dataset(tasks_uri)
    aligned = len(tasks_dataset.manifest.shards) == len(pairs.manifest.shards) and _descends_from(
        tasks_dataset.manifest, pairs.manifest
    )

    def tasks(index: int, pair_ids: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        rows = (
            tasks_dataset.read_shard(index, columns)
            if aligned
            else tasks_dataset.iter_rows(columns)
        )
        for row in rows:
            if row["pair_id"] in pair_ids:
                found.setdefault(row["pair_id"], row)
        return found

    return tasks


def conversation_rows(uri: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a training dataset; a conversations dataset's with their image bytes.

    A row whose `image` is null takes the image of its pair (`pair_id`) from the pairs the
    mixture was assembled from (see PairImages), so the variants share one copy of each
    image. Shard k of a mixture comes from shard k of those pairs, read one row group at a
    time."""
    dataset = Dataset(uri)
    if dataset.manifest.record_schema.name != CONVERSATIONS.name:  # text-only: no images
        yield from dataset.iter_rows(columns)
        return
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "pair_id", "image", "image_format"]))
    images: PairImages | None = None
    for index in range(len(dataset.manifest.shards)):
        for row in dataset.read_shard(index, columns):
            if row["image"] is None:
                images = images or PairImages(uri, dataset.manifest)
                row["image"], row["image_format"] = images.image(index, row["pair_id"])
            yield row


class PairImages:
    """The images a mixture's rows name, from the pairs datasets it was assembled from (its
    parents of the pairs schema, checked unchanged since by fingerprint, their shards
    numbered on one after another as assemble read them): pair p of mixture shard k is
    found in pairs shard k (by one read of its ids), else, for a mixture assembled
    otherwise, in any shard."""

    def __init__(self, mixture_uri: str, manifest: Manifest, keep: int = 4):
        uri = redact(mixture_uri)
        if not manifest.parents:
            raise DatasetError(f"{uri}: rows reference pair images but it names no pairs")
        self.uri = uri
        self.sources: list[tuple[Dataset, RowGroupReader]] = []
        self.unreadable: list[str] = []
        for parent in manifest.parents:
            try:
                dataset = Dataset(parent.uri)
            except (DatasetError, OSError) as error:
                if self.sources:  # pairs come first: likely a task input, not needed here
                    self.unreadable.append(parent.uri)
                    continue
                raise DatasetError(
                    f"{uri} takes its images from the pairs at {parent.uri}, which cannot be "
                    f"read: {error}"
                ) from error
            if dataset.manifest.record_schema.name != PAIRS.name:
                continue
            if dataset.manifest.fingerprint != parent.fingerprint:
                raise DatasetError(
                    f"{uri} takes its images from the pairs at {parent.uri}, which changed "
                    f"since it was assembled (fingerprint {parent.fingerprint[:12]} then, "
                    f"{dataset.manifest.fingerprint[:12]} now): assemble it again"
                )
            self.sources.append(
                (dataset, RowGroupReader(dataset, ["image", "image_format"], keep=keep))
            )
        if not self.sources:
            raise DatasetError(f"{uri}: rows reference pair images but it names no pairs")
        self.shards = [
            (source, local)
            for source, (dataset, _) in enumerate(self.sources)
            for local in range(len(dataset.manifest.shards))
        ]
        self._ids: OrderedDict[int, dict[str, int]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # sent to a spawned process: no caches
        return {**self.__dict__, "_ids": OrderedDict()}

    def image(self, shard: int, pair_id: str) -> tuple[bytes, str]:
        for number in sorted(range(len(self.shards)), key=lambda k: k != shard):  # k first
            position = self._positions(number).get(pair_id)
            if position is not None:
                source, local = self.shards[number]
                row = self.sources[source][1].row(local, position)
                return row["image"], row["image_format"]
        unread = f" (parents not readable: {', '.join(self.unreadable)})" if self.unreadable else ""
        raise DatasetError(f"{self.uri}: pair {pair_id} is not in the pairs it names{unread}")

    def _positions(self, number: int) -> dict[str, int]:
        if number not in self._ids:
            source, local = self.shards[number]
            ids = [row["id"] for row in self.sources[source][0].read_shard(local, ["id"])]
            self._ids[number] = {pair_id: position for position, pair_id in enumerate(ids)}
            while len(self._ids) > 2:
                self._ids.popitem(last=False)
        return self._ids[number]


def _descends_from(tasks: Manifest, pairs: Manifest) -> bool:
    """Whether `tasks` were made from these pairs shard for shard: synthesized from them
    (triplets), then judged (filtered); or written beside them by one stage run
    (general_tasks' pairs and triplets)."""
    manifest = tasks
    for _ in range(2):
        if _siblings(manifest, pairs):
            return True
        if len(manifest.parents) != 1:
            return False
        parent = manifest.parents[0]
        if parent.fingerprint == pairs.fingerprint:
            return True
        try:
            manifest = Dataset(parent.uri).manifest
        except (DatasetError, OSError):
            return False  # moved, or unreadable from here: the scan is always right
        if manifest.fingerprint != parent.fingerprint:
            return False
    return False


def _siblings(a: Manifest, b: Manifest) -> bool:
    return (
        a.parents == b.parents
        and a.stats.stage == b.stats.stage
        and a.config_hash == b.config_hash
        and a.code_version == b.code_version
        and [s.rows for s in a.shards] == [s.rows for s in b.shards]
    )


GENERAL_TASKS_CONFIG = {"domain": "general"}


def general_tasks(
    seed_uri: str,
    pairs_out: str,
    triplets_out: str,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Manifest, Manifest]:
    """The seed data in the task format (Table 5's "General CoT Task"): each seed example
    becomes a pair (domain `general`, its ALLaVA caption) and a triplet (its Vision-Flan
    instruction and precise answer, its ALLaVA informative answer), shard k of both from
    seed shard k, for the consistency filter and then assembly. An example whose image was
    replaced by a blank one (for synthesizer tuning) is quarantined as `blank_image`."""
    from PIL import Image

    seed = Dataset(seed_uri)
    if seed.manifest.record_schema.name != SEED.name:
        raise DatasetError(
            f"{redact(seed_uri)} holds {seed.manifest.record_schema.name} records, not seed"
            " examples (see `adamllm seed`)"
        )
    source, made_by = redact(seed_uri), f"seed@{seed.manifest.fingerprint[:16]}"

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={"pairs": [], "triplets": []})
        for position, row in enumerate(rows):
            try:
                if row["blank_image"]:
                    raise Rejected("blank_image", "its image was replaced by a blank one")
                try:
                    width, height = Image.open(io.BytesIO(row["image"])).size
                except (OSError, ValueError) as error:  # PIL's errors for unreadable bytes
                    raise Rejected("unreadable_image", str(error)) from None
            except Rejected as error:
                output.quarantine.append(
                    QuarantineRow.of(
                        error,
                        stage="general_tasks",
                        input_index=shard.offset + position,
                        source_ref=row["source_ref"],
                        record_id=row["id"],
                    )
                )
                continue
            image_sha256 = hashlib.sha256(row["image"]).hexdigest()
            pair = pair_id(image_sha256, row["caption"])
            output.rows["pairs"].append(
                ImageCaptionPair(
                    id=pair,
                    image=row["image"],
                    image_format=row["image_format"],
                    width=width,
                    height=height,
                    image_sha256=image_sha256,
                    caption=row["caption"],
                    domain="general",
                    source=source,
                    source_ref=row["source_ref"],
                    metadata={"seed_id": row["id"], "task": row["task"], "split": row["split"]},
                )
            )
            output.rows["triplets"].append(
                TaskTriplet(
                    id=triplet_id(pair, row["instruction"]),
                    pair_id=pair,
                    domain="general",
                    instruction=row["instruction"],
                    precise=row["precise"],
                    informative=row["informative"],
                    synthesizer=made_by,
                    turns=2,
                    raw_output="",
                    prompt_tokens=0,
                    completion_tokens=0,
                )
            )
            output.counters[f"split_{row['split']}"] += 1
        return output

    manifests = run_stage(
        stage="general_tasks",
        input_uri=seed_uri,
        outputs={
            "pairs": StageOutput(pairs_out, PAIRS),
            "triplets": StageOutput(triplets_out, TRIPLETS),
        },
        config=GENERAL_TASKS_CONFIG,
        process=process,
        code=PIPELINE_CODE,
        overwrite=overwrite,
        progress=progress,
    )
    return manifests["pairs"], manifests["triplets"]


def _assemble_config(config: AssembleConfig) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    dumped["target_identity"] = model_identity(resolve_model(config.target_model), None)
    return dumped


# --- identities, for cache keys -------------------------------------------------------------


def synthesize_identity(pairs_uri: str, config: SynthConfig) -> str:
    return stage_identity(
        [pairs_uri],
        StageOutput("", TRIPLETS),
        model_stage_config(config, make_engine(config.engine)),
        PIPELINE_CODE,
    )


def filter_identity(triplets_uri: str, config: FilterConfig) -> str:
    return stage_identity(
        [triplets_uri],
        StageOutput("", JUDGED),
        model_stage_config(config, make_engine(config.engine)),
        PIPELINE_CODE,
    )


def assemble_identity(
    pairs_uri: str,
    filtered_uri: str,
    config: AssembleConfig,
    triplets_uri: str | None = None,
    general: tuple[str, str] | None = None,
) -> str:
    inputs, extra = _assemble_inputs(
        pairs_uri, filtered_uri, variant_outputs(config), triplets_uri, general
    )
    return stage_identity(
        [*inputs, *extra],
        StageOutput("", CONVERSATIONS),
        _assemble_config(config),
        PIPELINE_CODE,
    )


def general_tasks_identity(seed_uri: str) -> str:
    return stage_identity([seed_uri], StageOutput("", PAIRS), GENERAL_TASKS_CONFIG, PIPELINE_CODE)


def variant_outputs(config: AssembleConfig) -> list[str]:
    """The output datasets of the config's variants, in order, each once."""
    return list(dict.fromkeys(name for v in config.variants for name in VARIANT_OUTPUTS[v]))


# --- export -------------------------------------------------------------------------------


def export_llamafactory(mixture_uri: str, out: str, dataset_name: str) -> dict[str, Any]:
    """A mixture as LLaMA-Factory sharegpt JSON with its images and dataset_info.json (written last).

    Streams: rows are read batch by batch, each image is written once (named by its hash)
    and the JSON list is written record by record to a local file, then published whole.
    An interrupted export resumes: images already there (one listing) are not written again."""
    dataset = Dataset(mixture_uri)
    out = normalise_uri(out)
    fs, root = filesystem(out)
    marker = join(root, "export.json")
    if fs.exists(marker) and fs.exists(join(root, "dataset_info.json")):
        previous = json.loads(fs.cat_file(marker))
        if (
            previous.get("mixture_fingerprint") == dataset.manifest.fingerprint
            and previous.get("name") == dataset_name
        ):
            return previous
    images_dir = join(root, "images")
    written: set[str] = (
        {f"images/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in fs.ls(images_dir, detail=False)}
        if fs.exists(images_dir)
        else set()
    )
    referenced: set[str] = set()
    counts: Counter[str] = Counter()
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as staged:
        staged.write("[")
        for row in conversation_rows(mixture_uri, ["messages"]):
            name = f"images/{hashlib.sha256(row['image']).hexdigest()[:32]}.{row['image_format']}"
            if name not in written:
                write_bytes_atomic(fs, join(root, name), row["image"])
                written.add(name)
                counts["images_written"] += 1
            referenced.add(name)
            record = {"messages": row["messages"], "images": [name]}
            staged.write(("," if counts["records"] else "") + "\n")
            staged.write(json.dumps(record, ensure_ascii=False))
            counts["records"] += 1
        staged.write("\n]\n")
        staged.flush()
        file_name = f"{dataset_name}.json"
        put_file_atomic(fs, staged.name, join(root, file_name))
    info = {
        dataset_name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    write_bytes_atomic(fs, join(root, "dataset_info.json"), json.dumps(info, indent=2).encode())
    summary = {
        "uri": out,
        "name": dataset_name,
        "records": counts["records"],
        "images": len(referenced),
        "images_written": counts["images_written"],
        "mixture_fingerprint": dataset.manifest.fingerprint,
        "dataset_info": info,
    }
    write_bytes_atomic(fs, marker, json.dumps(summary, indent=2).encode())
    return summary
