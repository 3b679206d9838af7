"""Seed data for synthesizer tuning (paper Appendix B): Vision-Flan gives image, instruction
and precise answer; ALLaVA-Caption-VFLAN the caption; ALLaVA-Instruct-VFLAN the informative
answer. Joined on the record id, with a share of images replaced by a blank image
(modality balancing, 10% in the paper) and a per-task dev split.
"""

import hashlib
import io
from collections import defaultdict
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import Manifest, ParentRef
from adamllm_core.errors import Rejected
from adamllm_core.executor import BatchInput, Shard, ShardedExecutor, ShardOutput, StageOutput
from adamllm_core.images import ImagePolicy, normalise_image
from adamllm_core.importers.base import resolve_image_uri
from adamllm_core.importers.records import read_records
from adamllm_core.schemas import SEED, QuarantineRow, SeedExample
from adamllm_core.storage import filesystem, listing_fingerprint, normalise_uri, redact
from adamllm_core.version import code_version


class SeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blank_share: float = Field(
        default=0.1, ge=0, le=1, description="share of images replaced by a blank image"
    )
    dev_share: float = Field(
        default=0.1, ge=0, lt=1, description="share of each task held out as dev"
    )
    seed: int = 0
    rows_per_shard: int = Field(default=1000, gt=0)
    image: ImagePolicy = Field(default_factory=ImagePolicy)


def _unit(seed: int, *parts: str) -> float:
    """A stable number in [0, 1) per (seed, parts)."""
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _answers(uri: str) -> dict[str, str | None]:
    """{id: assistant answer} of an ALLaVA file: its text only, no images, is held."""
    return {
        str(record.get("id")): _turn(record, ("gpt", "assistant"))
        for _, record in read_records(uri)
        if isinstance(record, dict)
    }


def _turn(record: dict[str, Any], speaker: tuple[str, ...]) -> str | None:
    for turn in record.get("conversations") or record.get("messages") or []:
        if str(turn.get("from", turn.get("role", ""))).lower() in speaker:
            return turn.get("value", turn.get("content"))
    return None


def _strip_image_tag(text: str) -> str:
    return text.replace("<image>", "").strip()


def task_name(record: dict[str, Any]) -> str:
    """Vision-Flan names the task in `task_name`, or as the id's prefix (`TASK+...+N`)."""
    if record.get("task_name"):
        return str(record["task_name"])
    identifier = str(record.get("id", ""))
    return identifier.rsplit("+", 1)[0] if "+" in identifier else "unknown"


def blank_like(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (255, 255, 255)).save(out, format="PNG")
    return out.getvalue()


def build_seed(
    vision_flan: str,
    allava_caption: str,
    allava_instruct: str,
    image_root: str,
    out: str,
    config: SeedConfig,
    *,
    overwrite: bool = False,
) -> Manifest:
    """Join the three sources into a `seed` dataset; unmatched or broken records are quarantined."""
    sources = [normalise_uri(u) for u in (vision_flan, allava_caption, allava_instruct)]
    parents = [ParentRef(uri=u, fingerprint=listing_fingerprint(u), kind="source") for u in sources]
    executor = ShardedExecutor(
        stage="seed",
        outputs={"seed": StageOutput(out, SEED)},
        parents=parents,
        config=config,
        code=code_version(__name__),
        overwrite=overwrite,
    )
    if (finished := executor.finished()) is not None:
        return finished["seed"]
    caption_of = _answers(sources[1])
    informative_of = _answers(sources[2])
    by_task: dict[str, list[str]] = defaultdict(list)
    for _, record in read_records(sources[0]):
        if isinstance(record, dict):
            by_task[task_name(record)].append(str(record.get("id")))
    dev: set[str] = set()
    for task, ids in by_task.items():
        ordered = sorted(ids, key=lambda i: _unit(config.seed, "split", task, i))
        dev.update(ordered[: round(len(ordered) * config.dev_share)])
    del by_task
    root = normalise_uri(image_root)

    def example(record: dict[str, Any]) -> SeedExample:
        identifier = str(record.get("id"))
        instruction = _turn(record, ("human", "user"))
        precise = _turn(record, ("gpt", "assistant"))
        if not instruction or precise is None:
            raise Rejected("bad_record", "Vision-Flan record without instruction and answer turns")
        if not caption_of.get(identifier):
            raise Rejected("missing_caption", "no ALLaVA-Caption-VFLAN record with this id")
        if not informative_of.get(identifier):
            raise Rejected("missing_informative", "no ALLaVA-Instruct-VFLAN record with this id")
        image_value = record.get("image")
        if isinstance(image_value, list):
            image_value = image_value[0] if image_value else None
        if not image_value:
            raise Rejected("missing_image", "record names no image")
        fs, path = filesystem(resolve_image_uri(str(image_value), root))
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise Rejected("missing_image", f"{image_value} does not exist") from None
        image = normalise_image(data, config.image)
        blank = _unit(config.seed, "blank", identifier) < config.blank_share
        return SeedExample(
            id=hashlib.sha256(identifier.encode()).hexdigest()[:32],
            task=task_name(record),
            split="dev" if identifier in dev else "train",
            image=blank_like(image.width, image.height) if blank else image.data,
            image_format="png" if blank else image.format,
            blank_image=blank,
            caption=str(caption_of[identifier]).strip(),
            instruction=_strip_image_tag(instruction),
            precise=str(precise).strip(),
            informative=str(informative_of[identifier]).strip(),
            source_ref=identifier,
        )

    def process(records: list[tuple[str, dict[str, Any] | Rejected]], shard: Shard) -> ShardOutput:
        output = ShardOutput(rows={"seed": []})
        for position, (ref, record) in enumerate(records):
            identifier = str(record.get("id")) if isinstance(record, dict) else ref
            try:
                if isinstance(record, Rejected):
                    raise record
                row = example(record)
            except Rejected as error:
                output.quarantine.append(
                    QuarantineRow(
                        stage="seed",
                        input_index=shard.offset + position,
                        source_ref=identifier,
                        reason=error.reason,
                        detail=error.detail,
                        record_id=identifier,
                    )
                )
                continue
            output.rows["seed"].append(row)
            output.counters["blank_images"] += row.blank_image
            output.counters["dev"] += row.split == "dev"
        return output

    return executor.execute(
        BatchInput(
            lambda wanted: read_records(sources[0]), config.rows_per_shard, name=redact(sources[0])
        ),
        process,
    )["seed"]
