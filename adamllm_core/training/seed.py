"""Seed data for synthesizer tuning (paper Appendix B): Vision-Flan gives image, instruction
and precise answer; ALLaVA-Caption-VFLAN the caption; ALLaVA-Instruct-VFLAN the informative
answer. Joined on the record id, with a share of images replaced by a blank image
(modality balancing, 10% in the paper) and a per-task dev split.
"""

import hashlib
import io
import json
from collections import Counter, defaultdict
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from adamllm_core.dataset import DatasetWriter, Manifest, ParentRef
from adamllm_core.errors import Rejected
from adamllm_core.hashing import config_hash
from adamllm_core.images import ImagePolicy, normalise_image
from adamllm_core.importers.base import resolve_image_uri
from adamllm_core.schemas import QUARANTINE, SEED, QuarantineRow, SeedExample
from adamllm_core.storage import filesystem, listing_fingerprint, normalise_uri
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


def _load_records(uri: str) -> list[dict[str, Any]]:
    fs, path = filesystem(uri)
    text = fs.cat_file(path).decode("utf-8-sig")
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{uri}: expected a JSON list of records")  # noqa: TRY004 (the CLI reports ValueError)
    return data


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
    dumped = config.model_dump(mode="json")
    writer = DatasetWriter(
        out,
        schema=SEED,
        stage="seed",
        parents=parents,
        config=dumped,
        config_hash=config_hash(dumped),
        code_version=code_version(__name__),
        overwrite=overwrite,
    )
    finished = writer.existing()
    if finished is not None:
        return finished
    flan, captions, instructs = (_load_records(u) for u in sources)
    caption_of = {str(r.get("id")): _turn(r, ("gpt", "assistant")) for r in captions}
    informative_of = {str(r.get("id")): _turn(r, ("gpt", "assistant")) for r in instructs}
    by_task: dict[str, list[str]] = defaultdict(list)
    for record in flan:
        by_task[task_name(record)].append(str(record.get("id")))
    dev: set[str] = set()
    for task, ids in by_task.items():
        ordered = sorted(ids, key=lambda i: _unit(config.seed, "split", task, i))
        dev.update(ordered[: round(len(ordered) * config.dev_share)])

    rows: list[SeedExample] = []
    quarantine: list[QuarantineRow] = []
    counters: Counter[str] = Counter()
    root = normalise_uri(image_root)
    for index, record in enumerate(flan):
        identifier = str(record.get("id"))
        try:
            instruction = _turn(record, ("human", "user"))
            precise = _turn(record, ("gpt", "assistant"))
            if not instruction or precise is None:
                raise Rejected(
                    "bad_record", "Vision-Flan record without instruction and answer turns"
                )
            if not caption_of.get(identifier):
                raise Rejected("missing_caption", "no ALLaVA-Caption-VFLAN record with this id")
            if not informative_of.get(identifier):
                raise Rejected(
                    "missing_informative", "no ALLaVA-Instruct-VFLAN record with this id"
                )
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
        except Rejected as error:
            quarantine.append(
                QuarantineRow(
                    stage="seed",
                    input_index=index,
                    source_ref=identifier,
                    reason=error.reason,
                    detail=error.detail,
                    record_id=identifier,
                )
            )
            continue
        blank = _unit(config.seed, "blank", identifier) < config.blank_share
        counters["blank_images"] += blank
        rows.append(
            SeedExample(
                id=hashlib.sha256(identifier.encode()).hexdigest()[:32],
                task=task_name(record),
                split="dev" if identifier in dev else "train",
                image=blank_like(image.width, image.height) if blank else image.data,
                image_format="png" if blank else image.format,
                blank_image=blank,
                caption=caption_of[identifier].strip(),
                instruction=_strip_image_tag(instruction),
                precise=str(precise).strip(),
                informative=informative_of[identifier].strip(),
                source_ref=identifier,
            )
        )
    counters["dev"] = sum(r.split == "dev" for r in rows)
    shards = max(1, -(-len(rows) // config.rows_per_shard))
    for k in range(shards):
        part = rows[k * config.rows_per_shard : (k + 1) * config.rows_per_shard]
        writer.write_shard(
            k,
            SEED.to_table(part),
            QUARANTINE.to_table(quarantine if k == 0 else []),
            rows_in=len(part) + (len(quarantine) if k == 0 else 0),
            counters=dict(counters) if k == 0 else {},
        )
    return writer.commit(shards)
