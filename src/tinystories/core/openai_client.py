"""One retry policy for every OpenAI-compatible endpoint we call (story synthesis and the LLM judge).

`client()` builds an `openai.AsyncOpenAI` with the library's own retries off; `RetryPolicy.call` then runs
one request with a total per-attempt timeout and retries it with exponential backoff and jitter (capped at
`backoff_max`, and at least the server's `Retry-After`) on timeouts, dropped connections, 408 / 409 / 425 /
429 / 5xx and malformed bodies. Other 4xx fail at once. A request that fails for good raises
`RequestFailed`, which carries the error text, its type, the attempts made and the HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import openai

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
T = TypeVar("T")


class RequestFailed(Exception):
    """A request that failed for good (after retries, or with a non-retryable error)."""

    def __init__(self, error: str, error_type: str, attempts: int = 1, status_code: int | None = None):
        super().__init__(error)
        self.error = error
        self.error_type = error_type
        self.attempts = attempts
        self.status_code = status_code


class MalformedResponse(Exception):
    """The server answered 200 but the body is not a usable completion."""


def client(base_url: str | None, api_key: str | None, timeout: float) -> openai.AsyncOpenAI:
    """An async client whose own retries are off: `RetryPolicy` retries (and counts the attempts)."""
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)


def _retry_after(err: openai.APIStatusError) -> float | None:
    header = err.response.headers.get("retry-after") if err.response is not None else None
    if not header:
        return None
    try:
        return float(header)
    except ValueError:
        return None


def classify(err: BaseException) -> tuple[bool, int | None, float | None]:
    """(retryable, HTTP status, Retry-After seconds) for an exception from one attempt."""
    if isinstance(err, asyncio.TimeoutError | openai.APITimeoutError):
        return True, None, None
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        return status in RETRYABLE_STATUS or status >= 500, status, _retry_after(err)
    if isinstance(err, openai.APIConnectionError | MalformedResponse | openai.APIResponseValidationError):
        return True, None, None
    if isinstance(err, json.JSONDecodeError | ValueError | AttributeError | TypeError):
        return True, None, None  # a body the client could not turn into a completion
    return False, None, None


@dataclass
class RetryPolicy:
    max_retries: int = 5
    backoff_base: float = 1.0  # seconds before the first retry; doubled per retry, jittered
    backoff_max: float = 60.0
    timeout: float | None = 120.0  # total seconds for one attempt
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay *= 0.5 + self.rng.random()  # jitter: concurrent workers do not retry in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def call(self, make_request: Callable[[], Awaitable[T]], label: str = "request") -> T:
        """Await `make_request()` (a fresh coroutine per attempt) until it succeeds or fails for good."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await asyncio.wait_for(make_request(), timeout=self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                retryable, status, retry_after = classify(err)
                if not retryable or attempt > self.max_retries:
                    kind = type(err).__name__
                    message = str(err) or kind
                    raise RequestFailed(f"{kind}: {message}"[:2000], kind, attempt, status) from err
                delay = self.delay(attempt, retry_after)
                logger.debug("attempt %d for %s failed (%s); retrying in %.2fs", attempt, label, err, delay)
                await asyncio.sleep(delay)


__all__ = ["RETRYABLE_STATUS", "MalformedResponse", "RequestFailed", "RetryPolicy", "classify", "client"]
