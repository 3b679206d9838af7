"""Flow `synth`: ingest → synthesize → filter → assemble → export for one domain config."""

import json
from typing import Any

from prefect import flow

from adamllm_core.config import load_domain_config
from adamllm_core.pipeline import GENERAL_OUTPUTS, VARIANT_OUTPUTS
from adamllm_core.run_parameters import (
    KEEP_BUDGET,
    KEEP_ENGINE,
    KEEP_SAMPLING,
    Budget,
    EngineChoice,
    Sampling,
    synth_overrides,
)
from adamllm_core.training.trainer import stage1_train_config
from tasks.browse import browse_outputs
from tasks.ingest import ingest_pairs
from tasks.synth import (
    assemble_mixtures,
    export_mixture,
    filter_consistent,
    general_task_data,
    synthesize_triplets,
)
from tasks.train import build_seed_data, train_model, train_on_deployment


@flow(name="synth", log_prints=True)
def synth_flow(
    config: str,
    source: str | None = None,
    out: str | None = None,
    synthesizer: EngineChoice = KEEP_ENGINE,
    judge: EngineChoice = KEEP_ENGINE,
    sampling: Sampling = KEEP_SAMPLING,
    budget: Budget = KEEP_BUDGET,
) -> dict[str, Any]:
    """Run the AdaMLLM data pipeline for a domain: ingest, synthesize, filter, assemble,
    export, then post-train.

    Outputs land under OUT/<domain>/<stage>/. Stages whose inputs, settings and code are
    unchanged are served from their finished datasets; a refresh with new source data
    recomputes the changed stages, and the synthesizer only sees pairs it has not seen.

    Args:
        config: the domain's config file (YAML), e.g. deployments/food.yaml, relative to the
            project folder the worker runs in
        source: image-caption data to ingest instead of the config's (folder, annotation
            file, ShareGPT JSON or Parquet; local or s3://)
        out: output root instead of the config's (local folder or s3:// URI)
        synthesizer: the synthesizer's engine and model instead of the config's
        judge: the consistency filter's engine and model instead of the config's
        sampling: how the synthesizer writes, instead of the config's
        budget: post-training steps or epochs instead of the config's
    """
    overrides = synth_overrides(source, out, synthesizer, judge, sampling, budget)
    domain = load_domain_config(config, overrides)
    synth_config = domain.synthesize
    extra: dict[str, Any] = {}
    if domain.tune_synthesizer:  # paper 3.1.1: tune the synthesizer on seed data first
        tune = domain.tune_synthesizer
        seed = build_seed_data(
            tune.vision_flan,
            tune.allava_caption,
            tune.allava_instruct,
            tune.image_root,
            domain.uri("seed"),
            tune.seed,
        )
        tuned = train_model(
            {**tune.train, "task": "synthesizer"}, seed.uri, domain.uri("synthesizer")
        )
        tuned_path = tuned["final"]
        synth_config = synth_config.model_copy(
            update={"engine": synth_config.engine.model_copy(update={"model": tuned_path})}
        )
        extra.update(seed=seed, synthesizer=tuned)
    # Outputs under OUT/<domain>/ belong to this flow: replace them when their inputs change.
    pairs = ingest_pairs(domain.source, domain.uri("pairs"), domain.ingest_config(), overwrite=True)
    triplets = synthesize_triplets(
        pairs.uri,
        domain.uri("triplets"),
        synth_config,
        cache_uri=domain.uri("_cache/synthesize"),
        overwrite=True,
    )
    kept, rejected = filter_consistent(
        triplets.uri,
        domain.uri("filtered"),
        domain.uri("rejected"),
        domain.filter,
        cache_uri=domain.uri("_cache/filter"),
        overwrite=True,
    )
    outs = domain.mixture_uris()
    general = None
    general_seed = domain.general_seed_uri() if set(outs) & set(GENERAL_OUTPUTS) else None
    if general_seed:
        # Table 5's General CoT: the seed data in the task format, through the same filter.
        general_pairs, general_triplets = general_task_data(
            general_seed,
            domain.uri("general-pairs"),
            domain.uri("general-triplets"),
            overwrite=True,
        )
        general_kept, _ = filter_consistent(
            general_triplets.uri,
            domain.uri("general-filtered"),
            domain.uri("general-rejected"),
            domain.filter,
            cache_uri=domain.uri("_cache/general-filter"),
            overwrite=True,
        )
        general = (general_pairs.uri, general_kept.uri)
        extra.update({"general-pairs": general_pairs, "general-filtered": general_kept})
    primary = next(iter(outs.values()))
    mixtures = assemble_mixtures(
        pairs.uri,
        kept.uri,
        outs,
        primary,
        domain.assemble,
        triplets_uri=triplets.uri,
        general=general,
        overwrite=True,
    )
    export = export_mixture(
        mixtures[next(iter(outs))].uri,
        domain.uri("export"),
        f"adamllm_{domain.domain.replace('-', '_')}",
    )
    if triplets.rows + triplets.quarantined:
        print(
            f"synthesizer outputs parsed into triplets: {triplets.rows} of {triplets.rows + triplets.quarantined} "
            f"({triplets.rows / (triplets.rows + triplets.quarantined):.0%})"
        )
    mixture = mixtures[next(iter(outs))]
    if domain.post_train:  # paper 3.2: single-stage post-training on the mixture
        post = domain.post_train
        if post.deployment:
            extra["model"] = train_on_deployment(
                post.deployment, post.train, mixture, domain.uri("model"), wait=False
            )
        elif post.pipeline != "single_stage":  # Table 5's ablations: captions, then tasks
            first, second = VARIANT_OUTPUTS[post.pipeline]
            stage1 = train_model(
                stage1_train_config(post.train), mixtures[first].uri, domain.uri("model-stage1")
            )
            extra["model-stage1"] = stage1
            if mixtures[second].rows:
                extra["model"] = train_model(
                    {**post.train, "model": stage1["final"]},
                    mixtures[second].uri,
                    domain.uri("model"),
                )
            else:
                print(f"{post.pipeline}: stage 2 has no records, so the model is stage 1's")
                extra["model"] = stage1
        else:
            extra["model"] = train_model(post.train, mixture.uri, domain.uri("model"))
    if domain.browse_rows != 0:
        extra["browse"] = browse_outputs(domain.root(), domain.uri("_browse"), domain.browse_rows)
    summary = {
        **extra,
        "pairs": pairs,
        "triplets": triplets,
        "filtered": kept,
        "rejected": rejected,
        **{f"mixture:{name}": ref for name, ref in mixtures.items()},
        "export": export,
    }
    for name, value in summary.items():
        if name == "export":
            print(
                f"{name:>24}: {value['records']} records, {value['images']} images → {value['uri']}"
            )
        elif name == "browse":
            continue  # printed by the task
        elif isinstance(value, dict):
            print(
                f"{name:>24}: {json.dumps({k: v for k, v in value.items() if k in ('steps', 'train_loss', 'final', 'flow_run', 'state')})}"
            )
        else:
            print(f"{name:>24}: {value.rows} rows, {value.quarantined} quarantined → {value.uri}")
    return summary
