"""Flow `evaluate`: one model on a domain's benchmarks (paper Appendix H), then a report."""

from typing import Annotated, Any

from prefect import flow
from pydantic import Field

from adamllm_core.evaluation.suite import load_suite
from adamllm_core.run_parameters import KEEP_ENGINE, EngineChoice
from adamllm_core.storage import join
from tasks.browse import browse_outputs
from tasks.evaluate import evaluate_benchmark, evaluation_report


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    config: str | None = None,
    settings: dict[str, Any] | None = None,
    model: str | None = None,
    name: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    engine: EngineChoice = KEEP_ENGINE,
    max_new_tokens: Annotated[int, Field(gt=0, le=32_768)] | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a domain's benchmarks (Table 13-14), then report.

    Writes OUT/<name>/<benchmark>/ and a report at OUT/<name>/ comparing with the suite's
    `compare_with` runs. Earlier predictions made with other settings, data or code are an
    error unless `overwrite`.

    Args:
        config: the evaluation suite's file (YAML), e.g. deployments/eval-biomed.yaml,
            relative to the project folder the worker runs in
        settings: suite settings (the file's keys) in place of, or over, the file's
        model: the model to evaluate (hub id, local folder, s3:// published model, a
            trained run's final/), instead of the suite's
        name: the run's name: predictions go to OUT/<name>/
        out: output root instead of the suite's (local folder or s3:// URI)
        overwrite: replace predictions made earlier with other settings, data or code
        engine: the engine that runs the model, instead of the suite's
        max_new_tokens: longest answer in tokens, instead of the suite's
    """
    overrides = {
        k: v
        for k, v in {
            "model": model,
            "name": name,
            "out": out,
            "max_new_tokens": max_new_tokens,
            **engine.dotted("engine"),
        }.items()
        if v is not None
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
    if suite.browse_rows != 0:
        browse_outputs(run, join(run, "_browse"), suite.browse_rows)
    return {"run": run, "summaries": summaries, "report": report["report_md"]}


@flow(name="report", log_prints=True)
def report_flow(runs: list[str], out: str) -> dict[str, str]:
    """Compare evaluation runs: report.md + report.png at `out`, and a Markdown artifact.

    Args:
        runs: evaluation run folders (OUT/<name>), the first the baseline
        out: where report.md and report.png go
    """
    report = evaluation_report(runs, out)
    print(report["markdown"])
    return report
