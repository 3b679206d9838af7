"""Ingest throughput against a bare Pillow decode + sha256 loop over the same files.

    .venv/bin/python benchmarks/ingest.py [SOURCE ...] [--repeats 5] [--s3]

Everything is timed in this one run, on this machine, interleaved: the ratios (throughput
per worker over the bare loop, 2 workers over 1) are what to compare across changes.
`--s3` also ingests the sources from a moto S3 server on 127.0.0.1. Default sources: the image-caption bundles in
../shared/data, else the bundled sample.
"""

import argparse
import hashlib
import io
import json
import os
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


def ingest_run(sources: list[str], workers: int, prefetch: bool = True) -> float:
    """Ingest every source once (its own run, as a user would); seconds in all."""
    os.environ["ADAMLLM_PREFETCH"] = "1" if prefetch else "0"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for n, source in enumerate(sources):
            options = SourceOptions(**SOURCE_OPTIONS.get(source.rstrip("/").rsplit("/", 1)[-1], {}))
            config = IngestConfig(domain="bench", workers=workers, source=options)
            ingest(source, f"{out}/{n}", config)
    return time.perf_counter() - start


def on_moto(sources: list[Path]) -> list[str]:
    """The sources copied into a bucket of a moto S3 server on 127.0.0.1, in a process of
    its own (not competing with ingest for this process's GIL); their s3:// URIs. This
    process's AWS variables point at it."""
    import atexit
    import socket
    import subprocess
    import sys

    import s3fs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(server.terminate)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    for _ in range(100):  # until it answers
        try:
            fs.mkdir("bench")
            break
        except OSError:
            time.sleep(0.1)
    for source in sources:
        fs.put(str(source) + "/", f"bench/{source.name}/", recursive=True)
    return [f"s3://bench/{source.name}" for source in sources]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--s3", action="store_true", help="also ingest the sources from moto")
    args = parser.parse_args()
    sources = (
        args.sources
        or [s for s in DEFAULT_SOURCES if s.is_dir()]
        or [REPO / "samples" / "biomed_pairs"]
    )
    files = [f for s in sources for f in image_files(s)]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} images, {megabytes:.1f} MB, from {', '.join(s.name for s in sources)}")
    local = [str(s) for s in sources]
    runs = {
        "bare": lambda: bare_loop(files),
        "1 worker": lambda: ingest_run(local, 1),
        "2 workers": lambda: ingest_run(local, 2),
        "1 worker, no prefetch": lambda: ingest_run(local, 1, prefetch=False),
        "2 workers, no prefetch": lambda: ingest_run(local, 2, prefetch=False),
    }
    if args.s3:
        remote = on_moto(sources)
        runs["s3: 1 worker"] = lambda: ingest_run(remote, 1)
        runs["s3: 2 workers"] = lambda: ingest_run(remote, 2)
    for run in runs.values():  # warm: page cache, imports, the worker processes
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so a slow spell hits every kind alike
        for name, run in runs.items():
            times[name].append(run())
    took = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in took.items():
        print(f"{name:24} {seconds:.3f} s  ({len(files) / seconds:5.0f} images/s)")
    print(
        f"throughput per worker (1 worker) over the bare loop: {took['bare'] / took['1 worker']:.2f}x  (goal >= 0.8)"
    )
    print(
        f"2 workers over 1 worker: {took['1 worker'] / took['2 workers']:.2f}x  (goal >= 1.7 on 2 cores)"
    )
    if args.s3:
        print(f"s3, 2 workers over 1 worker: {took['s3: 1 worker'] / took['s3: 2 workers']:.2f}x")
    # Per source: a run's fixed costs (listing, hashing the annotation file, leases, commit)
    # weigh most on small sources; the largest shows the per-image rate.
    for source in sources:
        bare = statistics.median(bare_loop(image_files(source)) for _ in range(args.repeats))
        one = statistics.median(ingest_run([str(source)], 1) for _ in range(args.repeats))
        print(
            f"{source.name}: {len(image_files(source))} images, 1 worker over the bare loop"
            f" {bare / one:.2f}x"
        )


if __name__ == "__main__":
    main()
