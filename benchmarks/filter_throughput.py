"""The consistency judge's scoring: each request's three labels in one pass over the shared
prompt, against one full forward per label (the scorer it replaced, kept here as baseline).

    .venv/bin/python benchmarks/filter_throughput.py [--model tiny:lm] [--triplets 32]
        [--kind transformers|vllm] [--device cpu|cuda]

Both score the same judge requests on the same model in this process (with `--kind vllm`
the baseline is one vLLM generate per prompt + label, prefix caching on as in the engine): the paper's few-shot
template (Figures 6-7, about 2,100 tokens) where the model's context holds it, and the
short one. Prints triplets/s of each, the largest score difference, and `speedup: X.XXx`.
Goal: at least 1.5x on CPU.
"""

import argparse
import time

import torch

from adamllm_core.engines import EngineConfig, make_engine
from adamllm_core.filtering import judge_request


def separately(engine, requests, kind: str) -> list[dict[str, float]]:
    """One engine call per (prompt + label), as the judge scored before: a full forward
    (transformers), or one generate of that sequence alone (raw vLLM)."""
    model = engine._load()
    scores = []
    for request in requests:
        per_label = {}
        for choice in request.choices:
            ids, positions = engine.renderer.choice_token_positions(request.prompt, choice)
            if kind == "vllm":
                per_label[choice] = engine._logprob_sums(model, [(ids, positions)])[0]
                continue
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            per_label[choice] = float(sum(logprobs[p - 1, ids[p]] for p in positions))
        scores.append(per_label)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny:lm")
    parser.add_argument("--triplets", type=int, default=32)
    parser.add_argument("--kind", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--device", default="auto", help="transformers: auto, cpu, cuda")
    args = parser.parse_args()
    options = (
        {"device": args.device} if args.kind == "transformers" else {"gpu_memory_utilization": 0.3}
    )
    engine = make_engine(EngineConfig(kind=args.kind, model=args.model, **options))
    context = engine.context_length()
    worst = None
    for template in ("figures_6_7", "short"):
        requests = [
            judge_request(
                f"Which structure does image {i} show, and in which plane?",
                f"The scan shows the liver in the axial plane; case {i} has a lesion.",
                "Liver, axial",
                template=template,
            )
            for i in range(args.triplets)
        ]
        length = max(
            len(engine.renderer.choice_token_positions(r.prompt, r.choices[0])[0]) for r in requests
        )
        if context is not None and length > context:
            print(f"{template}: {length} tokens > the model's context {context}: skipped")
            continue
        engine.run(requests[:2])  # loads the model; warms both paths
        separately(engine, requests[:2], args.kind)
        started = time.perf_counter()
        baseline = separately(engine, requests, args.kind)
        baseline_s = time.perf_counter() - started
        started = time.perf_counter()
        batched = engine.run(requests)
        batched_s = time.perf_counter() - started
        difference = max(
            abs(result.choice_scores[c] - scores[c])
            for result, scores in zip(batched, baseline, strict=True)
            for c in scores
        )
        same = sum(
            result.text == max(scores, key=scores.get)
            for result, scores in zip(batched, baseline, strict=True)
        )
        speedup = baseline_s / batched_s
        worst = speedup if worst is None else min(worst, speedup)
        print(
            f"{template} ({length} tokens): one forward per label "
            f"{args.triplets / baseline_s:.1f} triplets/s, batched {args.triplets / batched_s:.1f}"
            f" triplets/s; labels equal {same}/{args.triplets}, largest score difference "
            f"{difference:.2e}; speedup: {speedup:.2f}x"
        )
    if worst is not None:
        print(f"speedup: {worst:.2f}x (the smaller of the templates run; goal >= 1.5x)")


if __name__ == "__main__":
    main()
