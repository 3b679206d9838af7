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
            # the judge's choices share their ~2,100-token prompt: computed once per request
            "enable_prefix_caching": True,
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
        scoring = [i for i, r in enumerate(requests) if r.choices is not None]
        if scoring:
            scored = self.score_choices(
                [requests[i] for i in scoring], lambda sequences: self._logprob_sums(llm, sequences)
            )
            for i, result in zip(scoring, scored, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _logprob_sums(self, llm: Any, sequences: list[tuple[list[int], list[int]]]) -> list[float]:
        """Every choice of the batch in one generate call; with prefix caching on, the
        prompt the choices share is computed once."""
        from vllm import SamplingParams, TokensPrompt

        try:
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids, _ in sequences],
                SamplingParams(max_tokens=1, prompt_logprobs=0),
                use_tqdm=False,
            )
        except ValueError as error:  # one sequence over max_model_len: narrowed down by the caller
            raise RequestRejected("engine_refused", str(error)) from None
        return [
            sum(output.prompt_logprobs[p][ids[p]].logprob for p in positions)
            for output, (ids, positions) in zip(outputs, sequences, strict=True)
        ]
