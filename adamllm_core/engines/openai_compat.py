"""Engine for any OpenAI-compatible server (`vllm serve`, TGI, ...).

Bounded concurrency, retries with exponential backoff on transport errors, 429 and 5xx,
and a timeout per request. vLLM's extra parameters (continue_final_message, ignore_eos,
skip_special_tokens, echo with logprobs) carry the features the method needs.
"""

import asyncio
import base64
import threading
from functools import cached_property
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from adamllm_core.engines.base import (
    ChatRequest,
    ChatResult,
    Engine,
    EngineError,
    RequestRejected,
    truncate_at_stop,
)
from adamllm_core.hashing import canonical_json
from adamllm_core.storage import redact

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EngineRequestError(RequestRejected):
    """The server refused one request (4xx other than 429): its row is quarantined."""


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in RETRY_STATUS
    return isinstance(error, httpx.TransportError)


def _mime(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        revision: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
    ):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.revision = revision
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    @cached_property
    def model_identity(self) -> str:
        """The model as the server reports it (vLLM names the checkpoint it loaded, `root`)
        and the revision the config states; not where it is served."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = httpx.get(f"{self.base_url}/v1/models", headers=headers, timeout=30)
        except httpx.TransportError as error:
            raise EngineError(f"{redact(self.base_url)}: cannot list its models: {error}") from None
        served = f"{self.model}@{self.revision or 'served'}"
        if response.status_code in (404, 405, 501):  # a server without a model listing
            return served
        response.raise_for_status()
        listed = {m.get("id"): m for m in response.json().get("data", [])}
        if self.model not in listed:
            raise EngineError(
                f"{redact(self.base_url)} does not serve {self.model!r}"
                f" (it serves: {', '.join(sorted(map(str, listed))) or 'nothing'})"
            )
        root = listed[self.model].get("root")
        return f"{served} root={root}" if root and root != self.model else served

    def render(self, request: ChatRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return canonical_json(
            {
                "messages": [m.model_dump() for m in request.messages or ()],
                "continue": request.continue_final_message,
            }
        )

    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_all(requests))
        # Called from inside an event loop (an async flow): run ours on a thread of its own.
        box: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: box.update(out=asyncio.run(self._run_all(requests)))
        )
        thread.start()
        thread.join()
        return box["out"]

    async def _run_all(self, requests: list[ChatRequest]) -> list[ChatResult]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self.timeout_s, limits=limits
        ) as client:

            async def one(request: ChatRequest) -> ChatResult:
                async with semaphore:
                    try:
                        return await self._one(client, request)
                    except RequestRejected as error:  # this request alone; the others go on
                        return error.result()

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _post(
        self, client: httpx.AsyncClient, path: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.max_retries),
            wait=wait_exponential(multiplier=0.5, max=20),
            reraise=True,
        ):
            with attempt:
                response = await client.post(path, json=payload)
                if response.status_code >= 400 and response.status_code not in RETRY_STATUS:
                    raise EngineRequestError(
                        "request_refused",
                        f"{redact(self.base_url)}{path} answered {response.status_code}: {response.text[:500]}",
                    )
                response.raise_for_status()
                return response.json()
        raise AssertionError("unreachable")

    def _sampling(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "skip_special_tokens": s.skip_special_tokens,
            "ignore_eos": s.ignore_eos,
        }
        if s.stop:
            payload["stop"] = list(s.stop)
        return payload

    async def _one(self, client: httpx.AsyncClient, request: ChatRequest) -> ChatResult:
        if request.choices is not None:
            return await self._score(client, request)
        if request.prompt is not None:
            body = await self._post(
                client, "/v1/completions", {**self._sampling(request), "prompt": request.prompt}
            )
            text = body["choices"][0]["text"]
        else:
            body = await self._post(
                client,
                "/v1/chat/completions",
                {
                    **self._sampling(request),
                    "messages": self._messages(request),
                    "continue_final_message": request.continue_final_message,
                    "add_generation_prompt": not request.continue_final_message,
                },
            )
            text = body["choices"][0]["message"]["content"] or ""
        text, stopped = truncate_at_stop(text, request.sampling.stop)
        finish = body["choices"][0].get("finish_reason")
        usage = body.get("usage") or {}
        return ChatResult(
            text=text,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            finish_reason="stop" if stopped or finish == "stop" else "length",
        )

    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        images = iter(request.images)
        messages = []
        for message in request.messages or ():
            if not message.images:
                messages.append({"role": message.role, "content": message.content})
                continue
            parts: list[dict[str, Any]] = []
            for _ in range(message.images):
                data = next(images)
                url = f"data:{_mime(data)};base64,{base64.b64encode(data).decode()}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            parts.append({"type": "text", "text": message.content})
            messages.append({"role": message.role, "content": parts})
        return messages

    async def _score(self, client: httpx.AsyncClient, request: ChatRequest) -> ChatResult:
        prompt = request.prompt or ""
        scores: dict[str, float] = {}
        prompt_tokens = 0
        for choice in request.choices or ():
            full = prompt + choice
            body = await self._post(
                client,
                "/v1/completions",
                {
                    "model": self.model,
                    "prompt": full,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "echo": True,
                    "logprobs": 0,
                },
            )
            logprobs = body["choices"][0]["logprobs"]
            picked = [
                lp
                for offset, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"])
                if len(prompt) <= offset < len(full) and lp is not None
            ]
            scores[choice] = float(sum(picked)) if picked else float("-inf")
            prompt_tokens = (body.get("usage") or {}).get("prompt_tokens", 0) - len(picked)
        return ChatResult(
            text=max(scores, key=scores.get),
            prompt_tokens=prompt_tokens,
            finish_reason="scored",
            choice_scores=scores,
        )
