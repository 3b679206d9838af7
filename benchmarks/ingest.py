"""Ingest throughput against a bare Pillow decode + sha256 loop over the same files.

    .venv/bin/python benchmarks/ingest.py [SOURCE ...] [--repeats 3]

Both are timed in this one run, on this machine; the ratio (ingest time / bare time) is
what to compare across changes. Default sources: the image-caption bundles in
../shared/data, else the bundled sample.
"""

import argparse
import hashlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from adamllm_core.importers import SourceOptions
from adamllm_core.ingest import IngestConfig, ingest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_SOURCES = [SHARED / "medpix_captions", SHARED / "rsicd_captions", SHARED / "vqa_rad_train"]
# Bundles without a `caption` field, and the options that make captions of them.
SOURCE_OPTIONS = {
    "vqa_rad_train": {"caption_template": "Q: {question} A: {answer}"},
    "food101_mini": {"caption_field": "label"},
}


def image_files(source: Path) -> list[Path]:
    lines = (source / "data.jsonl").read_text().splitlines()
    return [source / json.loads(line)["image"] for line in lines if line.strip()]


def bare_loop(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    return time.perf_counter() - start


def ingest_run(sources: list[Path], workers: int) -> float:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for n, source in enumerate(sources):
            options = SourceOptions(**SOURCE_OPTIONS.get(source.name, {}))
            config = IngestConfig(domain="bench", workers=workers, source=options)
            ingest(str(source), f"{out}/{n}", config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sources = (
        args.sources
        or [s for s in DEFAULT_SOURCES if s.is_dir()]
        or [REPO / "samples" / "biomed_pairs"]
    )
    files = [f for s in sources for f in image_files(s)]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} images, {megabytes:.1f} MB, from {', '.join(s.name for s in sources)}")

    bare = statistics.median(bare_loop(files) for _ in range(args.repeats))
    print(f"bare Pillow decode + sha256: {bare:.3f} s  ({len(files) / bare:.0f} images/s)")
    for workers in (1, 2):
        took = statistics.median(ingest_run(sources, workers) for _ in range(args.repeats))
        print(
            f"ingest, {workers} worker(s):       {took:.3f} s  ({len(files) / took:.0f} images/s)  "
            f"ratio to bare loop: {took / bare:.2f}x"
        )


if __name__ == "__main__":
    main()
