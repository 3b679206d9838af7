"""Tasks of error-driven selection. Each stage is idempotent through the executor: a
finished dataset with the same identity is returned as it is, an interrupted one resumes
(engine requests cached), so a re-run of the flow redoes nothing that is done."""

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adamllm_core.dataset import Dataset, DatasetRef, manifest_exists
from adamllm_core.selection.choose import (
    INSTRUCTION_METHODS,
    SkillTable,
    analyse_skills,
    choose,
    instruction_index,
    skill_index,
    validation_questions,
)
from adamllm_core.selection.config import SKILL_METHODS
from adamllm_core.selection.pool_source import PoolConfig, import_pool
from adamllm_core.selection.report import selection_facts, write_selection_report
from adamllm_core.selection.stages import (
    ErrorsConfig,
    LabelConfig,
    MistakeConfig,
    PoolLabels,
    collect_errors,
    identify_mistakes,
    label_pool,
    write_selection,
)
from adamllm_core.storage import join
from tasks.reporting import publish_stats, stage_progress


@task(name="import-pool", persist_result=True)
def pool_dataset(source: str, out: str, config: PoolConfig) -> DatasetRef:
    """The pool as a dataset: `source` itself when it is one, else its annotation file imported."""
    if manifest_exists(source):
        return DatasetRef.of(source, Dataset(source).manifest)
    manifest = import_pool(source, out, config, overwrite=True)
    publish_stats("pool", out, manifest)
    return DatasetRef.of(out, manifest)


@task(name="collect-errors", persist_result=True)
def student_errors(config: ErrorsConfig, out: str, cache_uri: str) -> DatasetRef:
    """The student's reasoned answers to the validation set, each scored."""
    with stage_progress("errors") as progress:
        manifest = collect_errors(
            config, out, cache_uri=cache_uri, overwrite=True, progress=progress
        )
    publish_stats("errors", out, manifest)
    return DatasetRef.of(out, manifest)


@task(name="validation-questions", persist_result=True)
def question_texts(
    errors_uri: str, benchmark: str, data: str, limit: int | None
) -> tuple[list[str], list[str]]:
    """Every validation question's text, and those the student answered wrong (what the
    instruction-similarity baseline and the no-skill-analysis ablation retrieve by)."""
    return validation_questions(errors_uri, benchmark, data, limit)


@task(name="identify-mistakes", persist_result=True)
def diagnosed_mistakes(
    errors_uri: str, out: str, config: MistakeConfig, cache_uri: str
) -> DatasetRef:
    """Each wrong answer's erroneous step (answer-switch) and missing skill."""
    with stage_progress("mistakes") as progress:
        manifest = identify_mistakes(
            errors_uri, out, config, cache_uri=cache_uri, overwrite=True, progress=progress
        )
    publish_stats("mistakes", out, manifest)
    return DatasetRef.of(out, manifest)


@task(name="analyse-skills", persist_result=True)
def skill_table(mistakes_uri: str, threshold: float, name: str) -> dict[str, Any]:
    """Skills merged and counted, with example errors (a Markdown artifact)."""
    table = analyse_skills(mistakes_uri, threshold)
    create_markdown_artifact(
        markdown=f"## Missing skills ({name})\n\n" + table.markdown(),
        key=f"skills-{name.replace('_', '-')}",
        description=f"skills named over `{mistakes_uri}`",
    )
    return {
        "counts": table.counts,
        "mapping": table.mapping,
        "examples": table.examples,
        "statuses": table.statuses,
    }


@task(name="label-pool", persist_result=True)
def pool_labels(pool_uri: str, labels_root: str, config: LabelConfig, cache_uri: str) -> PoolLabels:
    """The pool's skill labels by this teacher: only samples no earlier part labels."""
    with stage_progress("label pool") as progress:
        labels = label_pool(pool_uri, labels_root, config, cache_uri=cache_uri, progress=progress)
    publish_stats("label-pool", labels.parts[-1], Dataset(labels.parts[-1]).manifest)
    return labels


@task(name="select-samples", persist_result=True)
def selected_samples(
    method: str,
    budget: int,
    *,
    pool_uri: str,
    labels: PoolLabels | None,
    skills: dict[str, Any] | None,
    wrong_questions: list[str],
    validation_questions: list[str],
    split: str,
    per_task_cap: int | None,
    seed: int,
    index_root: str,
    out: str,
    replay_uri: str | None = None,
) -> dict[str, Any]:
    """One method's selection at one budget, written as training conversations."""
    # Each index holds the whole pool in memory: load only the one this method reads.
    instructions = (
        instruction_index(pool_uri, index_root)[0] if method in INSTRUCTION_METHODS else None
    )
    skill_labels = (
        skill_index(labels)[0] if labels is not None and method in SKILL_METHODS else None
    )
    selection = choose(
        method,
        budget,
        skills=SkillTable(**skills) if skills is not None else None,
        skill_labels=skill_labels,
        instructions=instructions,
        wrong_questions=wrong_questions,
        validation_questions=validation_questions,
        split=split,  # type: ignore[arg-type]
        per_task_cap=per_task_cap,
        seed=seed,
    )
    facts = selection_facts(selection)
    if not selection.samples:
        return {**facts, "dataset": None}
    manifest = write_selection(
        pool_uri, selection.samples, method, out, replay_uri=replay_uri, overwrite=True
    )
    publish_stats(f"select-{method.replace('_', '-')}-{budget}", out, manifest)
    return {**facts, "dataset": DatasetRef.of(out, manifest).model_dump()}


@task(name="selection-report", persist_result=True)
def selection_report(out: str, report: dict[str, Any]) -> dict[str, str]:
    written = write_selection_report(out, report)
    from adamllm_core.selection.report import report_markdown

    create_markdown_artifact(
        markdown=report_markdown(report),
        key=f"select-{report['target'].replace('_', '-')}",
        description=f"report → {join(out, 'report.md')}",
    )
    return written
