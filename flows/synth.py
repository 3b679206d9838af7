"""Flow `synth`: ingest → synthesize → filter → assemble → export for one domain config."""

from typing import Any

from prefect import flow

from adamllm_core.config import load_domain_config
from tasks.ingest import ingest_pairs
from tasks.synth import assemble_mixtures, export_mixture, filter_consistent, synthesize_triplets


@flow(name="synth", log_prints=True)
def synth_flow(config: str, source: str | None = None, out: str | None = None) -> dict[str, Any]:
    """Run the AdaMLLM data pipeline for the domain config at `config` (a YAML path).

    Outputs land under OUT/<domain>/<stage>/. Stages whose inputs, settings and code are
    unchanged are served from their finished datasets; a refresh with new source data
    recomputes the changed stages, and the synthesizer only sees pairs it has not seen.
    """
    domain = load_domain_config(config, {"source": source, "out": out})
    # Outputs under OUT/<domain>/ belong to this flow: replace them when their inputs change.
    pairs = ingest_pairs(domain.source, domain.uri("pairs"), domain.ingest_config(), overwrite=True)
    triplets = synthesize_triplets(pairs.uri, domain.uri("triplets"), domain.synthesize,
                                   cache_uri=domain.uri("_cache/synthesize"), overwrite=True)
    kept, rejected = filter_consistent(triplets.uri, domain.uri("filtered"), domain.uri("rejected"), domain.filter,
                                       cache_uri=domain.uri("_cache/filter"), overwrite=True)
    outs = domain.mixture_uris()
    primary = next(iter(outs.values()))
    mixtures = assemble_mixtures(pairs.uri, kept.uri, outs, primary, domain.assemble, overwrite=True)
    export = export_mixture(mixtures[next(iter(outs))].uri, domain.uri("export"), f"adamllm_{domain.domain.replace('-', '_')}")
    summary = {
        "pairs": pairs, "triplets": triplets, "filtered": kept, "rejected": rejected,
        **{f"mixture:{name}": ref for name, ref in mixtures.items()}, "export": export,
    }
    for name, value in summary.items():
        if name == "export":
            print(f"{name:>24}: {value['records']} records, {value['images']} images → {value['uri']}")
        else:
            print(f"{name:>24}: {value.rows} rows, {value.quarantined} quarantined → {value.uri}")
    return summary
