"""The GPU check: what only a GPU machine can show, in one run (see gpu_check.sh).

    python benchmarks/gpu_check.py [--deadline-s 420]

1. engines: the transformers engine on CUDA against the same engine on CPU, on the same
   synthesis prompts (identical greedy outputs?) and judge requests (same labels, score
   difference); the vLLM engine too where vllm is installed.
2. post-training a tiny randomly initialised Qwen2-VL (built here: its processor needs
   torchvision) with DeepSpeed ZeRO-2 in bf16, records streamed from the mixture by
   DataLoader workers: loss, tokens/s, peak GPU memory, reload.
3. the synthesize and filter stages with vLLM against transformers on CUDA (a tiny
   synthesizer tuned here first, so its outputs parse): equal triplets, equal labels.
4. overheads: benchmarks/synth_overhead.py (stage over bare engine, 64 new tokens) and
   benchmarks/filter_throughput.py (batched label scoring over one call per label), with
   the transformers engine on CUDA and with vLLM.
5. the engine pool (Ray, started here): synthesize and evaluate on two actors that share
   this GPU (half a card each) against one process, vLLM where installed: equal
   fingerprints, shards per actor.
6. the proving ground's model stage on this GPU (world seed --prove-seed), in what time
   is left before the deadline: how long `make run` would take here.

Every section runs even when one before it fails; nothing is downloaded.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda"  # --device cpu: a dry run of the script on a machine without a GPU
SAMPLE = REPO / "samples" / "biomed_pairs"


def section(title: str, run, *args) -> bool:
    print(f"\n=== {title}", flush=True)
    start = time.perf_counter()
    try:
        run(*args)
        ok = True
    except Exception:  # noqa: BLE001 - report it and run the next section
        traceback.print_exc()
        ok = False
    print(
        f"=== {title}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return ok


def environment() -> None:
    import torch
    import transformers

    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
    for name in ("vllm", "deepspeed"):
        try:
            module = __import__(name)
            print(f"{name} {module.__version__}")
        except Exception as error:  # noqa: BLE001 - vllm is an optional extra
            print(f"{name}: not importable ({type(error).__name__}: {error})")


def engines(work: Path) -> None:
    from adamllm_core.dataset import Dataset
    from adamllm_core.engines import EngineConfig, make_engine
    from adamllm_core.engines.hf import HFRenderer
    from adamllm_core.filtering import judge_request, label_of
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.models import resolve_model
    from adamllm_core.synthesis import SynthConfig, prompt_context, synth_request

    pairs = str(work / "pairs")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="gpu"))
    rows = list(Dataset(pairs).iter_rows(["caption", "image"]))
    config = SynthConfig(engine=EngineConfig(model="tiny:vlm"), max_new_tokens=64)
    context = prompt_context(HFRenderer(resolve_model("tiny:vlm")), config)
    synth = [synth_request(r["caption"], r["image"], config, context) for r in rows]
    judge = [
        judge_request(f"What is shown in image {i}?", r["caption"][:200], r["caption"].split()[0])
        for i, r in enumerate(rows)
    ]
    kinds = [("transformers", "cpu"), ("transformers", DEVICE)]
    try:
        import vllm  # noqa: F401

        kinds.append(("vllm", "cuda"))
    except ImportError:
        print("vllm: not installed here, its engine is not compared")
    texts, labels = {}, {}
    for kind, device in kinds:
        for model, requests, store in (("tiny:vlm", synth, texts), ("tiny:lm", judge, labels)):
            engine = make_engine(
                EngineConfig(kind=kind, model=model, device=device, batch_size=8)
                if kind == "transformers"
                else EngineConfig(kind=kind, model=model, gpu_memory_utilization=0.3)
            )
            engine.run(requests[:2])  # load and warm up
            start = time.perf_counter()
            results = [
                r for i in range(0, len(requests), 8) for r in engine.run(requests[i : i + 8])
            ]
            took = time.perf_counter() - start
            store[(kind, device)] = [
                r.text if store is texts else label_of(r.choice_scores or {}) for r in results
            ]
            print(f"{kind}/{device} {model}: {len(requests)} requests in {took:.2f} s")
    reference = ("transformers", "cpu")
    for key in kinds[1:]:
        same = sum(a == b for a, b in zip(texts[reference], texts[key]))
        print(f"synthesis {key[0]}/{key[1]} vs cpu: {same}/{len(synth)} identical greedy outputs")
        agree = sum(a[0] == b[0] for a, b in zip(labels[reference], labels[key]))
        drift = max(
            abs(a[1][label] - b[1][label])
            for a, b in zip(labels[reference], labels[key])
            for label in a[1]
        )
        print(
            f"judge {key[0]}/{key[1]} vs cpu: {agree}/{len(judge)} same labels,"
            f" largest score difference {drift:.2e}"
        )


def stages_vllm_against_transformers(work: Path) -> None:
    """The synthesize and filter stages with the vLLM engine against the transformers
    engine on CUDA: a tiny synthesizer tuned here on the bundled seed sample (so its outputs
    parse), the same pairs, the same judge."""
    from adamllm_core.dataset import Dataset
    from adamllm_core.engines import EngineConfig
    from adamllm_core.filtering import FilterConfig
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.pipeline import filter_triplets, synthesize
    from adamllm_core.synthesis import SynthConfig
    from adamllm_core.training.seed import SeedConfig, build_seed
    from adamllm_core.training.trainer import preset, train

    engines = {
        "transformers": {"kind": "transformers", "device": DEVICE},
        "vllm": {"kind": "vllm", "gpu_memory_utilization": 0.3},
    }
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm: not installed here, the stages run with transformers alone")
        del engines["vllm"]
    seed_sample = REPO / "samples" / "seed_biomed"
    seed = str(work / "seed")
    build_seed(
        *(
            str(seed_sample / f"{name}.json")
            for name in ("vision_flan", "allava_caption", "allava_instruct")
        ),
        str(seed_sample),
        seed,
        SeedConfig(),
    )
    start = time.perf_counter()
    steps = 1500 if DEVICE == "cuda" else 100  # a CPU dry run: the code path only
    tuned = train(
        preset("tiny", task="synthesizer", max_steps=steps), seed, str(work / "synthesizer")
    )

    print(f"tiny synthesizer tuned: {tuned['steps']} steps in {time.perf_counter() - start:.1f} s")
    pairs = str(work / "pairs-stages")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="gpu"))
    triplets, labels = {}, {}
    for name, engine in engines.items():
        out = str(work / f"triplets-{name}")
        start = time.perf_counter()
        made = synthesize(
            pairs,
            out,
            SynthConfig(engine=EngineConfig(model=tuned["final"], **engine), max_new_tokens=128),
        )
        print(
            f"synthesize, {name}: {made.rows} triplets of 24 pairs in {time.perf_counter() - start:.1f} s"
        )
        triplets[name] = {
            r["pair_id"]: (r["instruction"], r["precise"], r["informative"])
            for r in Dataset(out).iter_rows()
        }
    if "vllm" in engines:
        same = sum(triplets["vllm"].get(k) == v for k, v in triplets["transformers"].items())
        print(f"synthesis: {same} of {len(triplets['transformers'])} triplets identical under vLLM")
    judged = str(work / "triplets-transformers")  # both judges label the same triplets
    for name, engine in engines.items():
        kept, rejected = filter_triplets(
            judged,
            str(work / f"kept-{name}"),
            str(work / f"rejected-{name}"),
            FilterConfig(engine=EngineConfig(model="tiny:lm", **engine)),
        )
        labels[name] = {
            r["id"]: (r["label"], r["score_yes"], r["score_no"], r["score_open"])
            for uri in (str(work / f"kept-{name}"), str(work / f"rejected-{name}"))
            for r in Dataset(uri).iter_rows()
        }
        print(f"filter, {name}: {kept.rows} kept, {rejected.rows} rejected")
    if "vllm" not in engines:
        return
    agree = sum(labels["vllm"][k][0] == v[0] for k, v in labels["transformers"].items())
    drift = max(
        (
            abs(a - b)
            for k, v in labels["transformers"].items()
            for a, b in zip(v[1:], labels["vllm"][k][1:])
        ),
        default=0.0,
    )
    print(
        f"filter: {agree} of {len(labels['transformers'])} labels equal under vLLM,"
        f" largest score difference {drift:.2e}"
    )


def overhead() -> None:
    """The synthesize stage and the judge's batched scoring against the bare engine on the
    same prompts: the transformers engine on CUDA, then vLLM where it is installed."""
    kinds = [["--kind", "transformers", "--device", DEVICE]]
    try:
        import vllm  # noqa: F401

        kinds.append(["--kind", "vllm"])
    except ImportError:
        print("vllm: not installed here, only the transformers engine is measured")
    for kind in kinds:
        for script, extra in (
            ("synth_overhead.py", ["--max-new-tokens", "64", "--repeats", "2"]),
            ("filter_throughput.py", ["--triplets", "64"]),
        ):
            print(f"--- {script} {' '.join(kind)}", flush=True)
            subprocess.run(
                [sys.executable, str(REPO / "benchmarks" / script), *kind, *extra], check=True
            )


def qwen2_vl_zero2(work: Path) -> None:
    import torch

    from adamllm_core.engines import EngineConfig
    from adamllm_core.filtering import FilterConfig
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.models import resolve_model
    from adamllm_core.models.tiny import build_tiny_qwen2_vl
    from adamllm_core.pipeline import AssembleConfig, assemble, filter_triplets, synthesize
    from adamllm_core.synthesis import SynthConfig
    from adamllm_core.training.trainer import preset, train

    # A dry run on CPU trains the tiny LLaVA instead: Qwen2-VL's processor needs torchvision.
    model = (
        build_tiny_qwen2_vl(work / "qwen2-vl")
        if DEVICE == "cuda"
        else Path(resolve_model("tiny:vlm"))
    )
    pairs = str(work / "pairs-train")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="gpu"))
    # The real stages make the mixture: the random synthesizer's few parsed tasks, judged.
    triplets, kept = str(work / "triplets"), str(work / "kept")
    synthesize(
        pairs, triplets, SynthConfig(engine=EngineConfig(model="tiny:vlm"), max_new_tokens=64)
    )
    filter_triplets(
        triplets, kept, str(work / "rejected"), FilterConfig(engine=EngineConfig(model="tiny:lm"))
    )
    mixture = str(work / "mixture")
    manifests = assemble(
        pairs, kept, {"single_stage": mixture}, AssembleConfig(target_model=str(model))
    )
    print(f"mixture: {manifests['single_stage'].rows} conversations for Qwen2-VL")
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29541",
        }
    )
    config = preset(
        "tiny",
        model=str(model),
        deepspeed="zero2",
        bf16=DEVICE == "cuda",
        dataloader_workers=2,
        max_steps=40,
        global_batch_size=8,
        per_device_batch_size=8,
        save_steps=40,
    )
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = train(config, mixture, str(work / "qwen2-vl-zero2"))
    took = time.perf_counter() - start
    metrics = [
        json.loads(line)
        for line in (work / "qwen2-vl-zero2" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [m["loss"] for m in metrics if "loss" in m]
    speeds = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    print(f"40 ZeRO-2 bf16 steps in {took:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"tokens/s (last log): {speeds[-1] if speeds else None}")
    if DEVICE == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
    print(f"summary: { {k: summary[k] for k in list(summary)[:8]} }")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    final = work / "qwen2-vl-zero2" / "final"
    reloaded = AutoModelForImageTextToText.from_pretrained(final).to(DEVICE)
    processor = AutoProcessor.from_pretrained(final)
    from PIL import Image

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        add_generation_prompt=True,
    )
    inputs = processor(
        text=[text], images=[Image.new("RGB", (300, 200), "red")], return_tensors="pt"
    ).to(DEVICE)
    output = reloaded.generate(**inputs, max_new_tokens=12, do_sample=False)
    print(
        "reloaded final/ generates:",
        repr(processor.batch_decode(output[:, inputs["input_ids"].shape[1] :])[0]),
    )


def proving_models(seed: int, budget_s: float) -> None:
    if budget_s < 60:
        print(f"skipped: {budget_s:.0f} s left before the deadline")
        return
    code = (
        "import json, time\n"
        "from adamllm_core.proving.experiment import ProveConfig, ensure_base_models, ensure_world\n"
        f"config = ProveConfig.for_scale('ci', {seed})\n"
        "start = time.perf_counter()\n"
        "ensure_world(config, '/tmp/gpu-prove/world')\n"
        "print(f'world: {time.perf_counter() - start:.1f} s', flush=True)\n"
        "start = time.perf_counter()\n"
        "models = ensure_base_models(config, '/tmp/gpu-prove/world')\n"
        "print(f'models: {time.perf_counter() - start:.1f} s')\n"
        "print(json.dumps(models, default=str, indent=1)[:3000])\n"
    )
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=budget_s)
    except subprocess.TimeoutExpired:
        print(f"not finished in {budget_s:.0f} s")


def engine_pool(work: Path) -> None:
    """Synthesize and evaluate on the engine pool: two GPU actors on a local Ray (half a
    card each, so both fit on one GPU) against the same stage in this process."""
    from adamllm_core.dataset import Dataset
    from adamllm_core.engines import EngineConfig
    from adamllm_core.evaluation.run import EvalConfig, predictions_uri
    from adamllm_core.ingest import IngestConfig, ingest
    from adamllm_core.pool import run_on_pool
    from adamllm_core.synthesis import SynthConfig

    try:
        import vllm  # noqa: F401

        engine = {"kind": "vllm", "gpu_memory_utilization": 0.3}
    except ImportError:
        engine = {"kind": "transformers", "device": DEVICE}
    one_engine = EngineConfig(model="tiny:vlm", **engine)
    pooled = one_engine.model_copy(
        update={"data_parallel_size": 2, "gpus_per_engine": 0.5 if DEVICE == "cuda" else 0}
    )
    print(f"engine: {engine}, each actor reserves {pooled.pool_resources()}")
    pairs = str(work / "pairs-pool")
    ingest(str(SAMPLE), pairs, IngestConfig(domain="gpu", rows_per_shard=4))
    reports = []
    runs = {}
    for name, config in (("one process", one_engine), ("pool", pooled)):
        start = time.perf_counter()
        runs[name] = run_on_pool(
            "synthesize",
            [pairs, str(work / f"triplets-{name.replace(' ', '-')}")],
            SynthConfig(engine=config, max_new_tokens=64),
            report=reports.append,
        )
        print(f"synthesize, {name}: {time.perf_counter() - start:.1f} s")
    print(
        f"synthesize: fingerprints equal: {runs['pool'].fingerprint == runs['one process'].fingerprint}"
    )
    print(f"pool: {reports[-1].as_dict()}")
    reports.clear()
    fingerprints = {}
    for name, config in (("one process", one_engine), ("pool", pooled)):
        eval_config = EvalConfig(
            benchmark="vqa_rad",
            data=str(REPO / "samples" / "eval_demo" / "vqa_rad"),
            engine=config,
            max_new_tokens=8,
            rows_per_shard=5,
        )
        out = str(work / f"eval-{name.replace(' ', '-')}")
        run_on_pool("evaluate", [out], eval_config, report=reports.append)
        fingerprints[name] = Dataset(predictions_uri(eval_config, out)).manifest.fingerprint
    print(f"evaluate: fingerprints equal: {fingerprints['pool'] == fingerprints['one process']}")
    print(f"pool: {reports[-1].as_dict()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deadline-s", type=float, default=420.0)
    parser.add_argument("--prove-seed", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="*", help="section numbers to run (default: all)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        os.environ["ADAMLLM_TINY_MODELS"] = str(work / "tiny-models")
        sections = [
            ("environment", environment),
            ("engines: CUDA against CPU", engines, work),
            ("Qwen2-VL, DeepSpeed ZeRO-2, bf16, streamed", qwen2_vl_zero2, work),
            ("stages: vLLM against transformers", stages_vllm_against_transformers, work),
            ("stage and judge overhead over the bare engine", overhead),
            ("engine pool: two actors on this GPU against one process", engine_pool, work),
        ]
        for number, (title, run, *inputs) in enumerate(sections):
            if args.only is None or str(number) in args.only:
                section(title, run, *inputs)
        if args.only is None or str(len(sections)) in args.only:
            left = args.deadline_s - (time.monotonic() - began)
            section("proving ground models on this GPU", proving_models, args.prove_seed, left)


if __name__ == "__main__":
    main()
