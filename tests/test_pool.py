"""The engine pool on a real local Ray cluster: a head node and worker nodes (`ray start`)
on 127.0.0.1, one CPU each, started and stopped here. CPU actors run the tiny models (a GPU
actor differs only in the GPUs it reserves)."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.sorting import ArtifactSort

from adamllm_core.dataset import Dataset
from adamllm_core.engines import EngineConfig
from adamllm_core.filtering import FilterConfig
from adamllm_core.ingest import IngestConfig, ingest
from adamllm_core.pipeline import filter_triplets, synthesize
from adamllm_core.pool import PoolStats, run_on_pool
from adamllm_core.synthesis import SynthConfig
from tasks.synth import synthesize_triplets

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
# Quiet, no token auth on this loopback-only cluster (Ray turns it on when a local
# `ray.init()` has left ~/.ray/auth_token behind), and a dead node noticed in seconds
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}


class LocalCluster:
    def __init__(self, address: str, tmp: Path):
        self.address = address
        self.tmp = tmp
        self.workers: list[subprocess.Popen] = []

    def add_node(self) -> subprocess.Popen:
        """A worker node (`ray start --block`, in a process group of its own so a test can
        kill the whole node)."""
        log = open(self.tmp / f"node-{len(self.workers)}.log", "w")  # noqa: SIM115 (the node's lifetime)
        node = subprocess.Popen(
            [RAY, "start", f"--address={self.address}", "--node-ip-address=127.0.0.1"]
            + ["--num-cpus=1", "--num-gpus=0", "--block"],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(node)
        return node

    def alive_nodes(self) -> int:
        import ray

        return sum(node["Alive"] for node in ray.nodes())

    def wait_for(self, nodes: int, timeout: float = 120) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != nodes:
            assert time.monotonic() < deadline, f"{self.alive_nodes()} nodes alive, not {nodes}"
            time.sleep(0.5)

    def kill(self, node: subprocess.Popen) -> None:
        """Every process of the node: its session (Ray's workers have process groups of
        their own, in the node's session)."""
        subprocess.run(["pkill", "-KILL", "-s", str(node.pid)], check=False)
        node.wait()


@pytest.fixture(scope="module")
def ray_cluster(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    import ray

    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)  # this process is the cluster's driver
    # `ray start` takes a port number, not a socket: a port probed free here can be taken
    # before the head binds it, so the start is tried again on another port (bounded)
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        head = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1"]
        head += ["--num-cpus=1", "--num-gpus=0", "--include-dashboard=false"]
        started = subprocess.run(
            head + ["--disable-usage-stats"], check=False, capture_output=True, text=True
        )
        if started.returncode == 0:
            break
        subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
    else:
        pytest.fail(f"the Ray head did not start: {started.stdout}{started.stderr}")
    cluster = LocalCluster(f"127.0.0.1:{port}", tmp_path_factory.mktemp("ray"))
    try:
        cluster.add_node()
        cluster.wait_for(2)
        yield cluster
    finally:
        ray.shutdown()
        for node in cluster.workers:
            if node.poll() is None:
                cluster.kill(node)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("pairs") / "pairs")
    ingest(
        str(REPO / "samples" / "biomed_pairs"), out, IngestConfig(domain="biomed", rows_per_shard=4)
    )
    return out


def busy(node: subprocess.Popen) -> bool:
    """Whether a process of this node (its session) runs a shard (`ray::StageWorker.run`)."""
    listing = subprocess.run(
        ["ps", "-eo", "sid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return any(
        line.split(None, 1)[0] == str(node.pid) and "StageWorker.run" in line
        for line in listing.splitlines()
        if line.strip()
    )


def on_pool(config, cluster: LocalCluster, **update):
    engine = config.engine.model_copy(
        update={"data_parallel_size": 2, "ray_address": cluster.address, **update}
    )
    return config.model_copy(update={"engine": engine})


def test_synthesize_and_filter_on_two_nodes_equal_one_process(
    ray_cluster: LocalCluster, small_shards: str, tmp_path: Path
) -> None:
    """The pool's datasets are the single process's (same shards, rows, fingerprints), and
    both nodes wrote some of the shards."""
    synth = SynthConfig(engine=EngineConfig(model="tiny:vlm"), max_new_tokens=16)
    judge = FilterConfig(engine=EngineConfig(model="tiny:lm"), keep=("Yes", "No"))
    one = synthesize(small_shards, str(tmp_path / "one"), synth)
    reports: list[PoolStats] = []
    running_seen: list[dict] = []  # what the actors ran at each report (reports are live)
    rows_done: list[tuple[int, int]] = []

    def report(stats: PoolStats) -> None:
        reports.append(stats)
        running_seen.append(dict(stats.running))

    two = run_on_pool(
        "synthesize",
        [small_shards, str(tmp_path / "two")],
        on_pool(synth, ray_cluster),
        report=report,
        progress=lambda done, total: rows_done.append((done, total)),
    )
    assert len(two.shards) == 6 and two.fingerprint == one.fingerprint and two.shards == one.shards
    stats = reports[-1]
    assert sum(stats.nodes().values()) == 6 and len(stats.nodes()) == 2  # both nodes wrote
    rows = Dataset(small_shards).manifest.rows
    assert not stats.retried and rows_done[-1] == (rows, rows)
    # two shards of 4 rows per actor call: together they fill an engine batch (8)
    assert synth.engine.batch_size == 8 and rows_done == [(8, 24), (16, 24), (24, 24)]
    # reported while it ran: shards seen running on actors, none left at the end
    assert any(running_seen[:-1]) and running_seen[-1] == {} and stats.finished
    ran = [shard for seen in running_seen for shards, _ in seen.values() for shard in shards]
    assert set(ran) == set(range(6))

    # the filter's two outputs too, from the pool's triplets
    kept, rejected = filter_triplets(
        str(tmp_path / "two"), str(tmp_path / "kept-one"), str(tmp_path / "rejected-one"), judge
    )
    pooled = run_on_pool(
        "filter_triplets",
        [str(tmp_path / "two"), str(tmp_path / "kept-two"), str(tmp_path / "rejected-two")],
        on_pool(judge, ray_cluster),
    )
    assert [m.fingerprint for m in pooled] == [kept.fingerprint, rejected.fingerprint]
    # a finished stage is not run again: no actor is started for it
    again_reports: list[PoolStats] = []
    again = run_on_pool(
        "synthesize",
        [small_shards, str(tmp_path / "two")],
        on_pool(synth, ray_cluster),
        report=again_reports.append,
    )
    assert again.fingerprint == one.fingerprint and again_reports == []

    # replacing it (another config, --overwrite): every shard goes to the actors
    shorter = synth.model_copy(update={"max_new_tokens": 8})
    replaced = run_on_pool(
        "synthesize",
        [small_shards, str(tmp_path / "two")],
        on_pool(shorter, ray_cluster),
        overwrite=True,
        report=again_reports.append,
    )
    assert again_reports[-1].dispatched == 6 and sum(again_reports[-1].nodes().values()) == 6
    assert (
        replaced.fingerprint
        == synthesize(small_shards, str(tmp_path / "short"), shorter).fingerprint
    )

    # an interrupted stage: only the shards not yet written go to the actors
    resumed = str(tmp_path / "resumed")
    synthesize(small_shards, resumed, synth, role="prepare")
    synthesize(small_shards, resumed, synth, role="worker", shards=[0, 2, 5])
    reports.clear()
    manifest = run_on_pool(
        "synthesize", [small_shards, resumed], on_pool(synth, ray_cluster), report=reports.append
    )
    assert manifest.fingerprint == one.fingerprint
    assert set(reports[-1].shard_seconds) == {1, 3, 4} and reports[-1].dispatched == 3


def test_a_node_killed_mid_stage_loses_nothing(
    ray_cluster: LocalCluster, small_shards: str, tmp_path: Path
) -> None:
    """A second worker node joins; once the stage has written a shard, that node is killed
    with its actor. The shard it held goes to another actor: the stage finishes with the
    single process's dataset, the killed shard counted as retried."""
    synth = SynthConfig(engine=EngineConfig(model="tiny:vlm"), max_new_tokens=64)
    reference = synthesize(small_shards, str(tmp_path / "one"), synth)
    doomed = ray_cluster.add_node()
    ray_cluster.wait_for(3)
    reports: list[PoolStats] = []
    out = tmp_path / "pooled"
    result: dict = {}

    def stage() -> None:
        try:
            result["manifest"] = run_on_pool(
                "synthesize",
                [small_shards, str(out)],
                on_pool(synth, ray_cluster, data_parallel_size=3),
                report=reports.append,
            )
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = error

    runner = threading.Thread(target=stage)
    runner.start()
    # the doomed node's actor is writing a shard: Ray titles its process with the method
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.is_alive() and not busy(doomed):
        time.sleep(0.02)
    assert runner.is_alive(), "the stage ended before the doomed node's actor ran"
    ray_cluster.kill(doomed)
    runner.join(timeout=600)
    assert not runner.is_alive() and "error" not in result, result.get("error")
    manifest = result["manifest"]
    assert manifest.fingerprint == reference.fingerprint and manifest.rows == reference.rows
    stats = reports[-1]
    assert stats.retried and all("actor died" in r["reason"] for r in stats.retried)
    assert sum(actor["shards"] for actor in stats.actors.values()) == 6


def test_evaluation_on_the_pool_equals_one_process(
    ray_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A benchmark's questions, cut into shards, answered by two actors: the predictions
    and the summary are the single process's."""
    from adamllm_core.evaluation.run import EvalConfig, evaluate, predictions_uri

    config = EvalConfig(
        benchmark="vqa_rad",
        data=str(REPO / "samples" / "eval_demo" / "vqa_rad"),
        engine=EngineConfig(model="tiny:vlm"),
        max_new_tokens=8,
        rows_per_shard=5,
    )
    one = evaluate(config, str(tmp_path / "one"))
    reports: list[PoolStats] = []
    two = run_on_pool(
        "evaluate", [str(tmp_path / "two")], on_pool(config, ray_cluster), report=reports.append
    )
    assert {k: v for k, v in two.items() if k != "predictions"} == {
        k: v for k, v in one.items() if k != "predictions"
    }
    pooled = Dataset(predictions_uri(config, str(tmp_path / "two"))).manifest
    single = Dataset(predictions_uri(config, str(tmp_path / "one"))).manifest
    assert pooled.fingerprint == single.fingerprint and len(pooled.shards) > 2
    assert sum(reports[-1].nodes().values()) == len(pooled.shards)


def test_a_synthesizer_tuned_into_the_bucket_is_pulled_by_the_actors(
    ray_cluster: LocalCluster,
    small_shards: str,
    seed_dataset: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Synthesizer tuning writes to object storage and names its model there; the pool's
    actors (other Ray nodes) pull it, checked against its manifest, and synthesize what
    the single process synthesizes with it."""
    from adamllm_core.training.trainer import preset, train_to

    monkeypatch.setenv("ADAMLLM_TRAIN_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("ADAMLLM_MODEL_CACHE", str(tmp_path / "models"))  # actors get it too
    tuned = train_to(
        preset(
            "tiny",
            task="synthesizer",
            max_steps=4,
            global_batch_size=2,
            per_device_batch_size=2,
        ),
        seed_dataset,
        f"{s3_bucket}/synthesizer",
    )
    assert tuned["final"] == f"{s3_bucket}/synthesizer/final"
    synth = SynthConfig(engine=EngineConfig(model=tuned["final"]), max_new_tokens=16)
    one = synthesize(small_shards, str(tmp_path / "one"), synth)
    reports: list[PoolStats] = []
    two = run_on_pool(
        "synthesize",
        [small_shards, str(tmp_path / "two")],
        on_pool(synth, ray_cluster),
        report=reports.append,
    )
    assert two.fingerprint == one.fingerprint and len(reports[-1].nodes()) == 2
    # the stage knows the model by its content, the same wherever it was pulled
    assert one.config["model_identity"].startswith("local:")


def test_the_pool_reports_to_the_prefect_ui_while_it_runs(
    prefect_server: str, ray_cluster: LocalCluster, small_shards: str, tmp_path: Path
) -> None:
    """The synthesize task on the pool, in a flow on the test Prefect server: the pool's
    table artifact is published when the actors start (each one starting, nothing done)
    and again at the end (every actor idle, every shard counted), and the progress
    artifact reaches 100."""
    synth = SynthConfig(engine=EngineConfig(model="tiny:vlm"), max_new_tokens=16)

    @flow
    def pooled_synth() -> None:
        synthesize_triplets(small_shards, str(tmp_path / "out"), on_pool(synth, ray_cluster))

    state = pooled_synth(return_state=True)
    assert state.is_completed(), state
    run_id = state.state_details.flow_run_id

    async def artifacts() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])),
                sort=ArtifactSort.CREATED_DESC,
                limit=50,
            )

    found = asyncio.run(artifacts())
    pool = [a for a in found if a.key == "synthesize-pool"][::-1]  # oldest first
    assert len(pool) >= 2
    first, last = (
        json.loads(a.data) if isinstance(a.data, str) else a.data for a in (pool[0], pool[-1])
    )
    assert {row["now"] for row in first} == {"starting"} and "0 of 6 done" in pool[0].description
    assert {row["now"] for row in last} == {"idle"} and sum(row["shards"] for row in last) == 6
    assert "done in" in pool[-1].description
    progress = [float(a.data) for a in found if a.type == "progress"]
    assert progress and progress[0] == 100.0
