"""Compare evaluation runs per task and per domain average: a Markdown table and a bar
chart in the manner of the paper's Figure 1 (one bar per run, grouped by domain).

A run is an evaluation output folder holding `<benchmark>/summary.json` files. Domain
averages are over the tasks as Table 13 lists them (VQA benchmarks count open and closed
separately, closed by the paper-compatible rule); the corrected CLOSED accuracy is shown
in its own rows and left out of the averages, so averages compare with the paper's.
"""

import io
from typing import Any

from adamllm_core.evaluation.benchmarks import BENCHMARKS
from adamllm_core.evaluation.run import read_summary
from adamllm_core.storage import filesystem, join, normalise_uri, redact, write_bytes_atomic

BENCHMARK_ORDER = list(BENCHMARKS)


def load_run(uri: str) -> list[dict[str, Any]]:
    fs, path = filesystem(normalise_uri(uri))
    files = sorted(fs.glob(join(path, "*", "summary.json")))
    if not files:
        raise ValueError(
            f"{redact(uri)}: no <benchmark>/summary.json in it (is it an evaluation output?)"
        )
    summaries = [read_summary(fs.unstrip_protocol(f)) for f in files]
    return sorted(summaries, key=lambda s: BENCHMARK_ORDER.index(s["benchmark"]))


def run_label(uri: str) -> str:
    return normalise_uri(uri).rstrip("/").rsplit("/", 1)[-1]


def comparison(
    runs: dict[str, list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float | None]]]:
    """Rows (one per task: task, domain, metric, score per run) and domain averages per run."""
    rows: dict[str, dict[str, Any]] = {}
    for label, summaries in runs.items():
        for summary in summaries:
            for task in summary["tasks"]:
                row = rows.setdefault(
                    task["task"],
                    {
                        "task": task["task"],
                        "domain": task["domain"],
                        "metric": task["metric"],
                        "scores": {},
                        "n": {},
                    },
                )
                row["scores"][label] = task["score"]
                row["n"][label] = task["n"]
                if "score_corrected" in task:
                    extra = rows.setdefault(
                        task["task"] + " (corrected)",
                        {
                            "task": task["task"] + " (corrected)",
                            "domain": task["domain"],
                            "metric": "accuracy",
                            "scores": {},
                            "n": {},
                            "corrected": True,
                        },
                    )
                    extra["scores"][label] = task["score_corrected"]
                    extra["n"][label] = task["n"]
    ordered = list(rows.values())
    averages: dict[str, dict[str, float | None]] = {}
    for domain in sorted({r["domain"] for r in ordered}):
        averages[domain] = {}
        for label in runs:
            domain_rows = [r for r in ordered if r["domain"] == domain and not r.get("corrected")]
            values = [r["scores"].get(label) for r in domain_rows]
            present = [v for v in values if v is not None]
            # averages over other tasks or other question sets would not compare: only when
            # the run has every task, each over as many questions as the other runs
            comparable = all(len(set(r["n"].values())) == 1 for r in domain_rows)
            complete = present and len(present) == len(values)
            averages[domain][label] = (
                round(sum(present) / len(present), 2) if complete and comparable else None
            )
    return ordered, averages


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(runs: dict[str, list[dict[str, Any]]], models: dict[str, str]) -> str:
    rows, averages = comparison(runs)
    labels = list(runs)
    lines = [
        "# Evaluation report",
        "",
        "| run | model | questions | unreadable images | random fallbacks |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for label in labels:
        summaries = runs[label]
        lines.append(
            f"| {label} | `{models[label]}` | {sum(s['questions'] for s in summaries)} | "
            f"{sum(s.get('unreadable', 0) for s in summaries)} | "
            f"{sum(t['fallbacks'] for s in summaries for t in s['tasks'])} |"
        )
    lines += [
        "",
        "| task | domain | metric | n | " + " | ".join(labels) + " |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in labels) + " |",
    ]
    for row in rows:
        counts = [row["n"].get(label) for label in labels]
        n = (
            str(counts[0])
            if len(set(counts)) == 1
            else " / ".join("–" if c is None else str(c) for c in counts)
        )
        lines.append(
            f"| {row['task']} | {row['domain']} | {row['metric']} | {n} | "
            + " | ".join(_cell(row["scores"].get(label)) for label in labels)
            + " |"
        )
    for domain, by_run in averages.items():
        lines.append(
            f"| **{domain} average** | {domain} | | | "
            + " | ".join(f"**{_cell(by_run[label])}**" for label in labels)
            + " |"
        )
    lines += [
        "",
        (
            "Scores x100. CLOSED rows use LLaVA-Med's rule as AdaMLLM runs it (a hit needs yes/no in the "
            "prediction, so non-yes/no gold answers score 0); the (corrected) rows score those by normalised "
            "match and are left out of the domain averages. n lists each run's question count where they "
            "differ; a domain average is given only where every run has every task over the same count. "
            "Questions with unreadable images are not scored."
        ),
    ]
    return "\n".join(lines) + "\n"


def bar_chart(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, averages = comparison(runs)
    groups = [(f"{d} avg", averages[d]) for d in averages] + [
        (r["task"], r["scores"]) for r in rows if not r.get("corrected")
    ]
    labels = list(runs)
    width = 0.8 / max(1, len(labels))
    figure, axis = plt.subplots(
        figsize=(max(6, 0.9 * len(groups) * max(1, len(labels)) ** 0.5 + 2), 4), dpi=100
    )
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(labels):
        xs = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        values = [scores.get(label) or 0.0 for _, scores in groups]
        bars = axis.bar(xs, values, width, label=label, color=colours(index % 10))
        axis.bar_label(
            bars, labels=[_cell(scores.get(label)) for _, scores in groups], fontsize=6, padding=1
        )
    axis.set_xticks(
        range(len(groups)), [name for name, _ in groups], rotation=35, ha="right", fontsize=8
    )
    axis.set_ylabel("score (x100)")
    axis.set_ylim(0, 105)  # scores are percentages: the same scale for every report
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_report(run_uris: list[str], out_uri: str) -> dict[str, str]:
    """Write report.md and report.png to out_uri; returns their URIs and the Markdown."""
    runs: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, str] = {}
    for uri in run_uris:
        label = run_label(uri)
        if label in runs:
            label = f"{label}#{len(runs)}"
        runs[label] = load_run(uri)
        models[label] = ", ".join(sorted({s["model"] for s in runs[label]}))
    text = markdown(runs, models)
    out = normalise_uri(out_uri)
    fs, root = filesystem(out)
    write_bytes_atomic(fs, join(root, "report.png"), bar_chart(runs))
    write_bytes_atomic(fs, join(root, "report.md"), text.encode())
    return {
        "markdown": text,
        "report_md": join(out, "report.md"),
        "report_png": join(out, "report.png"),
    }
