"""The selection report: the student before tuning against each method at each budget (the
test benchmark's score, and per skill where the benchmark records skills), with the
skills found and what each selection holds. Written as report.json, report.md and
report.png under the target's output."""

import io
import json
from collections import Counter
from typing import Any

from adamllm_core.selection.choose import SkillTable
from adamllm_core.selection.retrieval import Selection
from adamllm_core.storage import filesystem, join, write_bytes_atomic


def score_of(summary: dict[str, Any]) -> tuple[float | None, dict[str, float | None]]:
    """An evaluation summary's score (0-100) and, where the benchmark has them, per skill."""
    row = summary["tasks"][0]
    return row["score"], dict(row.get("per_skill", {}))


def selection_facts(selection: Selection) -> dict[str, Any]:
    tasks = Counter(sample.task for sample in selection.samples)
    queries = Counter(sample.query for sample in selection.samples if sample.query)
    return {
        "selected": len(selection.samples),
        "tasks": dict(tasks.most_common(20)),
        "queries": dict(queries.most_common(20)),
        "shortfall": selection.shortfall,
    }


def build_report(
    *,
    target: str,
    benchmark: str,
    student: str,
    errors: dict[str, Any],
    skills: SkillTable,
    student_eval: dict[str, Any] | None,
    evaluations: dict[str, dict[int, dict[str, Any]]],
    selections: dict[str, dict[int, dict[str, Any]]],
    training: dict[str, dict[int, dict[str, Any]]],
) -> dict[str, Any]:
    accuracy: dict[str, Any] = {}
    per_skill: dict[str, Any] = {}
    if student_eval is not None:
        accuracy["student"], per_skill["student"] = score_of(student_eval)
    for method, by_budget in evaluations.items():
        accuracy[method] = {str(b): score_of(s)[0] for b, s in by_budget.items()}
        per_skill[method] = {str(b): score_of(s)[1] for b, s in by_budget.items()}
    return {
        "target": target,
        "benchmark": benchmark,
        "student": student,
        "errors": errors,
        "skills": skills.to_json(),
        "accuracy": accuracy,
        "per_skill": per_skill,
        "selections": {m: {str(b): f for b, f in v.items()} for m, v in selections.items()},
        "training": {
            m: {
                str(b): {
                    k: s.get(k) for k in ("steps", "train_loss", "final", "seconds", "flow_run")
                }
                for b, s in v.items()
            }
            for m, v in training.items()
        },
    }


def report_markdown(report: dict[str, Any]) -> str:
    errors = report["errors"]
    lines = [
        f"# Error-driven selection: {report['target']}",
        "",
        (
            f"Student `{report['student']}` on {report['benchmark']}: {errors['answered']}"
            f" answered ({errors['unreadable']} unreadable), {errors['wrong']} wrong; mistakes"
            f" diagnosed: {errors['diagnosed']}."
        ),
        "",
        "## Accuracy",
        "",
    ]
    budgets = sorted(
        {b for v in report["accuracy"].values() if isinstance(v, dict) for b in v}, key=int
    )
    lines.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    lines.append("| --- |" + " ---: |" * len(budgets))
    for method, value in report["accuracy"].items():
        cells = (
            [_cell(value)] * len(budgets)
            if not isinstance(value, dict)
            else [_cell(value.get(b)) for b in budgets]
        )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Missing skills",
        "",
        SkillTable(
            counts={s["skill"]: s["errors"] for s in report["skills"]["skills"]},
            mapping={},
            examples={s["skill"]: s["examples"] for s in report["skills"]["skills"]},
            statuses=report["skills"]["statuses"],
        ).markdown(),
        "",
        "## Selections",
        "",
    ]
    for method, by_budget in report["selections"].items():
        for budget, facts in by_budget.items():
            top = ", ".join(f"{t} {n}" for t, n in list(facts["tasks"].items())[:5])
            lines.append(f"- {method} at {budget}: {facts['selected']} samples; tasks: {top}")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def report_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for method, value in report["accuracy"].items():
        if isinstance(value, dict):
            for budget, score in value.items():
                labels.append(f"{method}\n{budget}")
                values.append(score or 0.0)
        else:
            labels.append(method)
            values.append(value or 0.0)
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.5))
    axis.bar(range(len(values)), values, color="#4c72b0")
    axis.set_xticks(range(len(labels)), labels, fontsize=7)
    axis.set_ylabel("accuracy (0-100)")
    axis.set_title(f"{report['target']}: {report['benchmark']}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_selection_report(out: str, report: dict[str, Any]) -> dict[str, str]:
    fs, root = filesystem(out)
    written = {}
    for name, body in (
        ("report.json", (json.dumps(report, indent=2) + "\n").encode()),
        ("report.md", report_markdown(report).encode()),
        ("report.png", report_png(report)),
    ):
        write_bytes_atomic(fs, join(root, name), body)
        written[name] = join(out, name)
    return written
