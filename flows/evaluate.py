"""Flow `evaluate`: one model on a domain's benchmarks (paper Appendix H), then a report."""

from typing import Any

from prefect import flow

from adamllm_core.evaluation.suite import load_suite
from tasks.evaluate import evaluate_benchmark, evaluation_report


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    config: str | None = None,
    settings: dict[str, Any] | None = None,
    model: str | None = None,
    name: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate the suite in `config` (a YAML path) and/or `settings` (its keys); `model`,
    `name` and `out` override the file's. Writes OUT/<name>/<benchmark>/ and a report at
    OUT/<name>/ comparing with the suite's `compare_with` runs. Earlier predictions made
    with other settings, data or code are an error unless `overwrite`."""
    overrides = {
        k: v for k, v in {"model": model, "name": name, "out": out}.items() if v is not None
    }
    suite = load_suite(config, {**(settings or {}), **overrides})
    run = suite.run_uri()
    summaries = [
        evaluate_benchmark(eval_config, run, overwrite) for eval_config in suite.eval_configs()
    ]
    for summary in summaries:
        for row in summary["tasks"]:
            corrected = f" (corrected {row['score_corrected']})" if "score_corrected" in row else ""
            print(
                f"{row['task']:>22}: {row['metric']} {row['score']}{corrected} over {row['n']}"
                f"{', ' + str(row['fallbacks']) + ' random fallbacks' if row['fallbacks'] else ''}"
            )
    report = evaluation_report([*suite.compare_with, run], run)
    print(f"report: {report['report_md']} and {report['report_png']}")
    return {"run": run, "summaries": summaries, "report": report["report_md"]}


@flow(name="report", log_prints=True)
def report_flow(runs: list[str], out: str) -> dict[str, str]:
    """Compare evaluation runs (OUT/<name> folders): report.md + report.png at `out`, and a
    Markdown artifact."""
    report = evaluation_report(runs, out)
    print(report["markdown"])
    return report
