"""Data parallelism over shards: one engine process per device.

`run_parallel(stage, kwargs, config)` prepares the outputs' work areas once, in this
process, then starts `data_parallel_size` processes, each with its own
CUDA_VISIBLE_DEVICES, running the stage on shards `k % N == rank` (each shard is written
and marked done on its own, so processes never touch the same files; ranks never prepare
or delete), then commits in this process once every shard is done. A process that fails fails the stage with its
output's tail; finished shards stay done for the re-run.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from adamllm_core.engines import EngineConfig
from adamllm_core.lease import WriterLease
from adamllm_core.storage import normalise_uri

STAGES = ("synthesize", "filter_triplets")


def _stage_function(stage: str) -> Any:
    from adamllm_core import pipeline

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} cannot run in parallel; choose from {STAGES}")
    return getattr(pipeline, stage)


def _config_class(stage: str) -> Any:
    from adamllm_core.filtering import FilterConfig
    from adamllm_core.synthesis import SynthConfig

    return SynthConfig if stage == "synthesize" else FilterConfig


def exit_reason(returncode: int) -> str | None:
    """Why a rank process ended, or None when it succeeded."""
    if returncode == 0:
        return None
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = (
            " (most likely the out-of-memory killer: check the node's memory and dmesg)"
            if -returncode == signal.SIGKILL
            else ""
        )
        return f"was killed by {name}{hint}"
    return f"exited {returncode}"


def run_parallel(stage: str, args: list[str], config: Any, **kwargs: Any) -> Any:
    """Run `stage(*args, config, **kwargs)` on `config.engine.data_parallel_size` processes."""
    engine: EngineConfig = config.engine
    world = engine.data_parallel_size
    function = _stage_function(stage)
    if world == 1:
        return function(*args, config, **kwargs)
    devices = engine.devices or tuple(str(i) for i in range(world))
    if len(devices) != world:
        raise ValueError(
            f"engine.devices names {len(devices)} devices for data_parallel_size {world}"
        )
    spec = {
        "stage": stage,
        "args": args,
        "config": config.model_dump(mode="json"),
        "kwargs": {k: v for k, v in kwargs.items() if k in ("cache_uri", "overwrite")},
    }
    # The ranks write without leases: this process holds the outputs' leases for them (the
    # final call below, in this process, takes them over and releases them at its commit).
    leases = [WriterLease(normalise_uri(uri)) for uri in args[1:]]
    for lease in leases:
        lease.acquire()
    function(*args, config, role="prepare", **kwargs)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    processes = []
    # Logs go to files, not pipes: a rank that fills a pipe nobody reads yet would stall.
    logs = [tempfile.TemporaryFile() for _ in devices]  # noqa: SIM115 (closed after the ranks finish)
    for rank, device in enumerate(devices):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "adamllm_core.parallel", handle.name, str(rank), str(world)],
                env=env,
                stdout=logs[rank],
                stderr=subprocess.STDOUT,
            )
        )
    failures = []
    deadline = time.monotonic() + engine.rank_timeout_s if engine.rank_timeout_s else None
    for rank, process in enumerate(processes):
        try:
            process.wait(
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            reason = exit_reason(process.returncode)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            reason = f"did not finish within rank_timeout_s {engine.rank_timeout_s:g} (hung?)"
        logs[rank].seek(0)
        output = logs[rank].read()
        logs[rank].close()
        if reason:
            failures.append(
                f"rank {rank} (device {devices[rank]}) {reason}:\n"
                f"{output.decode(errors='replace')[-2000:]}"
            )
    os.unlink(handle.name)
    if failures:
        raise RuntimeError(
            f"{stage} failed on {len(failures)} of {world} processes:\n" + "\n".join(failures)
        )
    return function(*args, config, **kwargs)  # every shard is done: this commits


def _worker(spec_path: str, rank: int, world: int) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    config = _config_class(spec["stage"]).model_validate(spec["config"])
    _stage_function(spec["stage"])(
        *spec["args"], config, role="rank", rank=rank, world=world, **spec["kwargs"]
    )


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
