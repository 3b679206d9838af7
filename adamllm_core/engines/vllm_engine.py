"""In-process vLLM engine (GPU): prompts rendered by the model's own processor, images
passed as `multi_modal_data`, choices scored from `prompt_logprobs`.

Needs the `gpu` extra (`pip install '.[gpu]'`); importing this module does not import vLLM.
"""

from typing import Any

from adamllm_core.engines.base import (
    ChatRequest,
    ChatResult,
    ImageResolution,
    RequestRejected,
    truncate_at_stop,
)
from adamllm_core.engines.hf import HFEngine, decode_images


class VLLMEngine(HFEngine):
    kind = "vllm"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        max_images_per_prompt: int = 1,
        trust_remote_code: bool = False,
        resolution: ImageResolution | None = None,
    ):
        super().__init__(model, revision, trust_remote_code, resolution)
        self.options = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
        }
        self.max_images_per_prompt = max_images_per_prompt
        self._llm: Any = None

    def _load(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as error:
                raise RuntimeError(
                    "the vllm engine needs the gpu extra: pip install '.[gpu]'"
                ) from error
            limit = {"image": self.max_images_per_prompt} if self.renderer.multimodal else None
            # the same pixel bounds as the renderer's processor, where the model takes them
            sized = self.renderer.multimodal and self.renderer.resolution.apply(
                self.renderer.processor
            )
            self._llm = LLM(
                model=self.model_name,
                revision=self.revision,
                limit_mm_per_prompt=limit,
                mm_processor_kwargs=self.renderer.resolution.bounds() if sized else None,
                **{k: v for k, v in self.options.items() if v is not None},
            )
        return self._llm

    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from vllm import SamplingParams

        llm = self._load()
        results: list[ChatResult | None] = [None] * len(requests)
        generate = [i for i, r in enumerate(requests) if r.choices is None]
        prompts = []
        params = []
        for i in generate:
            request = requests[i]
            prompt: dict[str, Any] = {"prompt": self.render(request)}
            if request.images:
                prompt["multi_modal_data"] = {"image": decode_images(request)}
            prompts.append(prompt)
            s = request.sampling
            params.append(
                SamplingParams(
                    max_tokens=s.max_new_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed,
                    stop=list(s.stop) or None,
                    ignore_eos=s.ignore_eos,
                    skip_special_tokens=s.skip_special_tokens,
                )
            )
        if prompts:
            try:
                outputs = llm.generate(prompts, params, use_tqdm=False)
            except ValueError as error:
                # vLLM validates each prompt (its length against max_model_len, its images)
                # before scheduling, and refuses the whole call for one: run_isolating
                # narrows it down to that request.
                raise RequestRejected("engine_refused", str(error)) from None
            for i, output in zip(generate, outputs, strict=True):
                completion = output.outputs[0]
                text, stopped = truncate_at_stop(completion.text, requests[i].sampling.stop)
                results[i] = ChatResult(
                    text=text,
                    prompt_tokens=len(output.prompt_token_ids),
                    completion_tokens=len(completion.token_ids),
                    finish_reason="stop"
                    if stopped or completion.finish_reason == "stop"
                    else "length",
                )
        for i, request in enumerate(requests):
            if request.choices is not None:
                results[i] = self._score(llm, request)
        return [r for r in results if r is not None]

    def _score(self, llm: Any, request: ChatRequest) -> ChatResult:
        from vllm import SamplingParams, TokensPrompt

        def logprob_sum(ids: list[int], positions: list[int]) -> float:
            output = llm.generate(
                [TokensPrompt(prompt_token_ids=ids)],
                SamplingParams(max_tokens=1, prompt_logprobs=0),
                use_tqdm=False,
            )[0]
            return sum(output.prompt_logprobs[p][ids[p]].logprob for p in positions)

        return self.score_choices(request, logprob_sum)
