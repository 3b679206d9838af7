"""`adamllm`: ingest and inspect datasets (later: synth, train, eval)."""

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from adamllm_core.browse import build_site
from adamllm_core.config import (
    load_domain_config,
    read_settings_file,
    set_dotted,
    validation_problems,
)
from adamllm_core.dataset import DatasetError
from adamllm_core.errors import ConfigError
from adamllm_core.importers import open_source
from adamllm_core.ingest import IngestConfig
from adamllm_core.inspection import summarise, work_status
from adamllm_core.lineage import Lineage, LineageNode
from adamllm_core.lineage import lineage as trace_lineage
from adamllm_core.status import DatasetStatus, Progress, RunStatus, run_status

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
errors = Console(stderr=True)


@app.callback()
def launcher_options(
    local_rank: Annotated[
        int | None, typer.Option("--local_rank", "--local-rank", hidden=True)
    ] = None,
) -> None:
    """Adapt domain MLLMs: ingest, synthesize, filter, assemble, train."""
    # The deepspeed launcher passes --local_rank=N before the command (it also sets LOCAL_RANK).
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


def fail(message: str) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def build_ingest_config(config_file: Path | None, overrides: dict[str, Any]) -> IngestConfig:
    data: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text())
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of ingest settings")
        data = loaded.get("ingest", loaded)
    for dotted, value in overrides.items():
        if value is not None:
            set_dotted(data, dotted, value)
    return IngestConfig.model_validate(data)


def format_validation_error(error: ValidationError) -> str:
    return "invalid configuration:\n  " + validation_problems(error, "\n  ")


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(
            help="folder, annotation file (.jsonl/.json/.csv), ShareGPT JSON, or Parquet; local or s3://"
        ),
    ],
    domain: Annotated[
        str | None, typer.Option(help="domain name, e.g. biomed, food, remote-sensing")
    ] = None,
    out: Annotated[
        str, typer.Option(help="output dataset URI (local path or s3://bucket/prefix)")
    ] = ...,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of ingest settings (flags override it)")
    ] = None,
    format: Annotated[str | None, typer.Option(help="auto | folder | sharegpt | parquet")] = None,
    image_field: Annotated[str | None, typer.Option(help="record field naming the image")] = None,
    caption_field: Annotated[
        str | None, typer.Option(help="record field holding the caption(s)")
    ] = None,
    caption_template: Annotated[
        str | None, typer.Option(help="caption built from fields, e.g. 'A photo of {label}.'")
    ] = None,
    captions: Annotated[
        str | None, typer.Option(help="first | all: one pair per record, or per caption")
    ] = None,
    image_root: Annotated[
        str | None, typer.Option(help="folder that relative image paths start from")
    ] = None,
    allow_image_uris: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-image-uri",
            help="also read images under this prefix (repeatable: s3://other-bucket/,"
            " https://host/, /mnt/images); others outside the image root are refused",
        ),
    ] = None,
    max_pixels: Annotated[int | None, typer.Option(help="reject images with more pixels")] = None,
    max_bytes: Annotated[
        int | None, typer.Option(help="reject image files larger than this, before reading")
    ] = None,
    max_aspect_ratio: Annotated[
        float | None,
        typer.Option(help="reject images whose long side / short side is this or more"),
    ] = None,
    min_side: Annotated[int | None, typer.Option(help="reject images with a shorter side")] = None,
    multi_frame: Annotated[str | None, typer.Option(help="first | reject")] = None,
    control_tokens: Annotated[str | None, typer.Option(help="neutralise | quarantine")] = None,
    rows_per_shard: Annotated[
        int | None, typer.Option(help="input records per Parquet shard")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="decoding processes")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace a different dataset already at --out")
    ] = False,
) -> None:
    """Ingest image-caption pairs into a Parquet dataset (runs the Prefect flow `ingest`)."""
    overrides = {
        "domain": domain,
        "source.format": format,
        "source.image_field": image_field,
        "source.caption_field": caption_field,
        "source.caption_template": caption_template,
        "source.captions": captions,
        "source.image_root": image_root,
        "source.allow_image_uris": tuple(allow_image_uris) if allow_image_uris else None,
        "image.max_pixels": max_pixels,
        "image.max_bytes": max_bytes,
        "image.max_aspect_ratio": max_aspect_ratio,
        "image.min_side": min_side,
        "image.multi_frame": multi_frame,
        "caption.control_tokens": control_tokens,
        "rows_per_shard": rows_per_shard,
        "workers": workers,
    }
    try:
        ingest_config = build_ingest_config(config, overrides)
    except ValidationError as error:
        fail(format_validation_error(error))
    except (ConfigError, OSError, yaml.YAMLError) as error:
        fail(str(error))

    try:  # a wrong source or field is the user's to fix: say so before any flow run starts
        open_source(source, ingest_config.source)
    except (ConfigError, OSError) as error:
        fail(str(error))

    from flows.ingest import ingest_flow  # Prefect import is slow: only for commands that run flows

    try:
        ref = ingest_flow(source=source, out=out, config=ingest_config, overwrite=overwrite)
    except (ConfigError, DatasetError) as error:
        fail(str(error))
    console.print(
        f"[green]ingested[/] {ref.rows} pairs, {ref.quarantined} quarantined → {ref.uri}  "
        f"(inspect: adamllm inspect {ref.uri})",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def synth(
    config: Annotated[Path, typer.Option(help="domain config YAML, e.g. deployments/food.yaml")],
    source: Annotated[str | None, typer.Option(help="override the config's source")] = None,
    out: Annotated[str | None, typer.Option(help="override the config's output root")] = None,
) -> None:
    """Run the synthesis pipeline (ingest → synthesize → filter → assemble → export) in-process."""
    try:
        domain = load_domain_config(config, {"source": source, "out": out})
        open_source(domain.source, domain.ingest_config().source)
        from adamllm_core.engines import make_engine

        for engine in (domain.synthesize.engine, domain.filter.engine):
            make_engine(engine)  # engines load lazily: this only checks the kind can run here
    except (ConfigError, OSError) as error:
        fail(str(error))

    from flows.synth import synth_flow

    try:
        synth_flow(config=str(config), source=source, out=out)
    except (ConfigError, DatasetError, ValueError) as error:
        fail(str(error))


@app.command("select")
def select_command(
    config: Annotated[
        Path, typer.Option(help="selection config YAML, e.g. deployments/select-vqa-rad.yaml")
    ],
    out: Annotated[str | None, typer.Option(help="override the config's output root")] = None,
) -> None:
    """Error-driven data selection for one target task: the student's errors, diagnosed by
    the teacher into missing skills, retrieve training samples from the pool; each method is
    tuned and scored when the config trains (report.md/png/json under OUT/TARGET)."""
    from adamllm_core.engines import make_engine
    from adamllm_core.selection.config import load_select_config

    try:
        settings = load_select_config(config, {"out": out})
        for engine in (settings.student, settings.teacher):
            make_engine(engine)  # engines load lazily: this only checks the kind can run here
        settings.budget_sizes()
    except (ConfigError, OSError) as error:
        fail(str(error))

    from flows.select import select_flow

    try:
        select_flow(config=str(config), out=out)
    except (ConfigError, DatasetError, ValueError) as error:
        fail(str(error))


@app.command()
def prove(
    seed: Annotated[
        int, typer.Option(help="world seed: the world, its models and every split follow it")
    ] = 0,
    out: Annotated[
        str, typer.Option(help="output folder (report.md, report.png, report.json, datasets)")
    ] = "runs/prove",
    scale: Annotated[
        str, typer.Option(help="full; ci (reduced); smoke (a few steps per stage)")
    ] = "full",
    mutations: Annotated[
        bool,
        typer.Option(
            help="also score the method broken on purpose (filter inverted, synthetic loss"
            " masked): each should lose the gain"
        ),
    ] = False,
    check: Annotated[
        bool, typer.Option(help="exit 1 (after the report) when a required result does not hold")
    ] = False,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="post-train only these variants (repeatable; default all: caption_only,"
            " single_stage, synthetic_only, two_stage, no_filter); base is always scored"
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="a models pack (adamllm prove-pack): its base, judge and synthesizer instead"
            " of building them (refused when built for another recipe)"
        ),
    ] = None,
) -> None:
    """The proving ground: the AdaMLLM pipeline's gains on a generated world, on CPU."""
    if scale not in ("full", "ci", "smoke"):
        fail(f"--scale {scale!r}: use full, ci or smoke")
    from flows.prove import RequiredResultsNotMet, prove_flow

    try:
        prove_flow(
            seed=seed,
            out=out,
            scale=scale,
            mutations=mutations,
            check=check,
            variants=variant,
            models_pack=models,
        )
    except (ConfigError, DatasetError, ValueError, RequiredResultsNotMet) as error:
        fail(str(error))


@app.command("prove-select")
def prove_select(
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    out: Annotated[
        str, typer.Option(help="output folder (its report.json gains the error_driven section)")
    ] = "runs/prove",
    scale: Annotated[str, typer.Option(help="ci (the default sizes) or smoke")] = "ci",
    models: Annotated[
        str | None, typer.Option(help="a models pack (adamllm prove-pack) for the base models")
    ] = None,
) -> None:
    """Error-driven selection on the proving ground: a student weak at one skill, a teacher,
    a pool; flow select at the budget; error-driven against random, instruction similarity
    and the student, overall and on the weak skill."""
    if scale not in ("full", "ci", "smoke"):
        fail(f"--scale {scale!r}: use full, ci or smoke")
    from flows.prove import prove_select_flow

    try:
        prove_select_flow(seed=seed, out=out, scale=scale, models_pack=models)
    except (ConfigError, DatasetError, ValueError) as error:
        fail(str(error))


@app.command("prove-pack")
def prove_pack(
    out: Annotated[Path, typer.Option(help="folder to write the pack to (replaced whole)")],
    seed: Annotated[int, typer.Option(help="world seed of the built models")] = 0,
    scale: Annotated[str, typer.Option(help="full, ci or smoke")] = "ci",
) -> None:
    """Copy the proving ground's built models (base, judge, tuned synthesizer) of one seed
    and scale into a pack that `adamllm prove --models` installs on another machine."""
    from adamllm_core.proving.experiment import ProveConfig
    from adamllm_core.proving.pack import export_pack

    if scale not in ("full", "ci", "smoke"):
        fail(f"--scale {scale!r}: use full, ci or smoke")
    try:
        written = export_pack(ProveConfig.for_scale(scale, seed), out)
    except ConfigError as error:
        fail(str(error))
    size = sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    console.print(f"models pack for world seed {seed} ({scale}): {written} ({size / 1e6:.1f} MB)")


@app.command("prove-seeds")
def prove_seeds(
    outs: Annotated[list[Path], typer.Argument(help="finished `adamllm prove --out` folders")],
) -> None:
    """Several world seeds' proving runs side by side: accuracy and gains per seed, their
    spread between seeds, and whether each gain is larger than its spread."""
    from adamllm_core.proving.experiment import seed_spread

    reports = []
    for out in outs:
        path = out / "report.json"
        if not path.is_file():
            fail(f"{path}: not found (is {out} a finished `adamllm prove --out` folder?)")
        reports.append(json.loads(path.read_text()))
    seeds = [report["seed"] for report in reports]
    if len(set(seeds)) != len(seeds):
        fail(f"world seeds {seeds}: give one finished run per seed")
    spread = seed_spread(reports)
    table = Table("", *[f"seed {s}" for s in seeds], "spread")
    for name, values in spread["by_seed"].items():
        shown = ["-" if values[s] is None else f"{values[s]:.1f}" for s in seeds]
        width = spread["spread"][name]
        table.add_row(name, *shown, "-" if width is None else f"{width:.1f}")
    console.print(table)
    for name, holds in spread["gains_above_spread"].items():
        console.print(
            f"{name}: every seed's gain above its spread between seeds: {holds}", soft_wrap=True
        )


models_app = typer.Typer(no_args_is_help=True, help="Local models.")
app.add_typer(models_app, name="models")


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option(help="folder for vlm/ and lm/")],
    seed: Annotated[int, typer.Option(help="weight initialisation seed")] = 0,
) -> None:
    """Build the tiny LLaVA-architecture VLM and Llama text LM (no download)."""
    from adamllm_core.models.tiny import build_tiny_models

    paths = build_tiny_models(out, seed=seed)
    for name, path in paths.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)


@app.command("run")
def run_deployment_command(
    name: Annotated[
        str, typer.Argument(help="FLOW-DEPLOYMENT (synth-food) or FLOW/DEPLOYMENT (synth/food)")
    ],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="KEY=VALUE flow parameter overrides")
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait for the flow run to finish")] = False,
) -> None:
    """Trigger a deployment on the Prefect server (the same as `prefect deployment run`)."""
    deployment = name if "/" in name else name.replace("-", "/", 1)
    if "/" not in deployment:
        fail(f"{name!r} names no deployment: use FLOW-DEPLOYMENT such as synth-food")
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r}: expected KEY=VALUE")
        parameters[key] = value

    from prefect.deployments import run_deployment

    try:
        flow_run = run_deployment(
            deployment, parameters=parameters or None, timeout=None if wait else 0
        )
    except Exception as error:  # noqa: BLE001 (Prefect raises its own types for unknown deployments)
        fail(f"cannot run deployment {deployment}: {error}")
    console.print(
        f"flow run {flow_run.name} ({flow_run.id}) of {deployment}: {flow_run.state_name}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def seed(
    vision_flan: Annotated[
        str, typer.Option(help="Vision-Flan annotation file (annotation_191-task_1k.json)")
    ],
    allava_caption: Annotated[str, typer.Option(help="ALLaVA-Caption-VFLAN-4V.json")],
    allava_instruct: Annotated[str, typer.Option(help="ALLaVA-Instruct-VFLAN-4V.json")],
    out: Annotated[str, typer.Option(help="output seed dataset URI (local or s3://)")],
    image_root: Annotated[
        str | None,
        typer.Option(
            help="folder Vision-Flan's image names start from (images_191task_1k);"
            " default: the Vision-Flan file's folder"
        ),
    ] = None,
    blank_share: Annotated[float, typer.Option(help="share of images made blank")] = 0.1,
    dev_share: Annotated[float, typer.Option(help="share of each task held out as dev")] = 0.1,
    overwrite: Annotated[
        bool, typer.Option(help="replace a different dataset already at --out")
    ] = False,
) -> None:
    """Build synthesizer tuning data (paper Appendix B): Vision-Flan joined with ALLaVA's
    caption and informative answer of the same image."""
    from adamllm_core.storage import normalise_uri
    from adamllm_core.training.seed import SeedConfig, build_seed

    try:
        config = SeedConfig(blank_share=blank_share, dev_share=dev_share)
    except ValidationError as error:
        fail(format_validation_error(error))
    root = image_root or normalise_uri(vision_flan).rsplit("/", 1)[0]
    try:
        manifest = build_seed(
            vision_flan, allava_caption, allava_instruct, root, out, config, overwrite=overwrite
        )
    except (ConfigError, DatasetError, OSError) as error:
        fail(str(error))
    quarantine = manifest.quarantine.reasons if manifest.quarantine else {}
    console.print(
        f"[green]seed[/] {manifest.rows} examples ({manifest.stats.counters.get('dev', 0)} dev,"
        f" {manifest.stats.counters.get('blank_images', 0)} blank) → {out}",
        highlight=False,
        soft_wrap=True,
    )
    unmatched = {
        k: v for k, v in manifest.stats.counters.items() if k not in ("dev", "blank_images")
    }
    for reason, count in sorted({**quarantine, **unmatched}.items()):
        console.print(f"  {reason}: {count}", highlight=False)


@app.command()
def train(
    config: Annotated[
        Path, typer.Option(help="training YAML: TrainConfig keys, optionally `preset: NAME`")
    ],
    data: Annotated[
        str, typer.Option(help="a seed dataset (task: synthesizer) or a mixture dataset")
    ],
    out: Annotated[
        str,
        typer.Option(
            help="output folder (local or s3://) for checkpoints, metrics.jsonl, loss_curve.png"
        ),
    ],
) -> None:
    """Train in-process (resumes from the last checkpoint in --out; s3:// works)."""
    from adamllm_core.training.trainer import load_train_config, train_to

    try:
        train_config = load_train_config(read_settings_file(config))
    except ValidationError as error:
        fail(format_validation_error(error))
    except (OSError, ValueError) as error:  # ConfigError included
        fail(str(error))
    summary = train_to(
        train_config, data, out
    )  # object storage too; a finished identical run is kept
    console.print_json(json.dumps(summary))


@app.command("eval")
def eval_command(
    benchmark: Annotated[
        list[str] | None,
        typer.Option(help="benchmark name (repeat for several); see --help of score"),
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option(help="benchmark file or folder, one per --benchmark")
    ] = None,
    model: Annotated[str | None, typer.Option(help="HF id, local checkpoint or tiny:vlm")] = None,
    engine: Annotated[str | None, typer.Option(help="transformers, vllm or openai")] = None,
    out: Annotated[str | None, typer.Option(help="output root: OUT/<name>/<benchmark>/")] = None,
    name: Annotated[
        str | None, typer.Option(help="run name (default: the model folder or id's last part)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="evaluation suite YAML (deployments/eval-*.yaml)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="first N questions of each benchmark")] = None,
    batch_size: Annotated[int | None, typer.Option(help="requests per engine call")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="generation limit (default: each benchmark's)")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="server URL for --engine openai (e.g. a vllm serve)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace earlier predictions made with other settings or code")
    ] = False,
    compare_with: Annotated[
        list[str] | None, typer.Option(help="earlier run folders to put in the report")
    ] = None,
) -> None:
    """Evaluate a model on benchmarks (flow `evaluate`, in-process): predictions, summary, report."""
    from adamllm_core.engines import make_engine
    from adamllm_core.evaluation.benchmarks import benchmark as spec_of
    from adamllm_core.evaluation.suite import load_suite

    benchmarks, data = benchmark or [], data or []
    if len(benchmarks) != len(data):
        fail(
            f"give one --data per --benchmark ({len(benchmarks)} benchmarks, {len(data)} data paths)"
        )
    settings: dict[str, Any] = {}
    try:
        if benchmarks:
            settings["benchmarks"] = {
                spec_of(b).name: {"data": d} for b, d in zip(benchmarks, data)
            }
            settings["domain"] = spec_of(benchmarks[0]).domain
        file_settings = read_settings_file(config) if config else {}
        engine_settings = {
            k: v
            for k, v in {
                "kind": engine,
                "model": model,
                "batch_size": batch_size,
                "base_url": base_url,
            }.items()
            if v
        }
        if engine_settings:
            settings["engine"] = {**file_settings.get("engine", {}), **engine_settings}
        if (
            limit is not None
            and not benchmarks
            and isinstance(file_settings.get("benchmarks"), dict)
        ):
            # the command line's limit wins over the file's per-benchmark ones
            settings["benchmarks"] = {
                k: {**(v or {}), "limit": limit} for k, v in file_settings["benchmarks"].items()
            }
        if name is None and model:  # results of another model never land under the file's run name
            name = model.rstrip("/").removesuffix("/final").rsplit("/", 1)[-1].replace(":", "-")
        overrides = {
            **settings,
            "name": name,
            "out": out,
            "limit": limit,
            "compare_with": compare_with,
            "max_new_tokens": max_new_tokens,
        }
        suite = load_suite(config, overrides)  # fail here, clearly, before starting Prefect
        make_engine(suite.engine)  # engines load lazily: this only checks the kind can run here
    except (ConfigError, OSError, ValueError, AttributeError) as error:
        fail(str(error))

    from flows.evaluate import evaluate_flow

    try:
        evaluate_flow(
            config=str(config) if config else None,
            settings={k: v for k, v in overrides.items() if v is not None},
            overwrite=overwrite,
        )
    except (ConfigError, DatasetError, ValueError) as error:
        fail(str(error))


@app.command()
def score(
    benchmark: Annotated[str, typer.Option(help="benchmark name, e.g. vqa_rad, food101, pmc_vqa")],
    data: Annotated[str, typer.Option(help="benchmark file or folder")],
    predictions: Annotated[str, typer.Option(help="jsonl of {qid, prediction} (local or s3://)")],
    out: Annotated[Path | None, typer.Option(help="write per-question scores here (jsonl)")] = None,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random option fallback")] = 0,
) -> None:
    """Score another system's answers with the same rules (no model)."""
    from adamllm_core.evaluation.run import read_predictions, score_predictions

    try:
        rows, summary = score_predictions(
            benchmark, data, read_predictions(predictions), seed=seed, limit=limit
        )
    except (OSError, ValueError) as error:
        fail(str(error))
    if out is not None:
        out.write_text("".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in rows))
    table = Table(
        title=f"{summary['title']}: {summary['questions']} questions, {summary['missing']} without a prediction"
    )
    for column in ("task", "metric", "score", "n", "fallbacks"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task in summary["tasks"]:
        corrected = f" (corrected {task['score_corrected']})" if "score_corrected" in task else ""
        table.add_row(
            task["task"],
            task["metric"],
            f"{task['score']}{corrected}",
            str(task["n"]),
            str(task["fallbacks"]),
        )
    console.print(table)
    console.print_json(json.dumps(summary))


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="evaluation run folders (OUT/<name>)")],
    out: Annotated[
        str | None,
        typer.Option(help="where report.md and report.png go (default: the last run)"),
    ] = None,
) -> None:
    """Compare runs per task and per domain average: Markdown table + bar chart (flow `report`)."""
    from adamllm_core.evaluation.report import load_run

    try:
        for run in runs:
            load_run(run)  # fail here, clearly, before starting Prefect
    except (OSError, ValueError) as error:
        fail(str(error))

    from flows.evaluate import report_flow

    written = report_flow(runs=runs, out=out or runs[-1])
    console.print(f"written: {written['report_md']} and {written['report_png']}", highlight=False)


@app.command()
def inspect(
    uri: Annotated[str, typer.Argument(help="dataset URI")],
    rows: Annotated[int, typer.Option(help="sample rows to show")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Show a dataset's manifest, schema, counts, quarantine reasons and sample rows."""
    try:
        summary = summarise(uri, sample_rows=rows)
    except DatasetError as error:
        status = work_status(uri)
        if status is not None:
            fail(
                f"{status.uri} is unfinished: stage {status.stage!r} has written {status.shards_done} "
                f"shards ({status.rows_done} rows, {status.quarantined_done} quarantined). "
                + (
                    f"It is being written now by {status.writing_now.get('host')} pid "
                    f"{status.writing_now.get('pid')}."
                    if status.writing_now
                    else "Re-run that stage with the same output to resume it."
                )
            )
        fail(str(error))
    if as_json:
        json.dump(summary.model_dump(mode="json"), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    render_summary(summary)


def render_summary(summary: Any) -> None:
    manifest = summary.manifest
    stats = manifest["stats"]
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("dataset", summary.uri)
    facts.add_row("schema", f"{manifest['schema']['name']} v{manifest['schema']['version']}")
    facts.add_row(
        "rows",
        f"{manifest['rows']} in {len(manifest['shards'])} shards "
        f"({sum(s['bytes'] for s in manifest['shards']) / 1e6:.1f} MB)",
    )
    facts.add_row(
        "stage",
        f"{stats['stage']}: {stats['rows_in']} in, {stats['rows_out']} out, "
        f"{sum(stats['quarantined'].values())} quarantined, {stats['seconds']} s",
    )
    for name, value in stats["counters"].items():
        facts.add_row("", f"{name.replace('_', ' ')}: {value}")
    for parent in manifest["parents"]:
        facts.add_row("parent", f"{parent['uri']} ({parent['kind']} {parent['fingerprint']})")
    facts.add_row("config", manifest["config_hash"])
    facts.add_row("code", manifest["code_version"])
    facts.add_row("created", manifest["created_at"])
    facts.add_row("fingerprint", manifest["fingerprint"])
    facts.add_row("read with", f"pl.scan_parquet('{summary.uri}/*.parquet')")
    console.print(facts)

    quarantine = manifest.get("quarantine")
    if quarantine:
        table = Table(title=f"quarantine: {quarantine['rows']} rows at {quarantine['uri']}")
        table.add_column("reason")
        table.add_column("rows", justify="right")
        for reason, count in quarantine["reasons"].items():
            table.add_row(reason, str(count))
        console.print(table)

    console.print(f"\n[bold]schema[/]\n{summary.arrow_schema}\n")
    _render_rows("sample rows", summary.samples)
    if summary.quarantine_samples:
        _render_rows("sample quarantine rows", summary.quarantine_samples)


def _render_rows(title: str, rows: list[dict[str, Any]]) -> None:
    for number, row in enumerate(rows):
        table = Table(title=f"{title} [{number}]", show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in row.items():
            table.add_row(key, "" if value is None else str(value))
        console.print(table)


@app.command()
def browse(
    uri: Annotated[
        str, typer.Argument(help="dataset URI, or a run folder holding datasets; local or s3://")
    ],
    out: Annotated[str, typer.Option(help="folder or s3:// URI to write the site to")],
    rows_per_page: Annotated[int, typer.Option(help="rows on one page")] = 200,
    thumbnail_px: Annotated[int, typer.Option(help="long side of thumbnails, pixels")] = 160,
    max_rows: Annotated[
        int | None, typer.Option(help="only the first rows of each dataset (default: all)")
    ] = None,
) -> None:
    """Write a static HTML site of a dataset (or a run's datasets): rows with thumbnails,
    filters, sorting by score, quarantine reasons. Opens from disk or object storage."""
    try:
        summary = build_site(
            uri, out, rows_per_page=rows_per_page, thumbnail_px=thumbnail_px, max_rows=max_rows
        )
    except (DatasetError, ConfigError, OSError) as error:
        fail(str(error))
    table = Table(title=f"site of {escape(summary.uri)}", title_justify="left")
    table.add_column("dataset", no_wrap=True)
    table.add_column("schema")
    for column in ("rows", "pages", "quarantined"):
        table.add_column(column, justify="right")
    for site in summary.datasets or [summary]:
        quarantine = site.quarantine
        table.add_row(
            escape(site.uri.rstrip("/").rsplit("/", 1)[-1]),
            site.schema_name or "",
            f"{site.rows:,}"
            + (f" of {site.dataset_rows:,}" if site.rows < site.dataset_rows else ""),
            str(site.pages),
            f"{quarantine.rows:,} ({quarantine.pages} pages)" if quarantine else "0",
        )
    console.print(table)
    for name, why in summary.skipped.items():
        console.print(f"[yellow]no site[/] for {escape(name)}: {escape(why)}", highlight=False)
    console.print(
        f"thumbnails: {summary.thumbnails_written:,} written, {summary.thumbnails_reused:,} reused"
        + (f", {summary.thumbnails_failed:,} undecodable" if summary.thumbnails_failed else ""),
        highlight=False,
    )
    console.print(f"open: {summary.index}", highlight=False, soft_wrap=True)


def _print_json(model: BaseModel) -> None:
    json.dump(model.model_dump(mode="json"), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# --- lineage and run status ----------------------------------------------------------------


@app.command()
def lineage(
    row_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="row id: a prediction (or its qid), a mixture record, a judged row, a triplet, a pair",
        ),
    ],
    from_uri: Annotated[
        str,
        typer.Option(
            "--from", help="the dataset holding the row, or a run folder to search for it"
        ),
    ],
    back: Annotated[bool, typer.Option("--back/--no-back", help="walk back to the source")] = True,
    forward: Annotated[
        bool,
        typer.Option("--forward/--no-forward", help="list the rows made from it"),
    ] = True,
    run: Annotated[
        str | None,
        typer.Option(help="folder searched for rows made from it (default: the dataset's folder)"),
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="write the image bytes the walk ends at to this file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the lineage as JSON")] = False,
) -> None:
    """Walk a row back to its pair, source image and caption (or benchmark question and
    model), with what made each step; and forward to the rows made from it. Exits 1 when a
    check fails (a parent changed since, an image or caption that is not the source's)."""
    try:
        found = trace_lineage(row_id, from_uri, back=back, forward_from=forward, run=run)
    except (DatasetError, OSError, ValueError) as error:
        fail(str(error))
    if image is not None and found.origins:
        image.write_bytes(found.origins[0].image or b"")
    if as_json:
        _print_json(found)
    else:
        render_lineage(found)
        if image is not None:
            console.print(
                f"image written to {image}" if found.origins else "no image: the walk ends at none",
                highlight=False,
            )
    if found.problems:
        raise typer.Exit(1)


def _cut(value: Any, width: int = 110) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
        value = " | ".join(f"{m['role']}: {m['content']}" for m in value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _mark(ok: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[bold red]✗[/]", None: "[yellow]?[/]"}[ok]


def render_lineage(found: Lineage) -> None:
    nodes = found.nodes

    # shown elsewhere: ids in the tree, image hash and source in the origin below
    hidden = {"pair_id", "triplet_id", "image_sha256", "domain", "source", "source_ref"}

    def label(node: LineageNode) -> str:
        head = f"[bold]\\[{node.index}] {escape(node.what)}[/] {escape(str(node.id or ''))}"
        via = f" (via {node.via})" if node.via else ""
        lines = [f"{head}{via}  [dim]{escape(node.uri)}[/]"]
        for key, value in node.fields.items():
            if value is None or key in hidden or value == node.uri or value == node.id:
                continue
            if isinstance(value, float):
                value = round(value, 4)
            lines.append(f"  {escape(key)}: {escape(_cut(value))}")
        if node.made_by:
            made = node.made_by
            models = "".join(f" · {k} {v}" for k, v in made.models.items())
            text = (
                f"made by {made.stage} · config {made.config_hash} · code "
                f"{made.code_version} · identity {made.identity}{models}"
            )
            lines.append(f"  [dim]{escape(text)}[/]")
        passed = [c.name for c in node.checks if c.ok]
        if passed:
            lines.append(f"  {_mark(True)} " + escape(", ".join(passed)))
        for check in node.checks:
            if not check.ok:
                lines.append(f"  {_mark(check.ok)} {escape(check.name)}: {escape(check.detail)}")
        return "\n".join(lines)

    shown: set[int] = set()

    def add(tree: Tree, index: int) -> None:
        if index in shown:
            tree.add(f"[dim]→ \\[{index}] (above)[/]")
            return
        shown.add(index)
        branch = tree.add(label(nodes[index]))
        for parent in nodes[index].parents:
            add(branch, parent)

    title = f"lineage of {escape(found.id)} ({found.schema_name} in {escape(found.dataset)})"
    tree = Tree(f"[bold]{title}[/]", guide_style="dim")
    if nodes:
        add(tree, 0)
    console.print(tree, highlight=False)
    if found.also_in:
        console.print(f"[dim]also in: {escape(', '.join(found.also_in))}[/]", highlight=False)
    for origin in found.origins:
        what = f"{origin.kind} {origin.source}"
        place = f" {origin.image_uri}" if origin.image_uri else ""
        facts = [f"image{place}: {origin.image_bytes:,} bytes, sha256 {origin.image_sha256}"]
        if origin.caption is not None:
            facts.append(f"caption: {_cut(origin.caption)}")
        if origin.question is not None:
            facts.append(f"question: {_cut(origin.question)} · answer: {_cut(origin.answer)}")
        console.print(
            f"{_mark(origin.verified)} [bold]origin[/] {escape(what)}\n  "
            + "\n  ".join(escape(f) for f in facts),
            highlight=False,
        )
    if found.forward is not None:
        if not found.forward:
            console.print(f"forward: nothing under {escape(found.searched or '')} made from it")
        else:
            console.print(f"[bold]made from it[/] (under {escape(found.searched or '')}):")
        keys = ("label", "variant", "kind", "reason", "instruction")
        for group in found.forward:
            name = group.uri.removeprefix((found.searched or "") + "/")
            rows = "; ".join(
                " ".join(
                    [str(row.get("id", ""))[:12]]
                    + [_cut(row[k], 40) for k in keys if row.get(k) is not None]
                )
                for row in group.rows[:3]
            )
            more = f"; {group.matched - 3} more" if group.matched > 3 else ""
            kind = " quarantined" if group.quarantine else ""
            plural = "s" if group.matched != 1 else ""
            console.print(
                f"  {escape(name)} ({group.stage}){kind}: {group.matched} row{plural}: "
                f"{escape(rows)}{more}",
                highlight=False,
            )
    if found.problems:
        console.print("[bold red]problems:[/]", highlight=False)
        for problem in found.problems:
            console.print(f"  ✗ {escape(problem)}", highlight=False)
    else:
        console.print("[green]no problems: every check passed[/]", highlight=False)


@app.command()
def status(
    out: Annotated[str, typer.Argument(help="a run folder (OUT or OUT/<domain>), local or s3://")],
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Each stage's dataset under a run folder: rows, quarantine by reason, finished or not,
    and for an interrupted one the shards and rows done and how many are left."""
    try:
        found = run_status(out)
    except (DatasetError, OSError) as error:
        fail(str(error))
    if as_json:
        _print_json(found)
        return
    render_status(found)


def _state(entry: DatasetStatus) -> str:
    """One short word or two: finished, unfinished, trained, training, exported."""
    if entry.kind == "training":
        d = entry.detail
        if not entry.finished:
            return f"[yellow]training[/] (step {d.get('last_logged_step')})"
        return "[green]trained[/]"
    if entry.kind == "export":
        return "[green]exported[/]" if entry.finished else "[yellow]unfinished[/]"
    if entry.problem:
        return "[red]unreadable[/]"
    state = "[green]finished[/]" if entry.finished else "[yellow]unfinished[/]"
    if entry.progress is not None and entry.finished:
        state += ", [yellow]replacing[/]"
    if entry.changed_parents:
        state += ", [red]stale[/]"
    return state


def _progress_text(progress: Progress) -> str:
    text = f"{progress.stage}: {progress.shards_done} shards, {progress.rows_done} rows done"
    if progress.quarantined_done:
        text += f" ({progress.quarantined_done} quarantined)"
    if progress.input_rows is not None:
        text += (
            f"; left: {progress.shards_left} of {progress.input_shards} shards, "
            f"{progress.inputs_left} of {progress.input_rows} input rows ({progress.input_uri})"
        )
    else:
        text += "; input size unknown"
    if progress.writing_now:
        text += (
            f"; being written now by {progress.writing_now.get('host')} "
            f"pid {progress.writing_now.get('pid')}"
        )
    else:
        text += "; no writer now: re-run the stage to resume"
    return text


def render_status(found: RunStatus) -> None:
    """A table per folder holding datasets (OUT/<domain>, OUT/<name>/<benchmark>), then
    quarantine reasons, unfinished work and stale parents, a line each."""
    from rich import box

    groups: dict[str, list[DatasetStatus]] = {}
    for entry in found.entries:
        folder, _, _ = entry.name.rpartition("/")
        groups.setdefault(folder, []).append(entry)
    for folder, entries in groups.items():
        table = Table(
            title=escape(f"{found.root}/{folder}" if folder else found.root),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        widest = max(len(entry.name.rpartition("/")[2]) for entry in entries)
        table.add_column("dataset", min_width=min(widest, 24), overflow="fold")
        table.add_column("schema", no_wrap=True)
        table.add_column("stage", no_wrap=True)
        table.add_column("rows", justify="right", no_wrap=True)
        table.add_column("quar.", justify="right", no_wrap=True)
        table.add_column("state", overflow="fold")
        for entry in entries:
            table.add_row(
                escape(entry.name.rpartition("/")[2]),
                entry.schema_name or ("" if entry.kind == "dataset" else entry.kind),
                entry.stage or "",
                "" if entry.rows is None else f"{entry.rows:,}",
                f"{entry.quarantined:,}" if entry.quarantined else "",
                _state(entry),
            )
        console.print(table, highlight=False)
    if not found.entries:
        console.print(f"no dataset under {escape(found.root)}", highlight=False)
    for entry in found.entries:
        for note in _status_notes(entry):
            console.print(f"  {escape(entry.name)}: {note}", highlight=False, soft_wrap=True)


def _status_notes(entry: DatasetStatus) -> list[str]:
    """What the table has no room for: training figures, quarantine reasons, progress,
    parents changed since (rich markup, data escaped)."""
    notes = []
    if entry.problem:
        notes.append(f"[red]cannot be read[/]: {escape(entry.problem)}")
    if entry.kind == "training" and entry.finished:
        d = entry.detail
        loss = d.get("train_loss")
        notes.append(
            f"{d.get('steps')} steps, {d.get('examples')} examples"
            + (f", loss {loss:.3f}" if isinstance(loss, float) else "")
        )
    if entry.quarantine_reasons:
        reasons = ", ".join(f"{k} {v}" for k, v in entry.quarantine_reasons.items())
        notes.append(f"quarantined {escape(reasons)}")
    if entry.progress is not None:
        what = "replacement" if entry.progress.replacing else "unfinished"
        notes.append(f"[yellow]{what}[/] {escape(_progress_text(entry.progress))}")
    elif not entry.finished and entry.kind == "dataset" and not entry.problem:
        notes.append("[yellow]unfinished[/], no shard done yet")
    for parent in entry.changed_parents:
        now = parent.current or "unreadable"
        notes.append(
            f"[red]parent changed since[/] {escape(parent.uri)} "
            f"(recorded {parent.recorded}, now {now})"
        )
    return notes


if __name__ == "__main__":
    app()
