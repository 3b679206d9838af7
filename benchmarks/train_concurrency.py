"""Small-model post-training on CPU: one run on every core against concurrent runs of one
core each, same mixture, settings and steps, measured in one run.

    .venv/bin/python benchmarks/train_concurrency.py MIXTURE_URI MODEL [--steps 150]

The proving ground's models are tiny, so a second thread speeds a step up less than a
second run would use it. Prints the wall time of each arrangement and
`concurrent over sequential: X.XXx` (above 1: running the variants side by side pays).
"""

import argparse
import multiprocessing
import os
import tempfile
import time


def _train(settings: dict, data: str, out: str, threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch loads, for every pool it starts
    import torch

    torch.set_num_threads(threads)
    from adamllm_core.training.trainer import load_train_config, train

    train(load_train_config(settings), data, out)


def _run_all(jobs: list[tuple[dict, str, str, int]]) -> float:
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    processes = [context.Process(target=_train, args=job) for job in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a training run failed (exit code {process.exitcode})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mixture")
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    from adamllm_core.proving.experiment import ProveConfig

    cores = os.cpu_count() or 1
    settings = {
        **ProveConfig.for_scale("ci").post_train,
        "model": args.model,
        "max_steps": args.steps,
        "save_steps": 10 * args.steps,  # no checkpoint inside the timed steps
    }
    with tempfile.TemporaryDirectory() as work:
        sequential = sum(
            _run_all([(settings, args.mixture, f"{work}/seq-{n}", cores)]) for n in range(cores)
        )
        concurrent = _run_all(
            [(settings, args.mixture, f"{work}/par-{n}", 1) for n in range(cores)]
        )
    print(
        f"{cores} runs of {args.steps} steps, one after another on {cores} threads: {sequential:.1f} s"
    )
    print(f"{cores} runs side by side, one thread each: {concurrent:.1f} s")
    print(f"concurrent over sequential: {sequential / concurrent:.2f}x")


if __name__ == "__main__":
    main()
