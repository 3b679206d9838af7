"""Hugging Face side of the engines: chat-template rendering and the transformers engine.

The vLLM engine renders with the same `HFRenderer`, so both see identical prompts.
"""

import hashlib
import io
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from adamllm_core.engines.base import (
    ChatRequest,
    ChatResult,
    Engine,
    ImageResolution,
    Message,
    RequestRejected,
    SamplingConfig,
    truncate_at_stop,
)
from adamllm_core.hashing import file_sha256, sha256_hex
from adamllm_core.models import quiet_transformers
from adamllm_core.storage import listing_fingerprint

# Written beside a model by its trainer; they do not change what the model computes.
NOT_THE_MODEL = {"training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt"}


def model_identity(model: str, revision: str | None) -> str:
    """What a model computes with, independent of where it lies: a local checkpoint is the
    hash of its files' content (config, weights, tokenizer; not its path, names of copies or
    modification times), a hub id its commit (the revision when it is one, else the commit
    the local Hugging Face cache resolved the revision to, else the revision's name)."""
    if Path(model).is_dir():
        return f"local:{checkpoint_hash(Path(model).resolve())}"
    return f"{model}@{_hub_commit(model, revision or 'main')}"


def checkpoint_hash(folder: Path) -> str:
    """sha256 over the checkpoint's files (relative name and content), memoised on disk by
    their names, sizes and times so that a 16 GB checkpoint is read once, not per stage."""
    memo = Path(
        os.environ.get("ADAMLLM_CHECKPOINT_HASHES", "~/.cache/adamllm/checkpoint-hashes")
    ).expanduser() / sha256_hex(f"{folder}\0{listing_fingerprint(str(folder))}".encode())
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.name in NOT_THE_MODEL or path.name.startswith(".") or "/." in relative:
            continue
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    value = digest.hexdigest()[:32]
    memo.parent.mkdir(parents=True, exist_ok=True)
    staging = memo.with_name(f".{memo.name}.{os.getpid()}")
    staging.write_text(value)
    staging.replace(memo)
    return value


def _hub_commit(model: str, revision: str) -> str:
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover (transformers depends on it)
        return revision
    ref = Path(HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else revision


def hf_messages(messages: tuple[Message, ...], *, parts: bool = False) -> list[dict[str, Any]]:
    """Messages as a chat template takes them. `parts`: every content a list of typed
    parts, as vision-language processors' templates expect (some, like the released
    AdaptLLM synthesizer's, render nothing of a string content); else a text-only turn's
    content is its string, as text-only templates index it."""
    converted = []
    for message in messages:
        if message.images or parts:
            content: Any = [{"type": "image"}] * message.images + [
                {"type": "text", "text": message.content}
            ]
        else:
            content = message.content
        converted.append({"role": message.role, "content": content})
    return converted


def decode_images(request: ChatRequest) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]


class SizedTokenCounter:
    """The tokens `processor(text=[text], images=...)` makes for images of given (width,
    height), without pixels: the text's tokens, each image placeholder replaced by as many
    tokens as the processor's own resize rule gives that size (its
    `_get_num_multimodal_tokens`, which vLLM counts with too; remembered per size).

    `available` only when the rule exists and agrees with the processor run on pixels for
    a few probe sizes (a processor that adds tokens around each image, such as Gemma 3's,
    does not): else, and for a size the rule fails on, count with the pixels."""

    PROBE_SIZES = ((64, 64), (640, 480), (90, 700))

    def __init__(self, processor: Any, probe_text: str):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.placeholder = getattr(processor, "image_token_id", None)
        self._rule = getattr(processor, "_get_num_multimodal_tokens", None)
        self._per_size: dict[tuple[int, int], int | None] = {}
        self.available = None not in (self.tokenizer, self.placeholder, self._rule) and all(
            self(probe_text, [size]) == self.on_pixels(probe_text, self._probe(size))
            for size in self.PROBE_SIZES
        )

    @staticmethod
    def _probe(size: tuple[int, int]) -> Any:
        from PIL import Image

        return Image.new("RGB", size, (128, 128, 128))

    def on_pixels(self, text: str, image: Any) -> int:
        """The count the slow way: the processor run on the text and the image."""
        return len(self.processor(text=[text], images=[image])["input_ids"][0])

    def placeholders(self, text: str) -> int:
        return self.tokenizer(text)["input_ids"].count(self.placeholder)

    def image_tokens(self, width: int, height: int) -> int | None:
        if (width, height) not in self._per_size:
            try:
                counted = self._rule(image_sizes=[[height, width]]).num_image_tokens
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                counted = None  # transformers marks this API as vLLM's: it may change
            self._per_size[width, height] = counted[0] if counted else None
        return self._per_size[width, height]

    def __call__(self, text: str, image_sizes: list[tuple[int, int]]) -> int | None:
        """None when the text's placeholders are not one per image (a caption that holds
        the image token) or the rule fails for a size."""
        ids = self.tokenizer(text)["input_ids"]  # as the processor tokenizes: special tokens
        if ids.count(self.placeholder) != len(image_sizes):
            return None
        per_image = [self.image_tokens(width, height) for width, height in image_sizes]
        if None in per_image:
            return None
        return len(ids) - len(image_sizes) + sum(per_image)  # type: ignore[arg-type]


class HFRenderer:
    """The model's own processor or tokenizer, loaded from its id or path."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        trust_remote_code: bool = False,
        resolution: ImageResolution | None = None,
    ):
        self.model = model
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.resolution = resolution or ImageResolution()

    @cached_property
    def config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            self.model, revision=self.revision, trust_remote_code=self.trust_remote_code
        )

    @property
    def multimodal(self) -> bool:
        return getattr(self.config, "vision_config", None) is not None

    @cached_property
    def processor(self) -> Any:
        """AutoProcessor for vision-language models, else the tokenizer."""
        from transformers import AutoProcessor, AutoTokenizer

        kwargs = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        loaded = (
            AutoProcessor.from_pretrained(self.model, **kwargs)
            if self.multimodal
            else AutoTokenizer.from_pretrained(self.model, **kwargs)
        )
        if self.multimodal:
            self.resolution.apply(loaded)
        tokenizer = getattr(loaded, "tokenizer", loaded)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return loaded

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def render(self, request: ChatRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        if any(m.images for m in request.messages or ()) and not self.multimodal:
            raise ValueError(f"{self.model} is a text-only model; this request has images")
        return self.chat_text(
            request.messages or (),
            add_generation_prompt=not request.continue_final_message,
            continue_final_message=request.continue_final_message,
        )

    def chat_text(self, messages: tuple[Message, ...] | list[Message], **kwargs: Any) -> str:
        """Messages rendered with the model's chat template (`kwargs` to apply_chat_template)."""
        return self.processor.apply_chat_template(
            hf_messages(tuple(messages), parts=self.multimodal), tokenize=False, **kwargs
        )

    @cached_property
    def leading_special_ids(self) -> list[int]:
        """What the tokenizer puts before a text by default (Llama's BOS; nothing for Qwen)."""
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x")["input_ids"]
        return full[: len(full) - len(plain)] if full[len(full) - len(plain) :] == plain else []

    def choice_token_positions(self, prompt: str, choice: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt+choice, and the positions of the tokens that start in the
        choice. A raw prompt gets the tokenizer's default leading tokens (BOS), as vLLM and
        the official judge give it, unless its text already starts with them."""
        encoded = self.tokenizer(
            prompt + choice, add_special_tokens=False, return_offsets_mapping=True
        )
        lead = self.leading_special_ids
        if lead and encoded["input_ids"][: len(lead)] == lead:
            lead = []
        ids = lead + encoded["input_ids"]
        positions = [
            i + len(lead)
            for i, (start, _) in enumerate(encoded["offset_mapping"])
            if start >= len(prompt) and i + len(lead) > 0
        ]
        return ids, positions


class HFEngine(Engine):
    """An engine that renders prompts with the model's own Hugging Face processor."""

    def __init__(
        self,
        model: str,
        revision: str | None,
        trust_remote_code: bool,
        resolution: ImageResolution | None = None,
    ):
        self.renderer = HFRenderer(model, revision, trust_remote_code, resolution)
        self.model_name = model
        self.revision = revision

    @cached_property
    def model_identity(self) -> str:
        return model_identity(self.model_name, self.revision)

    @cached_property
    def results_identity(self) -> str:
        if not self.renderer.multimodal:
            return self.model_identity
        return f"{self.model_identity} pixels {self.renderer.resolution.bounds()}"

    def render(self, request: ChatRequest) -> str:
        return self.renderer.render(request)

    def score_choices(
        self,
        requests: list[ChatRequest],
        logprob_sums: Callable[[list[tuple[list[int], list[int]]]], list[float]],
    ) -> list[ChatResult]:
        """Every choice of every request scored in one call of `logprob_sums` over all
        (ids, positions) sequences: the log-probability of the tokens at `positions`. The
        engine batches them (the choices share their request's prompt as a prefix)."""
        sequences = [
            self.renderer.choice_token_positions(request.prompt or "", choice)
            for request in requests
            for choice in request.choices or ()
        ]
        sums = iter(logprob_sums(sequences)) if sequences else iter(())
        encoded = iter(sequences)
        results = []
        for request in requests:
            scores: dict[str, float] = {}
            prompt_tokens = 0
            for choice in request.choices or ():
                ids, positions = next(encoded)
                total = next(sums)
                scores[choice] = float(total) if positions else float("-inf")
                prompt_tokens = len(ids) - len(positions)
            results.append(
                ChatResult(
                    text=max(scores, key=scores.get),
                    prompt_tokens=prompt_tokens,
                    finish_reason="scored",
                    choice_scores=scores,
                )
            )
        return results


class TransformersEngine(HFEngine):
    """Batched `generate` with transformers, on CPU or GPU."""

    kind = "transformers"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
        resolution: ImageResolution | None = None,
    ):
        super().__init__(model, revision, trust_remote_code, resolution)
        self.device_name = device
        self.dtype = dtype
        self.batch_size = batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

            device = self.device_name
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            auto = AutoModelForImageTextToText if self.renderer.multimodal else AutoModelForCausalLM
            dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
            quiet_transformers()
            self._model = (
                auto.from_pretrained(
                    self.model_name,
                    revision=self.revision,
                    dtype=dtype,
                    trust_remote_code=self.renderer.trust_remote_code,
                    use_safetensors=True,  # never unpickle weights
                )
                .to(device)
                .eval()
            )
        return self._model

    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        scoring = [i for i, r in enumerate(requests) if r.choices is not None]
        if scoring:
            scored = self.score_choices([requests[i] for i in scoring], self._logprob_sums)
            for i, result in zip(scoring, scored, strict=True):
                results[i] = result
        groups: dict[SamplingConfig, list[int]] = {}
        for i, request in enumerate(requests):
            if request.choices is None:
                groups.setdefault(request.sampling, []).append(i)
        for sampling, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for i, result in zip(batch, self._generate([requests[i] for i in batch], sampling)):
                    results[i] = result
        return [r for r in results if r is not None]

    def _inputs(self, texts: list[str], images: list[Image.Image]) -> Any:
        if self.renderer.multimodal:
            return self.renderer.processor(
                text=texts,
                images=images or None,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
        return self.renderer.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        )

    def _generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[ChatResult]:
        import torch
        from transformers import GenerationConfig

        model = self._load()
        tokenizer = self.renderer.tokenizer
        texts = [self.render(r) for r in requests]
        images = [image for r in requests for image in decode_images(r)]
        try:
            inputs = self._inputs(texts, images)
        except Exception as error:  # noqa: BLE001 (processors raise many types on bad input)
            raise RequestRejected("processor_error", f"{type(error).__name__}: {error}") from None
        longest = int(inputs["attention_mask"].sum(dim=1).max())
        context = self.context_length()
        if context is not None and longest + sampling.max_new_tokens > context:
            raise RequestRejected(
                "prompt_too_long",
                f"{longest} prompt tokens + max_new_tokens {sampling.max_new_tokens} >"
                f" the model's context {context}",
            )
        inputs = inputs.to(model.device)
        eos = None if sampling.ignore_eos else tokenizer.eos_token_id
        if eos is None:
            # Unset, generate() falls back to the model's end-of-turn token: end only at a
            # single-token stop string, or (none) at an id the model never produces.
            vocab = tokenizer.get_vocab()  # a fresh dict per call (150k entries for Llama-3): once
            stop_ids = [tokenizer.convert_tokens_to_ids(s) for s in sampling.stop if s in vocab]
            end_ids: Any = stop_ids or [len(tokenizer) + 1]
        else:
            end_ids = eos
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature if sampling.temperature > 0 else None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_ids,
            stop_strings=list(sampling.stop) or None,
        )
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)
        prompt_length = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, sequence in enumerate(output[:, prompt_length:].tolist()):
            ids = [t for t in sequence if t != tokenizer.pad_token_id or t == eos]
            finish = "length"
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos) + 1]
                finish = "stop"
            completion_tokens = len(ids)
            if eos is not None and ids and ids[-1] == eos:
                ids = ids[:-1]
            text = tokenizer.decode(ids, skip_special_tokens=sampling.skip_special_tokens)
            text, stopped = truncate_at_stop(text, sampling.stop)
            results.append(
                ChatResult(
                    text=text,
                    prompt_tokens=int(prompt_tokens[row]),
                    completion_tokens=completion_tokens,
                    finish_reason="stop" if stopped else finish,
                )
            )
        return results

    def context_length(self) -> int | None:
        """The model's maximum sequence length (positions), if its config states one."""
        config = self.renderer.config
        config = getattr(config, "text_config", None) or config
        return getattr(config, "max_position_embeddings", None)

    def _logprob_sums(self, sequences: list[tuple[list[int], list[int]]]) -> list[float]:
        """One forward over each distinct prefix (a request's prompt, shared by its choices:
        ~2,100 tokens for the paper's judge) and a short one per choice on its cache."""
        import torch

        context = self.context_length()
        longest = max(len(ids) for ids, _ in sequences)
        if context is not None and longest > context:
            raise RequestRejected(
                "prompt_too_long", f"{longest} tokens with a choice > the model's context {context}"
            )
        model = self._load()
        sums = [float("-inf")] * len(sequences)
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for k, (ids, positions) in enumerate(sequences):
            if positions:
                by_prefix.setdefault(tuple(ids[: positions[0]]), []).append(k)
        for prefix, members in by_prefix.items():
            # a cache only when a choice has tokens after its first (labels are one token)
            longer = any(len(sequences[k][0]) - len(prefix) > 1 for k in members)
            with torch.inference_mode():
                out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=longer)
                first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                cache = out.past_key_values
                for k in members:
                    ids, positions = sequences[k]
                    choice = ids[len(prefix) :]
                    total = float(first[choice[0]])
                    if len(choice) > 1:
                        tail = model(
                            input_ids=torch.tensor([choice[:-1]], device=model.device),
                            past_key_values=cache,
                            use_cache=True,
                        )
                        logprobs = torch.log_softmax(tail.logits[0].float(), dim=-1)
                        total += float(
                            sum(logprobs[j, choice[j + 1]] for j in range(len(choice) - 1))
                        )
                        cache.crop(
                            -(len(choice) - 1)
                        )  # back to the prompt alone, for the next choice
                    sums[k] = total
        return sums
