"""Stage statistics and progress, shown in the Prefect UI and the terminal."""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.logging import get_run_logger
from tqdm import tqdm

from adamllm_core.dataset import Manifest
from adamllm_core.storage import redact


def stats_table(manifest: Manifest) -> list[dict[str, Any]]:
    stats = manifest.stats
    rows: list[dict[str, Any]] = [
        {"statistic": "rows in", "value": stats.rows_in},
        {"statistic": "rows out", "value": stats.rows_out},
        {"statistic": "quarantined", "value": stats.quarantined_total},
    ]
    rows += [
        {"statistic": f"quarantined: {reason}", "value": n}
        for reason, n in stats.quarantined.items()
    ]
    rows += [
        {"statistic": name.replace("_", " "), "value": n} for name, n in stats.counters.items()
    ]
    rows.append({"statistic": "seconds", "value": stats.seconds})
    return rows


def publish_stats(stage: str, uri: str, manifest: Manifest) -> None:
    """A table artifact with the stage's counts (also kept in the manifest)."""
    create_table_artifact(
        table=stats_table(manifest),
        key=f"{stage}-stats",
        description=f"**{stage}** → `{redact(uri)}` ({manifest.rows} rows, fingerprint {manifest.fingerprint})",
    )
    get_run_logger().info(
        "%s: %d rows in, %d out, %d quarantined %s in %.1fs → %s",
        stage,
        manifest.stats.rows_in,
        manifest.stats.rows_out,
        manifest.stats.quarantined_total,
        manifest.stats.quarantined or "",
        manifest.stats.seconds,
        redact(uri),
    )


def publish_pool_stats(stats: Any) -> None:
    """The engine pool's work per actor (node, what it runs now, shards, busy seconds) and
    its retries, as a table artifact (a new version of it each time); kept out of the
    manifest, whose fingerprint must not depend on which actor wrote a shard."""
    now = time.time()

    def doing(name: str, actor: dict[str, Any]) -> str:
        if "ended" in actor:
            return actor["ended"]
        if name in stats.running:
            shards, since = stats.running[name]
            return f"shards {', '.join(map(str, shards))} for {now - since:.0f} s"
        return "idle" if actor["pid"] else "starting"

    rows = [
        {
            "actor": name,
            "node": (actor["node"] or "")[:12],
            "now": doing(name, actor),
            "shards": actor["shards"],
            "busy s": actor["seconds"],
            "shards/min": round(60 * actor["shards"] / actor["seconds"], 1)
            if actor["seconds"]
            else None,
        }
        for name, actor in stats.actors.items()
    ]
    state = (
        f"done in {stats.seconds:.1f} s"
        if stats.finished
        else f"{stats.done} of {stats.dispatched} done"
    )
    create_table_artifact(
        table=rows,
        key=f"{stats.stage.replace('_', '-')}-pool",
        description=f"**{stats.stage}** on the engine pool: {stats.shards} shards,"
        f" {stats.dispatched} to run, {state}; {len(stats.retried)} retried {stats.retried or ''}",
    )
    if stats.finished:
        get_run_logger().info("%s pool: %s", stats.stage, stats.as_dict())


def pool_reporter(min_interval: float = 5.0) -> Callable[[Any], None]:
    """A `report` for run_on_pool: publishes the pool's table as it changes, at most every
    `min_interval` seconds, and when the pool is done."""
    last = -math.inf

    def report(stats: Any) -> None:
        nonlocal last
        now = time.monotonic()
        if stats.finished or now - last >= min_interval:
            last = now
            publish_pool_stats(stats)

    return report


@contextmanager
def stage_progress(stage: str, min_interval: float = 1.0, unit: str = "rec") -> Iterator[Any]:
    """A progress callback (done, total[, figures]) feeding a Prefect progress artifact and a
    tqdm bar (on a terminal only), the figures (e.g. loss) beside the bar."""
    artifact_id = create_progress_artifact(progress=0.0, description=f"{stage} progress")
    bar = tqdm(desc=stage, unit=unit, disable=None)
    last_update = 0.0

    def report(done: int, total: int, figures: dict[str, Any] | None = None) -> None:
        nonlocal last_update
        bar.total = total
        bar.n = done
        if figures:
            bar.set_postfix(figures, refresh=False)
        bar.refresh()
        now = time.monotonic()
        if done >= total or now - last_update >= min_interval:
            last_update = now
            update_progress_artifact(artifact_id, progress=100.0 * done / total if total else 100.0)

    try:
        yield report
    finally:
        bar.close()
