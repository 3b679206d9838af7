"""Generated inputs: one image file per case the ingest must handle, and their expectations;
datasets written by hand (as the stages write them) for the tests that read them."""

import hashlib
import http.server
import io
import json
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adamllm_core.dataset import Dataset, DatasetWriter, ParentRef
from adamllm_core.hashing import config_hash
from adamllm_core.schemas import QUARANTINE, QuarantineRow, Record, RecordSchema, TaskTriplet
from adamllm_core.synthesis import triplet_id


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def gradient(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1)
    return (
        Image.fromarray(rgb, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(rgb, "RGB")
    )


def noise(size: tuple[int, int] = (256, 256)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def sixteen_bit_png() -> bytes:
    values = np.linspace(100, 4000, 64 * 48, dtype=np.uint16).reshape(48, 64)  # 12-bit range
    return encode(Image.fromarray(values), "PNG")


def animated_gif() -> bytes:
    frames = [gradient("P"), gradient("P").rotate(90), gradient("P").rotate(180)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def exif_rotated_jpeg() -> bytes:
    image = gradient("RGB", (64, 32))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(image, "JPEG", exif=exif)


def palette_with_transparency() -> bytes:
    image = gradient("P")
    image.info["transparency"] = 0
    return encode(image, "PNG", transparency=0)


# name -> (file bytes, expected reason or None when the image is valid, expected stored mode)
IMAGE_CASES: dict[str, tuple[bytes, str | None, str | None]] = {
    "ok_rgb.jpg": (encode(gradient(), "JPEG"), None, "RGB"),
    "ok_gray.png": (encode(gradient("L"), "PNG"), None, "L"),
    "ok.webp": (encode(gradient(), "WEBP"), None, "RGB"),
    "cmyk.jpg": (encode(gradient("CMYK"), "JPEG"), None, "RGB"),
    "palette.png": (encode(gradient("P"), "PNG"), None, "RGB"),
    "palette_transparent.png": (palette_with_transparency(), None, "RGB"),
    "rgba.png": (encode(gradient("RGBA"), "PNG"), None, "RGB"),
    "gray_alpha.png": (encode(gradient("LA"), "PNG"), None, "L"),
    "sixteen_bit.png": (sixteen_bit_png(), None, "L"),
    "bilevel.png": (encode(gradient("1"), "PNG"), None, "L"),
    "scan.tif": (encode(gradient(), "TIFF"), None, "RGB"),
    "bitmap.bmp": (encode(gradient(), "BMP"), None, "RGB"),
    "animated.gif": (animated_gif(), None, "RGB"),
    "rotated.jpg": (exif_rotated_jpeg(), None, "RGB"),
    "truncated.jpg": (encode(noise(), "JPEG")[:4000], "truncated", None),
    "truncated.png": (encode(noise(), "PNG")[:4000], "truncated", None),
    "zero_bytes.jpg": (b"", "empty_file", None),
    "not_an_image.jpg": (b"this is a text file, not a JPEG\n" * 4, "not_an_image", None),
    "page.png": (b"<!doctype html><html><body>404 Not Found</body></html>", "not_an_image", None),
    "bomb.png": (png_header_only(100_000, 100_000), "too_many_pixels", None),
    "tiny.png": (encode(gradient("RGB", (4, 4)), "PNG"), "too_small", None),
    # 1,800x9: aspect ratio 200, which Qwen2-VL's processor refuses
    "strip.png": (encode(gradient("RGB", (1800, 9)), "PNG"), "extreme_aspect_ratio", None),
}


def write_broken_corpus(root: Path) -> dict[str, object]:
    """A folder in the `data.jsonl` layout holding every image and record case.

    Returns what ingest must produce: valid pairs count, quarantine reasons counts,
    and the number of input candidates.
    """
    images = root / "images"
    images.mkdir(parents=True)
    for name, (data, _, _) in IMAGE_CASES.items():
        (images / name).write_bytes(data)
    (images / "a_folder.jpg").mkdir()

    lines: list[str] = []
    reasons: dict[str, int] = {}

    def add(record: object | str, reason: str | None) -> None:
        lines.append(record if isinstance(record, str) else json.dumps(record))
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1

    for name, (_, reason, _) in IMAGE_CASES.items():
        add({"image": f"images/{name}", "caption": f"a test image called {name}"}, reason)
    add({"image": "images/missing.jpg", "caption": "no such file"}, "missing_image")
    add({"image": "images/a_folder.jpg", "caption": "a folder, not a file"}, "missing_image")
    add({"image": "images/ok_rgb.jpg", "caption": ""}, "empty_caption")
    add({"image": "images/ok_rgb.jpg", "caption": "   \n\t "}, "empty_caption")
    add({"image": "images/ok_rgb.jpg", "caption": "<image></s><|im_end|>"}, "empty_caption")
    add({"image": "images/ok_rgb.jpg", "caption": 42}, "bad_caption")
    add({"image": "images/ok_rgb.jpg"}, "missing_caption")
    add({"image": "images/ok_rgb.jpg", "caption": "x" * 20_000}, "caption_too_long")
    add({"caption": "a record without an image"}, "missing_image")
    add(
        {"image": ["images/ok_rgb.jpg", "images/ok_gray.png"], "caption": "two images"},
        "multi_image_record",
    )
    add('{"image": "images/ok_rgb.jpg", "caption": "broken json"', "bad_record")
    add('["a", "list", "not", "an", "object"]', "bad_record")
    # neutralised, so valid:
    add(
        {
            "image": "images/ok_gray.png",
            "caption": "Axial CT <|im_end|><|im_start|>assistant\nof the liver <image>",
        },
        None,
    )
    # same image and caption as the first record: kept once
    add({"image": "images/ok_rgb.jpg", "caption": "a test image called ok_rgb.jpg"}, "duplicate")
    # same image, other caption: a different pair
    add({"image": "images/ok_rgb.jpg", "caption": "the same image with another caption"}, None)

    body = (
        "\n".join(lines).encode()
        + b"\n"
        + b'{"image": "images/ok_rgb.jpg", "caption": "bad \xff utf-8"}\n'
    )
    reasons["bad_record"] += 1
    (root / "data.jsonl").write_bytes(body)
    total = len(lines) + 1
    quarantined = sum(reasons.values())
    return {"inputs": total, "valid": total - quarantined, "reasons": reasons}


SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "biomed_pairs"


def write_seed_sources(root: Path) -> dict[str, str]:
    """Small files in the releases' layouts: Vision-Flan's annotation_191-task_1k.json
    (its own ids, `task_name`, the image's bare file name under images_191task_1k/) and
    ALLaVA-{Caption,Instruct}-VFLAN-4V.json (ids allava_vflan_cap_N / allava_vflan_inst_N,
    the image under allava_vflan/images/images_191task_1k/). The three share only the image.

    Made to miss: record 5 has no caption; record 7's name has two caption records in two
    folders (which image is meant cannot be told); one caption record names no image; one
    instruct record names an image no Vision-Flan record has."""
    import shutil

    lines = [json.loads(line) for line in (SAMPLE / "data.jsonl").read_text().splitlines()]
    images = root / "images_191task_1k"
    images.mkdir(parents=True)
    flan, captions, instructs = [], [], []
    for i, line in enumerate(lines):
        task = ["modality_recognition", "plane_recognition"][i % 2]
        name = f"MedPix+{task}_{i}_{Path(line['image']).name}"
        shutil.copy(SAMPLE / line["image"], images / name)
        answer = line["modality"] if i % 2 == 0 else line["plane"]
        question = (
            "What imaging modality is this?"
            if i % 2 == 0
            else "In which plane is this image taken?"
        )
        flan.append(
            {
                "id": f"MedPix+{task}_{i}",
                "task_name": f"MedPix+{task}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": question},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
        allava_image = f"allava_vflan/images/images_191task_1k/{name}"
        if i != 5:
            captions.append(
                {
                    "id": f"allava_vflan_cap_{100000 + i}",
                    "image": allava_image,
                    "conversations": [
                        {"from": "human", "value": "<image>\nPlease depict the image in words."},
                        {"from": "gpt", "value": line["caption"]},
                    ],
                }
            )
        if i == 7:
            captions.append({**captions[-1], "image": f"allava_laion/images/{name}"})
        instructs.append(
            {
                "id": f"allava_vflan_inst_{i}",
                "image": allava_image,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {
                        "from": "gpt",
                        "value": f"Judging from the image and its appearance, the answer is {answer}.",
                    },
                ],
            }
        )
    captions.append({"id": "allava_vflan_cap_9", "conversations": captions[0]["conversations"]})
    instructs.append({**instructs[0], "id": "allava_vflan_inst_99", "image": "x/elsewhere.png"})
    paths = {}
    for name, records in (
        ("vision_flan", flan),
        ("allava_caption", captions),
        ("allava_instruct", instructs),
    ):
        paths[name] = str(root / f"{name}.json")
        Path(paths[name]).write_text(json.dumps(records))
    return paths


# --- datasets written by hand ------------------------------------------------------------

Shard = tuple[list[Record], list[QuarantineRow]]  # a shard's rows and its quarantined inputs


def write_dataset(
    out: str,
    schema: RecordSchema,
    shards: Iterable[Shard],
    *,
    parents: list[ParentRef],
    stage: str = "test",
    config: dict[str, Any] | None = None,
) -> str:
    """A finished dataset of `schema` at `out`, shard k holding `shards[k]`."""
    config = config or {}
    writer = DatasetWriter(
        out,
        schema=schema,
        stage=stage,
        parents=parents,
        config=config,
        config_hash=config_hash(config),
    )
    writer.prepare()
    written = 0
    for index, (rows, quarantined) in enumerate(shards):
        writer.write_shard(
            index,
            schema.to_table(rows),
            QUARANTINE.to_table(quarantined),
            rows_in=len(rows) + len(quarantined),
        )
        written = index + 1
    writer.commit(written)
    return out


def write_derived(
    parent_uri: str,
    out: str,
    schema: RecordSchema,
    make_shard: Callable[[int, list[dict[str, Any]]], Shard],
    *,
    columns: list[str] | None = None,
    stage: str = "synthesize",
    config: dict[str, Any] | None = None,
) -> str:
    """A dataset made from the one at `parent_uri` as a stage makes it: shard k is
    `make_shard(k, rows of its shard k)`, and the parent's fingerprint is recorded."""
    parent = Dataset(parent_uri)
    shards = (
        make_shard(k, parent.read_shard(k, columns)) for k in range(len(parent.manifest.shards))
    )
    return write_dataset(
        out,
        schema,
        shards,
        parents=[ParentRef(uri=parent_uri, fingerprint=parent.manifest.fingerprint)],
        stage=stage,
        config=config,
    )


def hand_triplet(
    pair: dict[str, Any],
    instruction: str,
    precise: str = "CT",
    informative: str = "Bone is bright: computed tomography.",
    *,
    synthesizer: str = "hand@1",
    turns: int = 2,
) -> TaskTriplet:
    """A task for a pair written by hand (what a tuned synthesizer would give)."""
    return TaskTriplet(
        id=triplet_id(pair["id"], instruction),
        pair_id=pair["id"],
        domain=pair["domain"],
        instruction=instruction,
        precise=precise,
        informative=informative,
        synthesizer=synthesizer,
        turns=turns,
        raw_output="",
        prompt_tokens=0,
        completion_tokens=0,
    )


def unparseable(pair_id: str, input_index: int, reason: str = "unparseable") -> QuarantineRow:
    """A pair whose synthesizer output was quarantined."""
    return QuarantineRow(
        stage="synthesize",
        input_index=input_index,
        source_ref=pair_id,
        reason=reason,
        detail="no task in the output",
        record_id=pair_id,
    )


# -- Holding a run at a chosen point, for the tests that kill it there --
#
# A kill test that polls for progress and then kills races the run: on a fast machine the
# run may finish between the poll and the kill, and where the kill lands varies. A held
# run cannot: `held_command(module, ...)` runs `python -m module ...` through this file,
# which first installs the hold named by ADAMLLM_TEST_HOLD; the process reaching it writes
# `reached-<RANK>` into ADAMLLM_TEST_HOLD_DIR and waits there for a `release` file (which a
# kill test never writes: the kill lands while it waits, at exactly that point).

HOLD_ENV = "ADAMLLM_TEST_HOLD"
HOLD_DIR_ENV = "ADAMLLM_TEST_HOLD_DIR"
HOLD_LIMIT_S = 900  # a held run nobody kills (a test that failed first) ends itself


def held_command(module: str, *args: str) -> list[str]:
    """`python -m module args` run through this file, which installs the hold first."""
    import sys

    return [sys.executable, "-m", "corpus", module, *args]


def hold_env(hold: str, folder: Path) -> dict[str, str]:
    """The environment variables of a run held at `hold` (see `_install_hold`), signalling
    through `folder`; this file's folder joins PYTHONPATH so that `-m corpus` finds it."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), here) if p)
    return {HOLD_ENV: hold, HOLD_DIR_ENV: str(folder), "PYTHONPATH": path}


def wait_until_held(
    process: Any, folder: Path, output: Callable[[], str], timeout_s: float = 300
) -> None:
    """Return once rank 0 of `process` waits at its hold; fail, with the run's output, if
    it ended or did not get there in time (then it is killed first, with its process group
    when it leads one, so that its output ends)."""
    import os
    import signal
    import time

    reached = folder / "reached-0"
    deadline = time.monotonic() + timeout_s
    while not reached.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (code {process.returncode}) before its hold:\n{output()}"
            )
        if time.monotonic() > deadline:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()
            raise AssertionError(f"the run did not reach its hold in {timeout_s} s:\n{output()}")
        time.sleep(0.02)


def _hold_here() -> None:
    import os
    import time

    folder = Path(os.environ[HOLD_DIR_ENV])
    (folder / f"reached-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (folder / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"held for {HOLD_LIMIT_S} s and never killed nor released")
        time.sleep(0.05)


def _install_hold(hold: str) -> None:
    """Holds, by name:

    - `before-marker:N`: a dataset writer wrote shard N's files and has not yet written its
      done-marker (shards 0..N-1 are marked done): the data plane's most delicate kill point;
    - `checkpoint-unmarked:S`: the Trainer saved checkpoint-S and its on_save callbacks
      (which mark it complete with its run-identity file, then sync it) have not run;
    - `checkpoint-complete:S`: checkpoint-S is saved, marked complete and synced;
    - `after-cache-batch:N`: an engine request cache wrote its N-th batch file (requests
      computed since then are not cached).
    """
    kind, _, value = hold.partition(":")
    if kind == "before-marker":
        import adamllm_core.dataset as dataset_module

        write = dataset_module.write_bytes_atomic
        marker = f"part-{int(value):05d}-"

        def held_write(fs: Any, path: str, data: bytes) -> None:
            name = path.rsplit("/", 1)[-1]
            in_marker_dir = f"/{dataset_module.MARKER_DIR}/" in path
            if in_marker_dir and name.startswith(marker) and name.endswith(".parquet.json"):
                _hold_here()
            write(fs, path, data)

        dataset_module.write_bytes_atomic = held_write
    elif kind == "after-cache-batch":
        import adamllm_core.engines.cache as cache_module

        write_batch = cache_module.write_bytes_atomic
        written = []

        def held_batch_write(fs: Any, path: str, data: bytes) -> None:
            write_batch(fs, path, data)
            written.append(path)
            if len(written) == int(value):
                _hold_here()

        cache_module.write_bytes_atomic = held_batch_write
    elif kind in ("checkpoint-unmarked", "checkpoint-complete"):
        from transformers.trainer_callback import CallbackHandler

        on_save = CallbackHandler.on_save
        step = int(value)

        def held_on_save(self: Any, args: Any, state: Any, control: Any) -> Any:
            if kind == "checkpoint-unmarked" and state.global_step == step:
                _hold_here()
            result = on_save(self, args, state, control)
            if kind == "checkpoint-complete" and state.global_step == step:
                _hold_here()
            return result

        CallbackHandler.on_save = held_on_save
    else:
        raise ValueError(f"unknown hold {hold!r}")


if __name__ == "__main__":
    import os
    import runpy
    import sys
    from itertools import takewhile

    _install_hold(os.environ[HOLD_ENV])
    # A launcher puts its options (deepspeed: --local_rank=N) right after `-m corpus`, as
    # for any module it runs: they go to the module, before its own arguments.
    options = list(takewhile(lambda argument: argument.startswith("-"), sys.argv[1:]))
    module, *arguments = sys.argv[1 + len(options) :]
    sys.argv = [module, *options, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


MARKER_TIME_NS = 1_000_000_000 * 10**9  # 2001: no write today can leave this time


def file_states(paths: Iterable[Path]) -> dict[Path, tuple[int, int, str]]:
    """What tells files kept from files written again: each is stamped with a marker time
    first, then its inode (a replacement is a new file), mtime and content hash recorded.
    mtime alone does not: on a filesystem with coarse timestamps a rewrite within the same
    tick keeps it; a rewrite after the marker sets today's time whatever the resolution."""
    paths = list(paths)
    for path in paths:
        os.utime(path, ns=(MARKER_TIME_NS, MARKER_TIME_NS))
    return {path: before for path, before in zip(paths, _states(paths), strict=True)}


def changed(states: dict[Path, tuple[int, int, str]]) -> list[Path]:
    """The files of `file_states` written again (or changed) since."""
    paths = list(states)
    return [p for p, now in zip(paths, _states(paths), strict=True) if now != states[p]]


def _states(paths: list[Path]) -> list[tuple[int, int, str]]:
    stats = [p.stat() for p in paths]
    return [
        (stat.st_ino, stat.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p, stat in zip(paths, stats, strict=True)
    ]


class FlakyServer(http.server.ThreadingHTTPServer):
    """A loopback server on a port the kernel picks as it binds (port 0, read back from
    `server_address`: nothing can take it between a probe and the bind). Its counters are
    its own, not the handler class's: a second server (another test, a rerun) starts from
    zero, so its 503s are answered again and retried again."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.lock = threading.Lock()  # handlers run on threads of their own
        self.failures = 0
        self.bad_requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 twice, then a completion; 400 for prompts containing 'bad'."""

    server: FlakyServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "bad" in body.get("prompt", ""):
            with self.server.lock:
                self.server.bad_requests += 1
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "bad request"}')
            return
        with self.server.lock:
            fail = self.server.failures < 2
            if fail:
                self.server.failures += 1
        if fail:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(
            json.dumps(
                {
                    "choices": [{"text": "ok", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
                }
            ).encode()
        )

    def log_message(self, *args) -> None:
        pass


def write_world_sources(root: Path, seed: int = 11, pairs: int = 200) -> dict[str, object]:
    """Sources made from the proving ground's generated world, for the tests that need a
    real-looking source of some size without ../shared/data:

    - `pairs/`: `pairs` image-caption records (data.jsonl + images/), then one record whose
      image is missing and one whose image does not decode;
    - `labels/`: six of those images with a `label` field and no caption field;
    - `benchmark/`: a proving-ground benchmark (generic rows with question, answer, skill,
      choices) on four held-out scenes.
    Returns the expected counts."""
    from adamllm_core.proving.bundles import write_benchmark, write_domain_pairs
    from adamllm_core.proving.world import WorldConfig

    world = WorldConfig()
    folder = root / "pairs"
    folder.mkdir(parents=True)
    write_domain_pairs(folder, seed, world, pairs)
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with open(folder / "data.jsonl", "a") as handle:
        handle.writelines(
            json.dumps({"image": image, "caption": "a shape"}) + "\n"
            for image in ("images/gone.png", "images/broken.png")
        )

    labels = root / "labels"
    (labels / "images").mkdir(parents=True)
    records = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()[:6]]
    with open(labels / "data.jsonl", "w") as handle:
        for record in records:
            shutil.copy(folder / record["image"], labels / record["image"])
            handle.write(json.dumps({"image": record["image"], "label": "shapes"}) + "\n")

    benchmark = root / "benchmark"
    benchmark.mkdir()
    per_skill = write_benchmark(benchmark, seed, world, 4)
    return {
        "pairs_in": pairs + 2,
        "quarantined": {"missing_image": 1, "not_an_image": 1},
        "labels": len(records),
        "questions": sum(per_skill.values()),
    }


# The world's skills as a teacher names them (the proving ground's question skills).
WORLD_SKILL_NAMES = {
    "colour": "colour recognition",
    "shape": "shape recognition",
    "count": "counting objects",
    "row": "vertical position",
    "column": "horizontal position",
    "size": "size comparison",
    "existence": "object search",
    "relation": "spatial relations",
}


def train_word_teacher(lm: str, root: Path, steps: int = 120) -> str:
    """The tiny random LM (which writes only newlines) trained through the real trainer to
    answer error-driven selection's teacher prompts (pool labels, missing skills) with the
    world skill of the question, so that teacher stages have words to work on. About 20 s."""
    import random

    from adamllm_core.proving.world import GENERAL, WorldConfig, questions, sample_scene
    from adamllm_core.schemas import TEXT_CHATS, ChatTurn, TextChat
    from adamllm_core.selection.teacher import TeacherPrompts, label_request, skill_request

    rng = random.Random(0)
    prompts = TeacherPrompts()
    chats = []
    for index in range(40):
        for question in questions(sample_scene(rng, GENERAL, WorldConfig()), rng):
            name = WORLD_SKILL_NAMES[question.skill]
            asked = (
                label_request(question.question, question.answer, prompts),
                skill_request(
                    question.question, question.answer, "no", [question.informative], 1, prompts
                ),
            )
            for kind, request in zip(("label", "skill"), asked):
                chats.append(
                    TextChat(
                        id=f"{kind}-{index}-{question.skill}",
                        task=kind,
                        messages=[
                            ChatTurn(role="user", content=request.messages[0].content),
                            ChatTurn(role="assistant", content=name),
                        ],
                    )
                )
    data = write_dataset(
        str(root / "teacher-chats"),
        TEXT_CHATS,
        [(chats, [])],
        parents=[ParentRef(uri="world", fingerprint="0", kind="source")],
    )
    return quick_train(lm, data, str(root / "teacher"), steps, learning_rate=1e-2)


def quick_train(model: str, data: str, out: str, steps: int, learning_rate: float) -> str:
    """A short post-training run through the real trainer (batch 16); the final model's path."""
    from adamllm_core.training.trainer import load_train_config, train

    settings = {
        "model": model,
        "task": "post_train",
        "learning_rate": learning_rate,
        "warmup_ratio": 0.05,
        "weight_decay": 0.0,
        "max_steps": steps,
        "global_batch_size": 16,
        "per_device_batch_size": 16,
        "max_seq_len": 512,
        "save_steps": 10 * steps,
        "logging_steps": steps,
    }
    return train(load_train_config(settings), data, out)["final"]
