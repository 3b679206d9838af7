"""Peak RSS of ingest against the size of a JSON-list annotation file (LLaVA layout).

    .venv/bin/python benchmarks/ingest_memory.py [--small 4000] [--large 40000]

Writes one JSON list of `images` + `messages` records with 2 KB captions over 64 small
generated images, at two sizes, ingests each in a fresh process and prints each process's
peak RSS and the ratio large / small (bounded memory: at most 1.15x for 10x the records).
"""

import io
import json
import random
import tempfile
from pathlib import Path

from PIL import Image
from scale import peak_mb, peak_ratio_main, run_child  # benchmarks/scale.py

IMAGES = 64
CAPTION_BYTES = 2048
WORDS = [
    "scan",
    "shows",
    "a",
    "lesion",
    "in",
    "the",
    "left",
    "lobe",
    "with",
    "contrast",
    "enhancement",
    "and",
    "no",
    "edema",
]


def write_source(root: Path, records: int) -> None:
    (root / "images").mkdir(parents=True)
    rng = random.Random(0)
    for i in range(IMAGES):
        image = Image.new("RGB", (48, 40), (rng.randrange(256), rng.randrange(256), i * 3))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        (root / "images" / f"{i}.png").write_bytes(buffer.getvalue())
    with (root / "train.json").open("w") as handle:
        handle.write("[\n")
        for n in range(records):
            words: list[str] = [f"record {n}:"]
            while sum(len(w) + 1 for w in words) < CAPTION_BYTES:
                words.append(rng.choice(WORDS))
            record = {
                "images": [f"images/{n % IMAGES}.png"],
                "messages": [
                    {"role": "user", "content": "<image>Describe the image."},
                    {"role": "assistant", "content": " ".join(words)},
                ],
            }
            handle.write(("," if n else "") + json.dumps(record) + "\n")
        handle.write("]\n")


def ingest_in_process(source: str, out: str) -> None:
    from adamllm_core.ingest import IngestConfig, ingest

    manifest = ingest(source, out, IngestConfig(domain="bench"))
    print(json.dumps({"rows": manifest.rows, "peak_mb": peak_mb()}))


def measure(records: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_source(root / "src", records)
        size = (root / "src" / "train.json").stat().st_size
        measured = run_child(__file__, str(root / "src" / "train.json"), str(root / "out"))
    line = f"{records:>7} records, annotation file {size / 1e6:.1f} MB: {measured['rows']} rows"
    print(f"{line}, peak RSS {measured['peak_mb']} MB", flush=True)
    return measured


if __name__ == "__main__":
    peak_ratio_main(
        __doc__, ingest_in_process, measure, small=4000, large=40000, unit="records", goal=1.15
    )
