"""Flow `select`: error-driven data selection for one target task (arXiv 2412.15652).

The student answers the validation set with reasoning steps → the teacher finds each wrong
answer's erroneous step (answer-switch) and names the missing skill → skills merged and
counted → the pool labelled with skills (once per sample and teacher) → each method
retrieves its samples at each budget → the student tuned on each (the training deployment,
or here) → every model evaluated on the test benchmark → report.md/png/json.
"""

from typing import Any

from prefect import flow

from adamllm_core.dataset import DatasetRef
from adamllm_core.evaluation.run import EvalConfig
from adamllm_core.selection.choose import SkillTable
from adamllm_core.selection.config import SKILL_METHODS, load_select_config
from adamllm_core.selection.pool_source import PoolConfig
from adamllm_core.selection.report import build_report
from adamllm_core.selection.stages import ErrorsConfig, LabelConfig, MistakeConfig
from adamllm_core.storage import join
from tasks.evaluate import evaluate_benchmark
from tasks.select import (
    diagnosed_mistakes,
    pool_dataset,
    pool_labels,
    question_texts,
    selected_samples,
    selection_report,
    skill_table,
    student_errors,
)
from tasks.train import train_model, train_on_deployment


@flow(name="select", log_prints=True)
def select_flow(config: str, out: str | None = None) -> dict[str, Any]:
    """Select training data for a target task from the student's errors; tune and compare.

    Args:
        config: selection config YAML (deployments/select-<target>.yaml)
        out: override the config's output root (local or s3://)
    """
    settings = load_select_config(config, {"out": out})
    cache = settings.uri("_cache")
    validation = settings.validation
    errors = student_errors(
        ErrorsConfig(
            benchmark=validation.benchmark,
            data=validation.data,
            engine=settings.student,
            limit=validation.limit,
            max_new_tokens=settings.student_max_new_tokens,
            prompt=settings.student_prompt,
            seed=settings.seed,
        ),
        settings.uri("errors"),
        join(cache, "errors"),
    )
    every, wrong = question_texts(
        errors.uri, validation.benchmark, validation.data, validation.limit
    )
    print(f"student: {errors.rows} answered ({errors.quarantined} unreadable), {len(wrong)} wrong")

    tables: dict[str, dict[str, Any]] = {}
    # The skills found are reported whatever the methods; the ablation diagnoses again.
    diagnoses = {"error_driven": True}
    if "no_mistake_identification" in settings.methods:
        diagnoses["no_mistake_identification"] = False
    for method, identify in diagnoses.items():
        name = "mistakes" if identify else "mistakes-whole-reasoning"
        mistakes = diagnosed_mistakes(
            errors.uri,
            settings.uri(name),
            MistakeConfig(
                engine=settings.teacher,
                switch=settings.switch,
                identify=identify,
                prompts=settings.prompts,
            ),
            join(cache, "teacher"),
        )
        tables[method] = skill_table(mistakes.uri, settings.skill_merge_threshold, method)
        print(
            f"{method}: {mistakes.rows} mistakes diagnosed, skills {SkillTable(**tables[method]).counts}"
        )

    pool = pool_dataset(
        settings.pool.source,
        settings.uri("pool"),
        PoolConfig(image_root=settings.pool.image_root, images=settings.pool.images),
    )
    replay = (
        pool_dataset(
            settings.pool.replay,
            settings.uri("replay"),
            PoolConfig(image_root=None, images=settings.pool.images),
        )
        if settings.pool.replay
        else None
    )
    labels = (
        pool_labels(
            pool.uri,
            settings.labels_root(),
            LabelConfig(engine=settings.teacher, prompts=settings.prompts),
            join(settings.labels_root(), "_cache"),
        )
        if set(settings.methods) & set(SKILL_METHODS)
        else None
    )

    selections: dict[str, dict[int, dict[str, Any]]] = {}
    for budget in settings.budget_sizes():
        for method in settings.methods:
            table = tables.get(method, tables["error_driven"])
            selections.setdefault(method, {})[budget] = selected_samples(
                method,
                budget,
                pool_uri=pool.uri,
                labels=labels,
                skills=table,
                wrong_questions=wrong,
                validation_questions=every,
                split=settings.split,
                per_task_cap=settings.per_task_cap,
                seed=settings.seed,
                index_root=settings.labels_root(),
                out=settings.uri("selected", f"{method}-{budget}"),
                replay_uri=replay.uri if replay is not None else None,
            )
            print(f"{method} at {budget}: {selections[method][budget]['selected']} samples")

    training: dict[str, dict[int, dict[str, Any]]] = {}
    evaluations: dict[str, dict[int, dict[str, Any]]] = {}
    student_eval = None
    if settings.training is not None:
        test = settings.test_set()

        def evaluate(model: str, name: str) -> dict[str, Any]:
            return evaluate_benchmark(
                EvalConfig(
                    benchmark=test.benchmark,
                    data=test.data,
                    limit=test.limit,
                    # the student's engine (vLLM on GPUs, say), with each tuned model in turn
                    engine=settings.student.model_copy(
                        update={"model": model, "batch_size": settings.eval_batch_size}
                    ),
                    seed=settings.seed,
                ),
                settings.uri("eval", name),
                overwrite=True,
            )

        student_eval = evaluate(settings.student.model, "student")
        post = settings.training
        for method, by_budget in selections.items():
            for budget, chosen in by_budget.items():
                if chosen["dataset"] is None:
                    print(f"{method} at {budget}: nothing selected, nothing to train")
                    continue
                data = DatasetRef(**chosen["dataset"])
                model_out = settings.uri("models", f"{method}-{budget}")
                summary = (
                    train_on_deployment(post.deployment, post.train, data, model_out, wait=True)
                    if post.deployment
                    else train_model(post.train, data.uri, model_out)
                )
                training.setdefault(method, {})[budget] = summary
                evaluations.setdefault(method, {})[budget] = evaluate(
                    summary["final"], f"{method}-{budget}"
                )

    main_table = tables["error_driven"]
    report = build_report(
        target=settings.target,
        benchmark=settings.test_set().benchmark,
        student=settings.student.model,
        errors={
            "answered": errors.rows,
            "unreadable": errors.quarantined,
            "wrong": len(wrong),
            "diagnosed": sum(SkillTable(**main_table).counts.values()),
        },
        skills=SkillTable(**main_table),
        student_eval=student_eval,
        evaluations=evaluations,
        selections=selections,
        training=training,
    )
    written = selection_report(settings.uri(), report)
    print(f"report: {written['report.md']}")
    return report
