"""Seed data for synthesizer tuning (paper Appendix B): Vision-Flan gives image, instruction
and precise answer; ALLaVA-Caption-VFLAN the caption; ALLaVA-Instruct-VFLAN the informative
answer. The releases give one image three different ids (`PACS+..._10795-5`,
`allava_vflan_cap_100000`, `allava_vflan_inst_100000`) but the same image file, so they
are joined on the image path (normalised relative path, else basename). A share of images
is replaced by a blank image (modality balancing, 10% in the paper) and each task keeps a
dev split, held out of tuning and used for its validation loss.
"""

import hashlib
import io
import posixpath
import sqlite3
import tempfile
from collections import Counter, defaultdict
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


def image_keys(value: Any) -> tuple[str, str] | None:
    """(normalised relative path, basename) of the image a record names, or None. The
    releases name one image in three ways: Vision-Flan `PACS+guitar_..._10795-5.png`,
    ALLaVA `allava_vflan/images/images_191task_1k/PACS+guitar_..._10795-5.png`."""
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    path = posixpath.normpath(value.strip().replace("\\", "/")).lstrip("/")
    path = path.removeprefix("./")
    return path, posixpath.basename(path)


class AnswerIndex:
    """ALLaVA answers by image, in an SQLite file beside the run, not in memory: the
    releases are hundreds of MB of text. A Vision-Flan record finds its caption and its
    informative answer by the normalised relative image path, else by the basename (when
    exactly one image has it)."""

    def __init__(self, folder: str):
        self.db = sqlite3.connect(posixpath.join(folder, "answers.sqlite"))
        self.db.execute("CREATE TABLE answers (kind TEXT, path TEXT, base TEXT, text TEXT)")
        self.db.execute("CREATE TABLE images (path TEXT, base TEXT)")
        self.skipped: Counter[str] = Counter()  # ALLaVA records that are not answers

    def add(self, kind: str, uri: str) -> None:
        rows = []
        for _, record in read_records(uri):
            keys = image_keys(record.get("image")) if isinstance(record, dict) else None
            answer = record_turn(record, ("gpt", "assistant")) if isinstance(record, dict) else None
            if keys is None or not answer:
                self.skipped[f"{kind}_without_{'image' if keys is None else 'answer'}"] += 1
                continue
            rows.append((kind, *keys, str(answer).strip()))
            if len(rows) >= 10_000:
                self.db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?)", rows)
                rows.clear()
        self.db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?)", rows)
        self.db.execute("CREATE INDEX IF NOT EXISTS by_path ON answers (kind, path)")
        self.db.execute("CREATE INDEX IF NOT EXISTS by_base ON answers (kind, base)")
        self.db.commit()

    def find(self, kind: str, keys: tuple[str, str]) -> str:
        """The answer for this image; Rejected naming why there is none."""
        path, base = keys
        found = self.db.execute(
            "SELECT rowid, text FROM answers WHERE kind = ? AND path = ? LIMIT 1", (kind, path)
        ).fetchall()
        if not found:
            found = self.db.execute(
                "SELECT rowid, text, path FROM answers WHERE kind = ? AND base = ? LIMIT 2",
                (kind, base),
            ).fetchall()
            if len({row[2] for row in found}) > 1:
                raise Rejected(
                    f"ambiguous_{kind}",
                    f"{base}: several {SOURCE_NAMES[kind]} images have this name",
                )
        if not found:
            raise Rejected(f"missing_{kind}", f"no {SOURCE_NAMES[kind]} record for image {path}")
        return found[0][1]

    def add_images(self, keys: list[tuple[str, str]]) -> None:
        """Images the Vision-Flan records name (to count ALLaVA records none matches)."""
        self.db.executemany("INSERT INTO images VALUES (?, ?)", keys)

    def unmatched(self) -> Counter[str]:
        """ALLaVA records whose image no Vision-Flan record names, by file."""
        self.db.execute("CREATE INDEX IF NOT EXISTS image_path ON images (path)")
        self.db.execute("CREATE INDEX IF NOT EXISTS image_base ON images (base)")
        query = """SELECT kind, COUNT(*) FROM answers AS a
            WHERE NOT EXISTS (SELECT 1 FROM images AS i WHERE i.path = a.path)
            AND NOT EXISTS (SELECT 1 FROM images AS i WHERE i.base = a.base) GROUP BY kind"""
        return Counter({f"{kind}_unmatched": n for kind, n in self.db.execute(query)})


SOURCE_NAMES = {"caption": "ALLaVA-Caption-VFLAN", "informative": "ALLaVA-Instruct-VFLAN"}


def record_turn(record: dict[str, Any], speaker: tuple[str, ...]) -> str | None:
    for turn in record.get("conversations") or record.get("messages") or []:
        if str(turn.get("from", turn.get("role", ""))).lower() in speaker:
            return turn.get("value", turn.get("content"))
    return None


def strip_image_tag(text: str) -> str:
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
    scratch = tempfile.TemporaryDirectory(prefix="adamllm-seed-")
    answers = AnswerIndex(scratch.name)
    answers.add("caption", sources[1])
    answers.add("informative", sources[2])
    by_task: dict[str, list[str]] = defaultdict(list)
    images: list[tuple[str, str]] = []
    for _, record in read_records(sources[0]):
        if isinstance(record, dict):
            by_task[task_name(record)].append(str(record.get("id")))
            if keys := image_keys(record.get("image")):
                images.append(keys)
            if len(images) >= 10_000:
                answers.add_images(images)
                images.clear()
    answers.add_images(images)
    unmatched = answers.unmatched() + answers.skipped
    dev: set[str] = set()
    for task, ids in by_task.items():
        ordered = sorted(ids, key=lambda i: _unit(config.seed, "split", task, i))
        dev.update(ordered[: round(len(ordered) * config.dev_share)])
    del by_task
    root = normalise_uri(image_root)

    def example(record: dict[str, Any]) -> SeedExample:
        identifier = str(record.get("id"))
        instruction = record_turn(record, ("human", "user"))
        precise = record_turn(record, ("gpt", "assistant"))
        if not instruction or precise is None:
            raise Rejected("bad_record", "Vision-Flan record without instruction and answer turns")
        keys = image_keys(record.get("image"))
        if keys is None:
            raise Rejected("missing_image", "record names no image")
        caption = answers.find("caption", keys)
        informative = answers.find("informative", keys)
        fs, path = filesystem(resolve_image_uri(keys[0], root))
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise Rejected(
                "missing_image", f"{keys[0]} does not exist under the image root"
            ) from None
        image = normalise_image(data, config.image)
        blank = _unit(config.seed, "blank", identifier) < config.blank_share
        return SeedExample(
            id=hashlib.sha256(identifier.encode()).hexdigest()[:32],
            task=task_name(record),
            split="dev" if identifier in dev else "train",
            image=blank_like(image.width, image.height) if blank else image.data,
            image_format="png" if blank else image.format,
            blank_image=blank,
            caption=caption,
            instruction=strip_image_tag(instruction),
            precise=str(precise).strip(),
            informative=informative,
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
                    QuarantineRow.of(
                        error,
                        stage="seed",
                        input_index=shard.offset + position,
                        source_ref=identifier,
                        record_id=identifier,
                    )
                )
                continue
            output.rows["seed"].append(row)
            output.counters["blank_images"] += row.blank_image
            output.counters["dev"] += row.split == "dev"
        if shard.index == 0:  # the ALLaVA records that are not rows, counted once
            output.counters.update(unmatched)
        return output

    try:
        manifest = executor.execute(
            BatchInput(
                lambda wanted: read_records(sources[0]),
                config.rows_per_shard,
                name=redact(sources[0]),
            ),
            process,
        )["seed"]
    finally:
        answers.db.close()
        scratch.cleanup()
    return manifest
