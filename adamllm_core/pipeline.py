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
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Dataset, DatasetError, Manifest, RowGroupReader
from adamllm_core.engines import Engine, EngineStats, make_engine, run_cached, shard_cache
from adamllm_core.engines.base import ChatResult, ImageResolution
from adamllm_core.engines.hf import HFRenderer, model_identity
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
from adamllm_core.models import resolve_model
from adamllm_core.schemas import (
    CONVERSATIONS,
    JUDGED,
    TRIPLETS,
    ChatTurn,
    Conversation,
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
    SynthConfig,
    parse_triplet,
    prompt_context,
    synth_request,
    triplet_id,
)
from adamllm_core.version import code_version

# Synthesize, filter and assemble: outputs change with this module and what it imports.
PIPELINE_CODE = code_version(__name__)


def _quarantine(
    stage: str, index: int, ref: str, error: Rejected, record_id: str | None, raw: str | None
) -> QuarantineRow:
    return QuarantineRow(
        stage=stage,
        input_index=index,
        source_ref=ref,
        reason=error.reason,
        detail=error.detail,
        record_id=record_id,
        record=raw,
    )


def _refused(result: ChatResult) -> None:
    """A request the engine refused on its own (see run_isolating) quarantines its row."""
    if (refusal := result.refusal()) is not None:
        raise refusal


def _stage_config(config: BaseModel, engine: Engine) -> dict[str, Any]:
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
    rank: int = 0,
    world: int = 1,
) -> Manifest | None:
    """Pairs → task triplets; unparseable outputs are quarantined with their reason and raw text.

    Roles other than "all" (data parallelism, see run_parallel) return None.
    """
    engine = engine or make_engine(config.engine)
    renderer = getattr(engine, "renderer", None)  # reuse the engine's loaded processor
    if config.template_model or not isinstance(renderer, HFRenderer):
        renderer = HFRenderer(resolve_model(config.template_model or config.engine.model))
    delimiters, pattern, stop = prompt_context(renderer, config)
    stats = EngineStats()

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        requests = [synth_request(r["caption"], r["image"], config, pattern, stop) for r in rows]
        results = run_cached(
            engine,
            requests,
            shard_cache(cache_uri, shard.index),
            batch_size=config.engine.batch_size,
            stats=stats,
        )
        output = ShardOutput(rows={"triplets": []})
        output.counters.update(requests_cached=stats.cached, requests_computed=stats.computed)
        stats.cached = stats.computed = 0
        for position, (row, result) in enumerate(zip(rows, results, strict=True)):
            try:
                _refused(result)
                parsed = parse_triplet(result.text, delimiters)
            except Rejected as error:
                output.quarantine.append(
                    _quarantine(
                        "synthesize",
                        shard.offset + position,
                        row["id"],
                        error,
                        row["id"],
                        result.text,
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
        config=_stage_config(config, engine),
        process=process,
        code=PIPELINE_CODE,
        columns=["id", "image", "caption", "domain"],
        overwrite=overwrite,
        progress=progress,
        role=role,
        rank=rank,
        world=world,
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
    rank: int = 0,
    world: int = 1,
) -> tuple[Manifest, Manifest] | None:
    """Triplets → `filtered` (label in keep, with chain-of-thought response) and `rejected`."""
    engine = engine or make_engine(config.engine)

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        requests = [
            judge_request(r["instruction"], r["informative"], r["precise"], config.template)
            for r in rows
        ]
        results = run_cached(
            engine,
            requests,
            shard_cache(cache_uri, shard.index),
            batch_size=config.engine.batch_size,
        )
        output = ShardOutput(rows={"filtered": [], "rejected": []})
        for position, (row, result) in enumerate(zip(rows, results, strict=True)):
            if (refusal := result.refusal()) is not None:
                output.quarantine.append(
                    _quarantine(
                        "filter", shard.offset + position, row["id"], refusal, row["id"], None
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
        config=_stage_config(config, engine),
        process=process,
        code=PIPELINE_CODE,
        columns=["id", "pair_id", "domain", "instruction", "precise", "informative"],
        overwrite=overwrite,
        progress=progress,
        role=role,
        rank=rank,
        world=world,
    )
    return (manifests["filtered"], manifests["rejected"]) if manifests else None


# --- assemble -----------------------------------------------------------------------------

# Caption-task prompts, one drawn per record (the paper draws from ALLaVA's pool).
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
VARIANTS = ("single_stage", "two_stage_1", "two_stage_2", "caption_only", "synthetic_only")


class AssembleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_model: str = Field(description="the MLLM to post-train: its processor counts tokens")
    max_seq_len: int = Field(default=6144, gt=0)
    over_length: Literal["drop", "keep"] = Field(
        default="drop", description="records over max_seq_len"
    )
    seed: int = 0
    variants: tuple[Literal["single_stage", "two_stage", "caption_only", "synthetic_only"], ...] = (
        "single_stage",
    )
    image_resolution: ImageResolution = Field(
        default_factory=ImageResolution,
        description="pixel bounds for a Qwen2-VL-family target: the training's own",
    )


def seeded_rng(seed: int, *parts: str) -> random.Random:
    """A generator seeded by (seed, parts): the same draws for the same key, on any machine."""
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _record_turns(
    variant: str, pair: dict[str, Any], task: dict[str, Any] | None, seed: int
) -> tuple[str, list[tuple[str, str]]] | None:
    caption = (seeded_rng(seed, "prompt", pair["id"]).choice(CAPTION_PROMPTS), pair["caption"])
    synthetic = (task["instruction"], task["response"]) if task else None
    if variant in ("caption_only", "two_stage_1"):
        return "caption", [caption]
    if variant in ("synthetic_only", "two_stage_2"):
        return ("task", [synthetic]) if synthetic else None
    if synthetic is None:
        return "caption", [caption]
    if seeded_rng(seed, "order", pair["id"]).random() < 0.5:
        return "caption+task", [caption, synthetic]
    return "task+caption", [synthetic, caption]


def assemble(
    pairs_uri: str,
    filtered_uri: str,
    outs: dict[str, str],
    config: AssembleConfig,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Manifest]:
    """Pairs + kept triplets → training mixtures, one dataset per variant (`outs` keys from VARIANTS)."""
    from PIL import Image

    renderer = HFRenderer(resolve_model(config.target_model), resolution=config.image_resolution)
    if not renderer.multimodal:
        raise ValueError(f"target_model {config.target_model} is not a vision-language model")
    tasks_of = _kept_tasks(pairs_uri, filtered_uri)

    def count_tokens(turns: list[tuple[str, str]], image: bytes) -> int:
        messages = []
        for i, (question, answer) in enumerate(turns):
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "image"}] * (i == 0)
                    + [{"type": "text", "text": question}],
                }
            )
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        text = renderer.processor.apply_chat_template(messages, tokenize=False)
        encoded = renderer.processor(
            text=[text], images=[Image.open(io.BytesIO(image)).convert("RGB")]
        )
        return len(encoded["input_ids"][0])

    def process(rows: list[dict[str, Any]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={name: [] for name in outs})
        tasks = tasks_of(shard.index, {pair["id"] for pair in rows})
        for position, pair in enumerate(rows):
            task = tasks.get(pair["id"])
            tokens: int | None = None
            for variant in outs:
                made = _record_turns(variant, pair, task, config.seed)
                if made is None:
                    continue
                kind, turns = made
                tokens = count_tokens(turns, pair["image"])
                if tokens > config.max_seq_len:
                    output.counters[f"over_max_len_{variant}"] += 1
                    if config.over_length == "drop":
                        if variant == next(iter(outs)):
                            output.quarantine.append(
                                _quarantine(
                                    "assemble",
                                    shard.offset + position,
                                    pair["id"],
                                    Rejected(
                                        "too_long",
                                        f"{tokens} tokens > max_seq_len {config.max_seq_len}",
                                    ),
                                    pair["id"],
                                    None,
                                )
                            )
                        continue
                messages = []
                for i, (question, answer) in enumerate(turns):
                    messages.append(
                        ChatTurn(role="user", content=("<image>" if i == 0 else "") + question)
                    )
                    messages.append(ChatTurn(role="assistant", content=answer))
                output.rows[variant].append(
                    Conversation(
                        id=hashlib.sha256(f"{variant}\0{pair['id']}".encode()).hexdigest()[:32],
                        pair_id=pair["id"],
                        triplet_id=task["id"] if task and "task" in kind else None,
                        domain=pair["domain"],
                        variant=variant,
                        kind=kind,
                        messages=messages,  # the image stays in the pairs: see conversation_rows
                        tokens=tokens,
                    )
                )
                output.counters[f"{variant}_{kind}"] += 1
        return output

    return run_stage(
        stage="assemble",
        input_uri=pairs_uri,
        outputs={name: StageOutput(uri, CONVERSATIONS) for name, uri in outs.items()},
        config=_assemble_config(config),
        process=process,
        code=PIPELINE_CODE,
        columns=["id", "image", "image_format", "caption", "domain"],
        extra_inputs=[filtered_uri],
        overwrite=overwrite,
        progress=progress,
    )


TASK_COLUMNS = ["pair_id", "id", "instruction", "response"]


def _kept_tasks(
    pairs_uri: str, filtered_uri: str
) -> Callable[[int, set[str]], dict[str, dict[str, Any]]]:
    """`tasks(k, pair_ids)`: the kept synthetic task of each pair of pairs shard k (the
    first, in filtered order: one per image), without holding every triplet.

    Synthesize and filter keep shard k of their input as their shard k, so when the
    filtered dataset descends from these very pairs (its lineage says so) shard k of it
    holds every task of pairs shard k. Otherwise (a filtered dataset made elsewhere) each
    pairs shard scans the filtered dataset: slower, memory still bounded."""
    pairs = Dataset(pairs_uri)
    filtered = Dataset(filtered_uri)
    aligned = len(filtered.manifest.shards) == len(pairs.manifest.shards) and _descends_from(
        filtered.manifest, pairs.manifest.fingerprint
    )

    def tasks(index: int, pair_ids: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        rows = (
            filtered.read_shard(index, TASK_COLUMNS)
            if aligned
            else filtered.iter_rows(TASK_COLUMNS)
        )
        for row in rows:
            if row["pair_id"] in pair_ids:
                found.setdefault(row["pair_id"], row)
        return found

    return tasks


def conversation_rows(uri: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a training dataset; a conversations dataset's with their image bytes.

    A row whose `image` is null takes the image of its pair (`pair_id`) from the pairs the
    mixture was assembled from (its manifest's first parent), so the ablation variants
    share one copy of each image. Shard k of a mixture comes from shard k of those pairs,
    read one row group at a time."""
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
    """The images a mixture's rows name, from the pairs it was assembled from (checked
    unchanged since by fingerprint): pair p of mixture shard k is found in pairs shard k
    (by one read of its ids), else, for a mixture assembled otherwise, in any shard."""

    def __init__(self, mixture_uri: str, manifest: Manifest, keep: int = 4):
        uri = redact(mixture_uri)
        if not manifest.parents:
            raise DatasetError(f"{uri}: rows reference pair images but it names no pairs")
        parent = manifest.parents[0]
        try:
            pairs = Dataset(parent.uri)
        except (DatasetError, OSError) as error:
            raise DatasetError(
                f"{uri} takes its images from the pairs at {parent.uri}, which cannot be "
                f"read: {error}"
            ) from error
        if pairs.manifest.fingerprint != parent.fingerprint:
            raise DatasetError(
                f"{uri} takes its images from the pairs at {parent.uri}, which changed since "
                f"it was assembled (fingerprint {parent.fingerprint[:12]} then, "
                f"{pairs.manifest.fingerprint[:12]} now): assemble it again"
            )
        self.uri, self.pairs_uri, self.pairs = uri, parent.uri, pairs
        self.rows = RowGroupReader(pairs, ["image", "image_format"], keep=keep)
        self._ids: OrderedDict[int, dict[str, int]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # sent to a spawned process: no caches
        return {**self.__dict__, "_ids": OrderedDict()}

    def image(self, shard: int, pair_id: str) -> tuple[bytes, str]:
        count = len(self.pairs.manifest.shards)
        for source in sorted(range(count), key=lambda k: k != shard):  # shard k first
            position = self._positions(source).get(pair_id)
            if position is not None:
                row = self.rows.row(source, position)
                return row["image"], row["image_format"]
        raise DatasetError(f"{self.uri}: pair {pair_id} is not in {self.pairs_uri}")

    def _positions(self, shard: int) -> dict[str, int]:
        if shard not in self._ids:
            ids = [row["id"] for row in self.pairs.read_shard(shard, ["id"])]
            self._ids[shard] = {pair_id: position for position, pair_id in enumerate(ids)}
            while len(self._ids) > 2:
                self._ids.popitem(last=False)
        return self._ids[shard]


def _descends_from(filtered: Manifest, pairs_fingerprint: str) -> bool:
    """Whether `filtered` was judged from triplets synthesized from pairs with that fingerprint."""
    if len(filtered.parents) != 1:
        return False
    try:
        triplets = Dataset(filtered.parents[0].uri).manifest
    except (DatasetError, OSError):
        return False  # moved, or unreadable from here: the scan is always right
    return (
        triplets.fingerprint == filtered.parents[0].fingerprint
        and len(triplets.parents) == 1
        and triplets.parents[0].fingerprint == pairs_fingerprint
    )


def _assemble_config(config: AssembleConfig) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    dumped["target_identity"] = model_identity(resolve_model(config.target_model), None)
    return dumped


# --- identities, for cache keys -------------------------------------------------------------


def synthesize_identity(pairs_uri: str, config: SynthConfig) -> str:
    return stage_identity(
        [pairs_uri],
        StageOutput("", TRIPLETS),
        _stage_config(config, make_engine(config.engine)),
        PIPELINE_CODE,
    )


def filter_identity(triplets_uri: str, config: FilterConfig) -> str:
    return stage_identity(
        [triplets_uri],
        StageOutput("", JUDGED),
        _stage_config(config, make_engine(config.engine)),
        PIPELINE_CODE,
    )


def assemble_identity(pairs_uri: str, filtered_uri: str, config: AssembleConfig) -> str:
    return stage_identity(
        [pairs_uri, filtered_uri],
        StageOutput("", CONVERSATIONS),
        _assemble_config(config),
        PIPELINE_CODE,
    )


def variant_outputs(config: AssembleConfig) -> list[str]:
    names: list[str] = []
    for variant in config.variants:
        names += ["two_stage_1", "two_stage_2"] if variant == "two_stage" else [variant]
    return names


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
