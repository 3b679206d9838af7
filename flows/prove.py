"""Flow `prove`: the AdaMLLM pipeline measured on a generated world, through the real flows.

World → base MLLM and judge (built once per machine) → flow `synth` on the domain pairs
(synthesizer tuned on the general seed data → triplets → filter → mixtures) → one
training run per variant → flow-`evaluate`'s task on the domain benchmark → report.
"""

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner

from adamllm_core.config import DomainConfig, load_domain_config
from adamllm_core.dataset import Dataset
from adamllm_core.proving.experiment import (
    MUTATIONS,
    VARIANTS,
    ProveConfig,
    StageClock,
    assemble_report,
    benchmark_config,
    checks_table,
    domain_config,
    gains_table,
    synthesis_line,
)
from adamllm_core.proving.selection import (
    error_driven_section,
    error_driven_table,
    select_settings,
    selection_setup,
)
from adamllm_core.training.trainer import limit_threads, stage1_train_config
from flows.select import select_flow
from flows.synth import synth_flow
from tasks.evaluate import evaluate_benchmark
from tasks.prove import (
    build_base_models,
    build_selection_models,
    install_models_pack,
    make_selection_world,
    make_world,
    measure_synthetic_data,
    prove_report,
    tune_synthesizer_once,
)
from tasks.synth import assemble_mixtures, filter_consistent
from tasks.train import train_model


@flow(name="prove", log_prints=True)
def prove_flow(
    seed: int = 0,
    out: str = "runs/prove",
    scale: Literal["full", "ci", "smoke"] = "full",
    mutations: bool = False,
    check: bool = False,
    variants: list[str] | None = None,
    models_pack: str | None = None,
) -> dict[str, Any]:
    """Run the proving ground for one world seed; writes OUT/report.{md,png,json}.

    Args:
        seed: world seed: the world, its models and every split follow it
        out: output folder (report.md, report.png, report.json, the datasets)
        scale: full; ci (reduced, minutes); smoke (a few steps per stage)
        mutations: also post-train and score the method broken on purpose (filter
            inverted, synthetic loss masked): each should lose the gain
        check: fail the run (after writing the report) when a required result does not hold
        variants: the post-training variants to run (default: all; base is always scored);
            a left-out variant is None in the report and fails the checks that need it
        models_pack: take the set-up models from this pack (`adamllm prove-pack`) instead
            of building them (refused when it was built for another recipe)
    """
    trained_variants = set(VARIANTS[1:] if variants is None else variants)
    if unknown := trained_variants - set(VARIANTS):
        raise ValueError(f"variants {sorted(unknown)}: not among {', '.join(VARIANTS)}")
    config = ProveConfig.for_scale(scale, seed)
    out = str(Path(out).resolve())
    clock = StageClock()
    world = f"{out}/world"
    make_world(config, world)
    clock.lap("world")
    if models_pack:
        install_models_pack(models_pack, config)
    models = build_base_models(config, world)
    clock.lap("base and judge (cached per machine)")
    synthesizer = tune_synthesizer_once(config, world, models)
    clock.lap("synthesizer (cached per machine)")
    config_path = Path(out) / "proving.yaml"
    config_path.write_text(
        yaml.safe_dump(
            domain_config(config, world, out, models, synthesizer["final"]), sort_keys=False
        )
    )
    synth = synth_flow(str(config_path))
    clock.lap("synth flow")
    domain = load_domain_config(config_path)
    post = {**config.post_train, "model": models["base"]}
    data: dict[str, tuple[dict[str, Any], str]] = {
        "caption_only": (post, synth["mixture:caption_only"].uri),
        "single_stage": (post, synth["mixture:single_stage"].uri),
        "synthetic_only": (post, synth["mixture:synthetic_only"].uri),
    }
    if "no_filter" in trained_variants:
        # Without the consistency filter: every parsed triplet, each with its joined response.
        data["no_filter"] = (
            post,
            _refiltered_mixture(synth, domain, ("Yes", "No", "Open"), "no-filter"),
        )
    data = {v: job for v, job in data.items() if v in trained_variants}
    if mutations:
        data["inverted_filter"] = (
            post,
            _refiltered_mixture(synth, domain, ("No", "Open"), "inverted-filter"),
        )
        data["masked_synthetic"] = (
            {**post, "loss_on": "caption_replies"},
            synth["mixture:single_stage"].uri,
        )
    untrained = {
        "final": models["base"],
        "steps": 0,
    }  # an empty mixture leaves the base model as it is
    trained: dict[str, dict[str, Any]] = {"base": untrained}
    for variant, (_, mixture) in list(data.items()):
        if not Dataset(mixture).manifest.rows:
            print(f"{variant}: the mixture is empty, so the model is the base model")
            trained[variant] = untrained
            del data[variant]
    workers = min(config.train_workers, max(1, len(data) + ("two_stage" in trained_variants)))
    with ProcessPoolTaskRunner(
        max_workers=workers,
        initializer=limit_threads,
        initargs=(max(1, (os.cpu_count() or 1) // workers),),
    ) as runner:

        def submit(settings: dict[str, Any], mixture: str, name: str) -> Any:
            return runner.submit(
                train_model, {"config": settings, "data": mixture, "out": domain.uri(name)}
            )

        # Two-stage's stage 1 first: its stage 2 waits for it while the others train.
        stage1 = (
            submit(stage1_train_config(post), synth["mixture:two_stage_1"].uri, "model-two-stage-1")
            if "two_stage" in trained_variants
            else None
        )
        futures = {
            variant: submit(settings, mixture, f"model-{variant.replace('_', '-')}")
            for variant, (settings, mixture) in data.items()
        }
        if stage1 is not None:
            first = stage1.result()
            futures["two_stage"] = (
                submit(
                    {**post, "model": first["final"]},
                    synth["mixture:two_stage_2"].uri,
                    "model-two-stage",
                )
                if synth["mixture:two_stage_2"].rows
                else stage1
            )
        trained.update({variant: future.result() for variant, future in futures.items()})
    clock.lap("post-training")
    print(f"post-training: {len(trained) - 1} models, {workers} trained at a time")
    scored = [v for v in VARIANTS if v in trained] + (list(MUTATIONS) if mutations else [])
    evaluations = {
        variant: evaluate_benchmark(
            benchmark_config(config, world, trained[variant]["final"]),
            f"{out}/eval/{variant}",
            overwrite=True,
        )
        for variant in scored
    }
    general = evaluate_benchmark(
        benchmark_config(config, world, models["base"], "general"),
        f"{out}/eval/base-general",
        overwrite=True,
    )
    clock.lap("evaluate")
    synthesis = measure_synthetic_data(
        synth["pairs"].uri,
        synth["triplets"].uri,
        [synth["filtered"].uri, synth["rejected"].uri],
        synth["filtered"].uri,
    )
    report = assemble_report(
        config,
        evaluations,
        general,
        synthesis,
        models,
        synthesizer,
        trained,
        clock.seconds,
    )
    written = prove_report(out, report)
    print(gains_table(report))
    print(checks_table(report["checks"]))
    print(synthesis_line(synthesis))
    print(f"report: {written['report.md']}")
    failed = [c["check"] for c in report["checks"] if not c["passed"]]
    if check and failed:
        raise RequiredResultsNotMet(
            f"{len(failed)} required result(s) do not hold: " + "; ".join(failed)
        )
    return report


class RequiredResultsNotMet(RuntimeError):
    """`prove(check=True)`: the report is written, and a required result does not hold."""


def _refiltered_mixture(
    synth: dict[str, Any], domain: DomainConfig, keep: tuple[str, ...], name: str
) -> str:
    """The synth run's triplets filtered again keeping the labels `keep` (the judge's
    requests are cached), assembled into a single-stage mixture; returns its URI."""
    kept, _ = filter_consistent(
        synth["triplets"].uri,
        domain.uri(f"filtered-{name}"),
        domain.uri(f"rejected-{name}"),
        domain.filter.model_copy(update={"keep": keep}),
        cache_uri=domain.uri("_cache/filter"),
        overwrite=True,
    )
    mixture = assemble_mixtures(
        synth["pairs"].uri,
        kept.uri,
        {"single_stage": domain.uri(f"mixture-{name}")},
        domain.uri(f"mixture-{name}"),
        domain.assemble.model_copy(update={"variants": ("single_stage",)}),
        overwrite=True,
    )
    return mixture["single_stage"].uri


@flow(name="prove-select", log_prints=True)
def prove_select_flow(
    seed: int = 0,
    out: str = "runs/prove",
    scale: Literal["full", "ci", "smoke"] = "ci",
    models_pack: str | None = None,
) -> dict[str, Any]:
    """Error-driven selection on the proving ground: a student weak at one skill, a teacher,
    a pool and a replay set of the world, then the flow `select` at the budget; adds the
    `error_driven` section to OUT/report.json (written anew when there is none).

    Args:
        seed: world seed
        out: output folder (the world, the experiment's files and report.json)
        scale: ci or full (the experiment's default sizes); smoke (a few steps each)
        models_pack: take the base models from this pack instead of building them
    """
    config = ProveConfig.for_scale(scale, seed)
    out = str(Path(out).resolve())
    world = f"{out}/world"
    make_world(config, world)
    if models_pack:
        install_models_pack(models_pack, config)
    models = build_base_models(config, world)
    setup = selection_setup(scale)
    files = f"{out}/selection-world"
    make_selection_world(seed, files, setup)
    built = build_selection_models(config, world, files, models, setup)
    config_path = Path(out) / "select-world.yaml"
    config_path.write_text(
        yaml.safe_dump(select_settings(f"{out}/select", files, built, setup, seed), sort_keys=False)
    )
    selected = select_flow(str(config_path))
    section = error_driven_section(selected, setup)
    report_path = Path(out) / "report.json"
    report = (
        json.loads(report_path.read_text())
        if report_path.exists()
        else {"seed": seed, "scale": scale}
    )
    report["error_driven"] = section
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(error_driven_table(section))
    return section
