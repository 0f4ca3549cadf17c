"""Generation backends: an OpenAI-compatible server, local `transformers`, vLLM's offline engine, and an
offline `template` composer for tests and the CPU quickstart.

Async backends (`openai`) expose `async complete(request)`; batch backends (`transformers`, `vllm`,
`template`) expose `complete_batch(requests)`. Both return `Completion`s or raise / return
`GenerationFailure`, which carries the error the job records in its side dataset of failures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoTokenizer, set_seed

from tinystories.core import ConfigError, openai_client
from tinystories.core.openai_client import MalformedResponse, RequestFailed, RetryPolicy
from tinystories.core.runtime import resolve_device
from tinystories.data.wordforms import split_sentences
from tinystories.models.loading import load_model
from tinystories.synthesis.cleaning import (
    strip_preamble,
)
from tinystories.synthesis.prompts import PromptSpec, record_rng

TEMPLATE_MODEL = "template-composer (offline, not an LLM)"


@dataclass
class Request:
    prompt: str
    kind: str  # "story" or "summary"
    spec: PromptSpec
    story: str | None = None  # the story being summarised (kind == "summary")


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None  # "length": cut off at max_new_tokens
    usage: dict[str, int] = field(default_factory=dict)
    preamble: str | None = None  # what `clean_completion` cut from the start (a chat preamble, a title)
    # what `cleaning.screen_story` cut: "loop: ...", "second_story: ..."
    cuts: list[str] = field(default_factory=list)
    from_model: bool = True  # False: a corpus story (`--source_data`), kept as written, never screened


# A request that failed for good (after retries, or with a non-retryable error): the job records its
# error, error_type, attempts and status_code. One error type for every backend and the judge.
GenerationFailure = RequestFailed


@dataclass
class SamplingConfig:
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    extra_body: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "seed": self.seed,
                "extra_body": self.extra_body,
                "system_prompt": self.system_prompt,
            },
            sort_keys=True,
        )


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]


def cleaned(text: str, finish_reason: str | None = None, usage: dict[str, int] | None = None) -> Completion:
    """A completion with its chat preamble cut (`cleaning.strip_preamble`; what was cut is kept)."""
    kept, preamble = strip_preamble(text)
    return Completion(kept, finish_reason, usage or {}, preamble)


# ------------------------------------------------------------------------------------------ openai
class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, TGI, `transformers serve`, OpenAI) via the `openai` client.

    Bounded concurrency is the job's worker count; this class adds a total per-request timeout and
    retries with exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections /
    malformed bodies (honouring `Retry-After`). 4xx other than 408/409/425/429 fail at once.
    """

    name = "openai"
    is_async = True

    def __init__(
        self,
        model: str,
        sampling: SamplingConfig,
        base_url: str | None = None,
        api_key: str | None = None,
        api: str = "chat",
        request_timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ):
        if api not in ("chat", "completions"):
            raise ConfigError(f"api must be 'chat' or 'completions', got {api!r}")
        self.model = model
        self.sampling = sampling
        self.api = api
        self.request_timeout = request_timeout
        self.retry = RetryPolicy(
            max_retries, backoff_base, backoff_max, request_timeout, random.Random(sampling.seed)
        )
        # retries are ours (to record attempts and honour the job's policy), so the client's are off
        self.client = openai_client.client(base_url, api_key, request_timeout)

    async def _once(self, request: Request) -> Completion:
        s = self.sampling
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
        }
        if s.top_p != 1.0:
            common["top_p"] = s.top_p
        if s.extra_body:
            common["extra_body"] = s.extra_body
        if self.api == "chat":
            response = await self.client.chat.completions.create(
                messages=_messages(request.prompt, s.system_prompt), **common
            )
        else:
            response = await self.client.completions.create(prompt=request.prompt, **common)
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedResponse(f"response has no choices: {str(response)[:200]!r}")
        choice = choices[0]
        text = choice.message.content if self.api == "chat" else choice.text
        if not isinstance(text, str) or not text.strip():
            raise MalformedResponse(
                f"empty completion (finish_reason={getattr(choice, 'finish_reason', None)})"
            )
        usage = getattr(response, "usage", None)
        usage_dict = {}
        if usage is not None:
            usage_dict = {
                k: int(getattr(usage, k) or 0)
                for k in ("prompt_tokens", "completion_tokens")
                if hasattr(usage, k)
            }
        return cleaned(text, getattr(choice, "finish_reason", None), usage_dict)

    async def complete(self, request: Request) -> Completion:
        return await self.retry.call(lambda: self._once(request), request.spec.id)

    async def aclose(self) -> None:
        await self.client.close()


# ------------------------------------------------------------------------------------ transformers
class TransformersBackend:
    """Local batched generation with `transformers` (any causal LM; chat template when it has one)."""

    name = "transformers"
    is_async = False

    def __init__(self, model: str, sampling: SamplingConfig, api: str = "chat", device: str | None = None):
        self.model_name = model
        self.model = model
        self.sampling = sampling
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.use_chat = api == "chat" and getattr(self.tokenizer, "chat_template", None) is not None
        self.device = device or str(resolve_device("auto"))
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.lm = load_model(model, dtype=dtype).to(self.device).eval()
        # --extra_body: more `generate` arguments here (repetition_penalty, no_repeat_ngram_size, top_k, stop_strings)
        self.generate_kwargs = dict(sampling.extra_body)
        if "stop_strings" in self.generate_kwargs:
            self.generate_kwargs["tokenizer"] = self.tokenizer

    def _encode(self, prompt: str) -> str:
        if self.use_chat:
            return self.tokenizer.apply_chat_template(
                _messages(prompt, self.sampling.system_prompt), tokenize=False, add_generation_prompt=True
            )
        return prompt

    def complete_batch(self, requests: list[Request]) -> list[Completion | GenerationFailure]:
        s = self.sampling
        set_seed(s.seed + requests[0].spec.index)  # reproducible for a given batch composition
        texts = [self._encode(r.prompt) for r in requests]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat)
        batch = batch.to(self.device)
        try:
            with torch.inference_mode():
                out = self.lm.generate(
                    **batch,
                    max_new_tokens=s.max_new_tokens,
                    do_sample=s.temperature > 0,
                    temperature=s.temperature if s.temperature > 0 else None,
                    top_p=s.top_p if s.temperature > 0 else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **self.generate_kwargs,
                )
        except Exception as err:  # e.g. CUDA OOM: every request of the batch is recorded as failed
            failure = GenerationFailure(f"{type(err).__name__}: {err}"[:2000], type(err).__name__)
            return [failure for _ in requests]
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        results: list[Completion | GenerationFailure] = []
        for row in new_tokens:
            n = int((row != self.tokenizer.pad_token_id).sum())
            finish = "length" if n >= s.max_new_tokens else "stop"
            answer = cleaned(
                self.tokenizer.decode(row, skip_special_tokens=True), finish, {"completion_tokens": n}
            )
            if answer.text:
                results.append(answer)
            else:
                results.append(GenerationFailure("MalformedResponse: empty completion", "MalformedResponse"))
        return results


# -------------------------------------------------------------------------------------------- vllm
class VLLMBackend:
    """vLLM's offline engine (`pip install vllm`; imported only when this backend is chosen)."""

    name = "vllm"
    is_async = False

    def __init__(self, model: str, sampling: SamplingConfig, api: str = "chat", **engine_kwargs: Any):
        try:
            from vllm import LLM, SamplingParams  # optional: only this backend needs it
        except ImportError as err:
            raise ConfigError(
                "backend 'vllm' needs vLLM: `pip install vllm` on a GPU machine (or `pip install .[vllm]`), "
                "or serve the model with `vllm serve` and use --backend openai --base_url http://host:8000/v1"
            ) from err
        self.model = model
        self.sampling = sampling
        self.api = api
        self._params_class = SamplingParams
        self.llm = LLM(model=model, seed=sampling.seed, **engine_kwargs)

    def _params(self, request: Request):
        s = self.sampling
        # a per-request seed makes each record reproducible whatever batch it lands in
        seed = (s.seed * 1_000_003 + request.spec.index * 2 + (request.kind == "summary")) % (2**31)
        return self._params_class(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=seed
        )

    def complete_batch(self, requests: list[Request]) -> list[Completion | GenerationFailure]:
        params = [self._params(r) for r in requests]
        try:
            if self.api == "chat":
                conversations = [_messages(r.prompt, self.sampling.system_prompt) for r in requests]
                outputs = self.llm.chat(conversations, params, use_tqdm=False)
            else:
                outputs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        except Exception as err:
            failure = GenerationFailure(f"{type(err).__name__}: {err}"[:2000], type(err).__name__)
            return [failure for _ in requests]
        results: list[Completion | GenerationFailure] = []
        for out in outputs:
            choice = out.outputs[0]
            usage = {
                "prompt_tokens": len(out.prompt_token_ids or []),
                "completion_tokens": len(choice.token_ids),
            }
            answer = cleaned(choice.text, choice.finish_reason, usage)
            if answer.text:
                results.append(answer)
            else:
                results.append(GenerationFailure("MalformedResponse: empty completion", "MalformedResponse"))
        return results


# ---------------------------------------------------------------------------------------- template
_NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Tim", "Lucy", "Sam", "Zoe", "Jack"]
_PLACES = ["park", "garden", "forest", "beach", "farm", "big house", "small town", "yard"]
_FRIENDS = ["dog", "cat", "bird", "bunny", "frog", "duck", "bear", "mouse"]
_MORALS = [
    "It is good to share with friends.",
    "Being kind makes everyone happy.",
    "It is important to say sorry.",
    "Helping others is always a good thing.",
    "It is good to listen to mom.",
]


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


class TemplateBackend:
    """Composes simple stories from the same words and features, without any model.

    For tests and the offline CPU quickstart only: every record it makes says `backend: template`
    and `model: "template-composer (offline, not an LLM)"`, so it can never pass for LLM data.
    """

    name = "template"
    is_async = False
    model = TEMPLATE_MODEL

    def __init__(self, sampling: SamplingConfig | None = None):
        self.sampling = sampling or SamplingConfig()

    def story(self, spec: PromptSpec) -> str:
        rng = record_rng(spec.seed, spec.index, "template-story")
        name, friend, place = rng.choice(_NAMES), rng.choice(_FRIENDS), rng.choice(_PLACES)
        verb, noun, adj = spec.verb, spec.noun, spec.adjective
        feats = set(spec.features)
        p1 = [
            f"{rng.choice(['Once upon a time', 'One day', 'Long ago'])}, there was a little "
            f"{rng.choice(['girl', 'boy'])} named {name}.",
            f"{name} lived near a {place} and had a {rng.choice(['small', 'happy', 'fluffy'])} {friend}.",
            f"Every day, {name} liked to {verb} with the {friend}.",
        ]
        if "Foreshadowing" in feats:
            p1.append(
                f'Mom said, "Be careful with the {noun} today."'
                if "Dialogue" in feats
                else f"Mom told {name} to be careful with the {noun} today."
            )
        p2 = [f"One morning, {name} found {_a(adj)} {noun} in the {place}."]
        if "Dialogue" in feats:
            p2.append(f'"Look at this {noun}!" said {name}. "Can we {verb} with it?"')
            p2.append(f'The {friend} said, "Yes, let\'s {verb}!"')
        else:
            p2.append(f"{name} was very happy and wanted to {verb} with it.")
        if "Conflict" in feats:
            p2.append(f"But the {friend} wanted the {noun} too, and they started to fight.")
        p3 = []
        if "Twist" in feats:
            p3.append(
                f"Then something strange happened. The {noun} began to {rng.choice(['glow', 'sing', 'move'])}!"
            )
        if "BadEnding" in feats:
            p3.append(f"The {noun} broke into many pieces, and {name} was very sad. The {friend} went home.")
        else:
            p3.append(f"In the end, {name} and the {friend} played with the {adj} {noun} all day.")
        if "MoralValue" in feats:
            p3.append(rng.choice(_MORALS))
        if "Foreshadowing" in feats:
            p3.append(f"{name} remembered what mom said about the {noun}.")
        return "\n\n".join(" ".join(p) for p in (p1, p2, p3))

    def summary(self, spec: PromptSpec, story: str) -> str:
        first = split_sentences(story)[0] if story else ""
        name = next((n for n in _NAMES if n in first), "A child")
        end = "but it ends badly" if "BadEnding" in spec.features else "and plays with it"
        return f"{name} finds {_a(spec.adjective)} {spec.noun} {end}."

    def complete_batch(self, requests: list[Request]) -> list[Completion | GenerationFailure]:
        results: list[Completion | GenerationFailure] = []
        for r in requests:
            text = self.story(r.spec) if r.kind == "story" else self.summary(r.spec, r.story or "")
            results.append(Completion(text, "stop", {"completion_tokens": len(text.split())}))
        return results


def build_backend(
    backend: str,
    model: str | None,
    sampling: SamplingConfig,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    api: str = "chat",
    request_timeout: float = 120.0,
    max_retries: int = 5,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    vllm_kwargs: dict[str, Any] | None = None,
):
    if backend == "template":
        return TemplateBackend(sampling)
    if not model:
        raise ConfigError(f"backend {backend!r} needs --model (a served model name, Hub id or local dir)")
    if backend == "openai":
        return OpenAIBackend(
            model, sampling, base_url, api_key, api, request_timeout, max_retries, backoff_base, backoff_max
        )
    if backend == "transformers":
        return TransformersBackend(model, sampling, api)
    if backend == "vllm":
        return VLLMBackend(model, sampling, api, **(vllm_kwargs or {}))
    raise ConfigError(f"unknown backend {backend!r}: choose openai, transformers, vllm or template")
