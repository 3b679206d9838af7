"""The benchmarks the evaluation knows: the paper's twelve (Tables 13-14) and the proving
ground's, one registered release class each (`adapters.py`), indexed here by name."""

from adamllm_core.evaluation.adapters import RELEASES
from adamllm_core.evaluation.spec import (
    BenchmarkSpec,
    Metric,
    item_prompt,
    option_letters,
    render_prompt,
)

BENCHMARKS: dict[str, BenchmarkSpec] = {name: release.spec for name, release in RELEASES.items()}
DOMAINS = sorted({s.domain for s in BENCHMARKS.values()})


def benchmark(name: str) -> BenchmarkSpec:
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


__all__ = [
    "BENCHMARKS",
    "DOMAINS",
    "BenchmarkSpec",
    "Metric",
    "benchmark",
    "item_prompt",
    "option_letters",
    "render_prompt",
]
