"""Tasks of the evaluation suite: one benchmark, and the comparison report."""

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from adamllm_core.evaluation.report import write_report
from adamllm_core.evaluation.run import EvalConfig, evaluation_identity, predictions_uri
from adamllm_core.pool import run_on_pool
from tasks.caching import OutputDatasetPolicy
from tasks.reporting import pool_reporter, stage_progress


@task(
    name="evaluate-benchmark",
    cache_policy=OutputDatasetPolicy(
        expected_identity=lambda i: evaluation_identity(i["config"]),
        output=lambda i: predictions_uri(i["config"], i["run_uri"]),
    ),
    persist_result=True,
)
def evaluate_benchmark(config: EvalConfig, run_uri: str, overwrite: bool = False) -> dict[str, Any]:
    """Predictions + summary for one benchmark. A finished, identical predictions dataset is
    served from storage; an interrupted one resumes (finished shards kept, requests cached)."""
    with stage_progress(f"evaluate {config.benchmark}") as progress:
        summary = run_on_pool(
            "evaluate",
            [run_uri],
            config,
            overwrite=overwrite,
            progress=progress,
            report=pool_reporter(),
        )
    create_table_artifact(
        table=[
            {**task, "questions": summary["questions"], "unreadable": summary["unreadable"]}
            for task in summary["tasks"]
        ],
        key=f"eval-{summary['benchmark'].replace('_', '-')}",
        description=f"**{summary['title']}** with `{summary['model']}` → `{summary['predictions']}`",
    )
    return summary


@task(name="evaluation-report", persist_result=True)
def evaluation_report(run_uris: list[str], out: str) -> dict[str, str]:
    """Markdown table + bar chart comparing runs; also a Prefect Markdown artifact."""
    report = write_report(run_uris, out)
    create_markdown_artifact(
        markdown=report["markdown"] + f"\n![chart]({report['report_png']})\n",
        key="eval-report",
        description=f"report → {report['report_md']}",
    )
    return report
