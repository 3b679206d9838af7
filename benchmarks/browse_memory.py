"""Peak RSS of `adamllm browse` (build_site) against the size of a dataset.

    .venv/bin/python benchmarks/browse_memory.py [--small 2000] [--large 10000]

For each size N: writes N image-caption pairs of the proving ground's world (generated
96 px scenes and captions, scale.write_world), ingests them (256 rows a shard), then builds
the site (200 rows a page, 160 px thumbnails) in a fresh process and prints that process's
peak RSS, its pages, thumbnails and seconds; a second build into the same folder shows the
thumbnails reused. Then the ratio large / small (bounded memory: goal at most 1.15x for
5x the rows).
"""

import json
import tempfile
import time
from pathlib import Path

from scale import peak_mb, peak_ratio_main, run_child, write_world  # benchmarks/scale.py


def build_in_process(pairs: str, out: str) -> None:
    from adamllm_core.browse import build_site

    started = time.perf_counter()
    summary = build_site(pairs, out)
    print(
        json.dumps(
            {
                "rows": summary.rows,
                "pages": summary.pages,
                "written": summary.thumbnails_written,
                "reused": summary.thumbnails_reused,
                "seconds": round(time.perf_counter() - started, 1),
                "peak_mb": peak_mb(),
            }
        )
    )


def measure(count: int) -> dict:
    from adamllm_core.ingest import IngestConfig, ingest

    with tempfile.TemporaryDirectory() as work:
        write_world(Path(work) / "source", count)
        ingest(f"{work}/source/data.jsonl", f"{work}/pairs", IngestConfig(domain="bench"))
        first = run_child(__file__, f"{work}/pairs", f"{work}/site")
        again = run_child(__file__, f"{work}/pairs", f"{work}/site")
    for label, row in (("first build", first), ("rebuild", again)):
        print(
            f"{count:>7} pairs  {label:<11} {row['pages']:>4} pages, thumbnails "
            f"{row['written']:>6} written {row['reused']:>6} reused, {row['seconds']:6.1f} s,"
            f" peak RSS {row['peak_mb']:7.1f} MB",
            flush=True,
        )
    return first


if __name__ == "__main__":
    peak_ratio_main(
        __doc__, build_in_process, measure, small=2000, large=10000, unit="pairs", goal=1.15
    )
