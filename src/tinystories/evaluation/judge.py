"""The paper's LLM-as-judge evaluation against any OpenAI-compatible endpoint.

Eldan & Li (2023, §3) give the judge a story beginning and the student's completion after a `***` marker,
ask for a free-form assessment (grammar, consistency with the beginning, whether the sentence split by
`***` is completed), then, in a second turn, for grades in grammar, creativity, consistency and plot,
and a guess of the student's age group (A: 3 or under ... F: 13-16). We keep both turns (or one combined
request with `judge_single_turn=True`, whose free-text answer carries the assessment). The grading turn asks
for structured output (`response_format` json_schema, the five fields of `GRADES_SCHEMA`); a server that
rejects it (HTTP 400/422) gets the fixed line format instead, for the rest of the run (`judge_json=False`:
lines always). Answers are parsed defensively: JSON of the schema, else the free-text parser; an answer that
lacks a grade or has one out of range is counted as malformed (with the reason and the raw text kept), a
request that still fails after the retries is counted as failed; neither stops the run.

Requests go through `openai.AsyncOpenAI` with at most `judge_concurrency` in flight, retried by the shared
policy of `tinystories.core.openai_client` (timeouts, dropped connections, 408/409/425/429/5xx, malformed
bodies; exponential backoff with jitter, honouring `Retry-After`). Per category, `mean` is the mean over the
graded completions and `ci95` a Student-t 95% interval over prompts: the completions of one prompt form a
cluster (they share the beginning, so they are not independent), and the interval is mean ± t(G−1)·SE over
the G prompts with the cluster-robust SE, which is exactly the t-interval over the per-prompt means when every
prompt has as many graded completions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from scipy import stats
from tqdm.auto import tqdm

from tinystories.core import ConfigError, openai_client
from tinystories.core.arguments import ArgumentGroup, check_min, check_positive
from tinystories.core.openai_client import RequestFailed, RetryPolicy

logger = logging.getLogger(__name__)

CATEGORIES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
SEPARATOR = "***"

ASSESSMENT_PROMPT = (
    "In the following exercise, the student is given a beginning of a story. The student needs to complete it "
    "into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks "
    "the separator between the prescribed beginning and the student's completion:\n\n"
    "{story}\n\n"
    "Please provide your general assessment about the part written by the student (the one after the *** "
    "symbol). Is it grammatically correct? Is it consistent with the beginning of the story? Pay special "
    "attention to whether the student manages to complete the sentence which is split in the middle by the "
    "separator ***."
)
GRADING_TASK = (
    "Now, grade the student's completion in terms of grammar, creativity, consistency with the story's beginning "
    "and whether the plot makes sense. Moreover, please provide your best guess of what the age of the student "
    "might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. "
    "C: 6-7. D: 8-9. E: 10-12. F: 13-16.\n\n"
)
GRADING_PROMPT = GRADING_TASK + (
    "Answer with exactly these five lines, each grade an integer from 1 to 10:\n"
    "Grammar: <grade>\nCreativity: <grade>\nConsistency: <grade>\nPlot: <grade>\nAge group: <letter A-F>"
)
GRADING_PROMPT_JSON = GRADING_TASK + (
    'Answer with a JSON object: {"grammar": <grade>, "creativity": <grade>, "consistency": <grade>, '
    '"plot": <grade>, "age_group": "<letter A-F>"}, each grade an integer from 1 to 10.'
)
GRADES_SCHEMA = {  # integer enums rather than minimum/maximum: every structured-output backend takes them
    "type": "object",
    "properties": {
        **{c: {"type": "integer", "enum": list(range(1, 11))} for c in CATEGORIES},
        "age_group": {"type": "string", "enum": list(AGE_GROUPS)},
    },
    "required": [*CATEGORIES, "age_group"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "grades", "strict": True, "schema": GRADES_SCHEMA},
}
REJECTED_FORMAT_STATUS = (400, 422)  # a server without structured output refuses the request
SINGLE_TURN_SUFFIX = "\n\nFirst give your assessment in a few sentences. Then:\n" + GRADING_PROMPT


def story_with_separator(prompt: str, completion: str) -> str:
    """The beginning and the student's completion joined by the `***` marker, exactly as the paper shows it."""
    return f"{prompt}{SEPARATOR}{completion}"


def assessment_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": ASSESSMENT_PROMPT.format(story=story_with_separator(prompt, completion))}
    ]


def grading_messages(
    prompt: str, completion: str, assessment: str, json_format: bool = False
) -> list[dict[str, str]]:
    return [
        *assessment_messages(prompt, completion),
        {"role": "assistant", "content": assessment},
        {"role": "user", "content": GRADING_PROMPT_JSON if json_format else GRADING_PROMPT},
    ]


def single_turn_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    content = ASSESSMENT_PROMPT.format(story=story_with_separator(prompt, completion)) + SINGLE_TURN_SUFFIX
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------------------- parsing

_NUM = r"(\d+(?:\.\d+)?)"
# Text between a category name and its grade, which must not run into another category's name.
_GAP = r"(?:(?!grammar|creativity|consistency|plot|age\b)[^\n\d]){{0,{n}}}?"
_LINE_SCORE = {
    c: re.compile(
        rf"^[\s>*_#\-•\d.)]*{c}\b{_GAP.format(n=60)}{_NUM}(?:\s*(?:/|out of)\s*(\d+))?", re.I | re.M
    )
    for c in CATEGORIES
}
_LOOSE_SCORE = {
    c: re.compile(rf"\b{c}\b{_GAP.format(n=40)}{_NUM}(?:\s*(?:/|out of)\s*(\d+))?", re.I) for c in CATEGORIES
}
_AGE_LETTER = re.compile(
    r"\bage(?:[\s_-]*group)?\b[^\nA-Za-z0-9]{0,20}(?:group\s+)?\(?\b([A-Fa-f])\b(?![\w'-])", re.I
)
_AGE_RANGE = re.compile(r"\bage(?:[\s_-]*group)?\b[^\n\d]{0,30}?(3 or under|\d{1,2}\s*[-–]\s*\d{1,2})", re.I)


@dataclass
class ParsedGrades:
    scores: dict[str, float]
    age_group: str | None
    ok: bool
    reason: str | None = None


def _from_json(text: str) -> dict[str, Any] | None:
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    return {str(k).lower().replace(" ", "_"): v for k, v in data.items()} if isinstance(data, dict) else None


def _range_to_letter(value: str) -> str | None:
    value = re.sub(r"\s+", "", value.replace("–", "-")).lower()
    for letter, span in AGE_GROUPS.items():
        if value == span.replace(" ", "").lower():
            return letter
    return None


def parse_json_grades(answer: str | None) -> ParsedGrades | None:
    """Grades from an answer that is exactly a `GRADES_SCHEMA` object; None for anything else (then the
    free-text parser `parse_grades` reads it)."""
    try:
        data = json.loads(answer or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {*CATEGORIES, "age_group"}:
        return None
    scores = {c: data[c] for c in CATEGORIES}
    valid = all(type(v) is int and 1 <= v <= 10 for v in scores.values())
    if not valid or data["age_group"] not in AGE_GROUPS:
        return None
    return ParsedGrades({c: float(v) for c, v in scores.items()}, data["age_group"], True)


def parse_grades(answer: str | None) -> ParsedGrades:
    """Grades 1-10 for each category and an age group A-F from a judge answer; never raises.

    Accepts the requested line format and common variants (`**Grammar:** 8/10`, `- Plot - 7`, `Age group: B
    (4-5)`, `Age: 4-5`, a JSON object). Any missing or out-of-range field makes the answer malformed.
    """
    if not isinstance(answer, str) or not answer.strip():
        return ParsedGrades({}, None, False, "empty answer")
    scores: dict[str, float] = {}
    problems = []
    data = _from_json(answer)
    for cat in CATEGORIES:
        value = None
        if data and isinstance(data.get(cat), int | float | str):
            try:
                value = float(data[cat])
            except ValueError:
                value = None
        if value is None:
            match = _LINE_SCORE[cat].search(answer) or _LOOSE_SCORE[cat].search(answer)
            if match:
                value = float(match.group(1))
                scale = match.group(2)
                if scale and float(scale) not in (10.0,):
                    problems.append(f"{cat} on a /{scale} scale")
                    continue
        if value is None:
            problems.append(f"no {cat} grade")
        elif not 1 <= value <= 10:
            problems.append(f"{cat} grade {value:g} outside 1-10")
        else:
            scores[cat] = value
    age = None
    if data:
        raw_age = data.get("age_group", data.get("age"))
        if isinstance(raw_age, str):
            age = (
                raw_age.strip().upper()[:1]
                if raw_age.strip()[:1].upper() in AGE_GROUPS
                else _range_to_letter(raw_age)
            )
    if age is None:
        match = _AGE_LETTER.search(answer)
        if match:
            age = match.group(1).upper()
        else:
            match = _AGE_RANGE.search(answer)
            age = _range_to_letter(match.group(1)) if match else None
    if age is None:
        problems.append("no age group A-F")
    return ParsedGrades(scores, age, not problems, "; ".join(problems) or None)


# --------------------------------------------------------------------------------------- statistics


def mean_ci(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std and a Student-t confidence interval (None below two values)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def clustered_mean_ci(values: list[float], clusters: list[Any], confidence: float = 0.95) -> dict[str, Any]:
    """`mean_ci` with the interval over clusters (a prompt's completions): mean ± t(G−1)·SE over G clusters.

    `mean` and `std` stay those of all values; SE = sqrt(G/(G−1) · Σ_g (Σ_{i∈g} (y_i − mean))²) / N is the
    cluster-robust standard error, equal to std(cluster means)/sqrt(G) when the clusters are equally large.
    """
    out = mean_ci(values, confidence)
    groups: dict[Any, list[float]] = {}
    for value, cluster in zip(values, clusters, strict=True):
        groups.setdefault(cluster, []).append(value)
    g = out["n_prompts"] = len(groups)
    if g < 2:
        out["ci95"] = None
        return out
    mean = out["mean"]
    se = math.sqrt(g / (g - 1) * sum(sum(v - mean for v in vs) ** 2 for vs in groups.values())) / len(values)
    half = stats.t.ppf(0.5 + confidence / 2, g - 1) * se
    out["ci95"] = [mean - half, mean + half]
    return out


def aggregate(graded: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, per-category means with CIs over prompts, age-group counts, means per prompt category."""
    ok = [g for g in graded if g["status"] == "ok"]
    status = Counter(g["status"] for g in graded)
    reasons = Counter(g.get("reason") for g in graded if g["status"] == "malformed")
    prompts = [g.get("prompt_id") or g.get("prompt") for g in ok]  # the cluster of each graded completion
    scores = {c: clustered_mean_ci([g["scores"][c] for g in ok], prompts) for c in CATEGORIES}
    ages = Counter(g["age_group"] for g in ok)
    by_category: dict[str, dict[str, float]] = {}
    for cat in sorted({g.get("category") for g in ok if g.get("category")}):
        group = [g for g in ok if g.get("category") == cat]
        by_category[cat] = {c: statistics.fmean(g["scores"][c] for g in group) for c in CATEGORIES}
        by_category[cat]["n"] = len(group)
    return {
        "num_completions": len(graded),
        "num_prompts": len(set(prompts)),
        "graded": status.get("ok", 0),
        "json_answers": sum(g.get("grades_format") == "json" for g in ok),
        "malformed": status.get("malformed", 0),
        "failed": status.get("failed", 0),
        "malformed_reasons": dict(reasons.most_common(10)),
        "scores": scores,
        "age_groups": {k: ages.get(k, 0) for k in AGE_GROUPS},
        "by_prompt_category": by_category,
    }


# --------------------------------------------------------------------------------------- requests


@dataclass
class JudgeArguments(ArgumentGroup):
    """The `--judge_*` flags of `tinystories eval` (and the `llm_judge` metric's settings)."""

    judge_base_url: str | None = field(
        default=None, metadata={"help": "e.g. https://api.openai.com/v1 or a vLLM server"}
    )
    judge_model: str | None = field(default=None, metadata={"help": "judge model name on that endpoint"})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "environment variable holding the key"}
    )
    judge_concurrency: int = field(default=8, metadata={"help": "requests in flight"})
    judge_max_retries: int = field(default=4, metadata={"help": "retries per request (exponential backoff)"})
    judge_timeout: float = field(default=120.0, metadata={"help": "seconds per request"})
    judge_max_tokens: int = field(default=400, metadata={"help": "tokens per judge answer"})
    judge_temperature: float = field(default=0.0, metadata={"help": "judge sampling temperature"})
    judge_single_turn: bool = field(
        default=False, metadata={"help": "one request per completion instead of the paper's two turns"}
    )
    judge_backoff: float = field(
        default=1.0, metadata={"help": "seconds before the first retry; doubled per retry, jittered"}
    )
    judge_json: bool = field(
        default=True,
        metadata={
            "help": "ask for the grades as JSON (response_format json_schema); lines where the server refuses it"
        },
    )

    def check(self):
        check_min("judge_concurrency", self.judge_concurrency, 1)
        check_min("judge_max_retries", self.judge_max_retries, 0)
        check_positive("judge_timeout", self.judge_timeout, "pass a positive number of seconds")
        check_min("judge_max_tokens", self.judge_max_tokens, 1)
        check_min("judge_temperature", self.judge_temperature, 0, "pass 0 (greedy) or a positive temperature")
        check_min("judge_backoff", self.judge_backoff, 0)

    @property
    def enabled(self) -> bool:
        """Whether a judge was asked for (a URL or a model given)."""
        return bool(self.judge_base_url or self.judge_model)

    def api_key(self) -> str:
        """The key from the environment; local servers (localhost, 127.0.0.1) need none."""
        if not self.judge_base_url or not self.judge_model:
            raise ConfigError("the judge needs both --judge_base_url and --judge_model")
        key = os.environ.get(self.judge_api_key_env)
        if key:
            return key
        host = urlsplit(self.judge_base_url).hostname or ""
        if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
            return "EMPTY"
        raise ConfigError(
            f"no API key for the judge at {public_url(self.judge_base_url)}: export {self.judge_api_key_env}=... "
            "(or name another variable with --judge_api_key_env)"
        )

    def validate(self) -> None:
        """Fail before any model is loaded: a half-given endpoint, a missing key (the numbers: `check`).

        A judge that is off (neither --judge_base_url nor --judge_model) has nothing to check.
        """
        if not self.enabled:
            return
        self.api_key()  # also: both --judge_base_url and --judge_model

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.judge_max_retries, backoff_base=self.judge_backoff, timeout=self.judge_timeout
        )


def public_url(url: str | None) -> str | None:
    """The URL without credentials or query string (safe to write into results)."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def _chat(
    client,
    messages: list[dict[str, str]],
    args: JudgeArguments,
    policy: RetryPolicy,
    label: str,
    response_format: dict[str, Any] | None = None,
) -> str:
    extra = {"response_format": response_format} if response_format else {}

    async def once() -> str:
        response = await client.chat.completions.create(
            model=args.judge_model,
            messages=messages,
            temperature=args.judge_temperature,
            max_tokens=args.judge_max_tokens,
            **extra,
        )
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    return await policy.call(once, label)


async def _ask_grades(client, row, assessment: str, args, policy, label: str, structured: dict) -> str:
    """The grading turn: JSON of `GRADES_SCHEMA` while the server takes `response_format`, else lines.

    A 400/422 answer to the JSON request followed by a successful line request means the server has no
    structured output: `structured["json"]` turns off for the rest of the run (one log line).
    """
    prompt, completion = row["prompt"], row["completion"]
    lines = grading_messages(prompt, completion, assessment)
    if structured["json"]:
        messages = grading_messages(prompt, completion, assessment, json_format=True)
        try:
            return await _chat(client, messages, args, policy, label, RESPONSE_FORMAT)
        except RequestFailed as err:
            if err.status_code not in REJECTED_FORMAT_STATUS:
                raise
            answer = await _chat(client, lines, args, policy, label)
            if structured["json"]:
                structured["json"] = False
                logger.info(
                    "the judge server refused response_format (HTTP %s): asking for lines", err.status_code
                )
            return answer
    return await _chat(client, lines, args, policy, label)


async def _grade_one(
    client, row: dict[str, Any], args: JudgeArguments, policy: RetryPolicy, structured: dict
) -> dict[str, Any]:
    out = {k: row.get(k) for k in ("id", "prompt_id", "category", "prompt", "completion")}
    prompt, completion, label = row["prompt"], row["completion"], f"judge row {row.get('id')}"
    try:
        if args.judge_single_turn:
            assessment = None
            answer = await _chat(client, single_turn_messages(prompt, completion), args, policy, label)
        else:
            assessment = await _chat(client, assessment_messages(prompt, completion), args, policy, label)
            answer = await _ask_grades(client, row, assessment, args, policy, label, structured)
    except RequestFailed as err:
        return {**out, "status": "failed", "error": str(err), "scores": {}, "age_group": None}
    parsed = parse_json_grades(answer)
    grades_format = "json" if parsed else "text"
    parsed = parsed or parse_grades(answer)
    return {
        **out,
        "status": "ok" if parsed.ok else "malformed",
        "reason": parsed.reason,
        "scores": parsed.scores,
        "age_group": parsed.age_group,
        "grades_format": grades_format,
        "assessment": assessment,
        "answer": answer,
    }


async def grade_async(
    rows: list[dict[str, Any]], args: JudgeArguments, progress: bool = True
) -> list[dict[str, Any]]:
    """Grade every row (`prompt`, `completion`), at most `judge_concurrency` requests at a time, in order."""
    client = openai_client.client(args.judge_base_url, args.api_key(), args.judge_timeout)
    policy = args.retry_policy()
    structured = {"json": args.judge_json}  # shared by every request of the run
    semaphore = asyncio.Semaphore(args.judge_concurrency)
    bar = tqdm(total=len(rows), desc=f"judging with {args.judge_model}", unit="story", disable=not progress)

    async def one(row):
        async with semaphore:
            result = await _grade_one(client, row, args, policy, structured)
        bar.update(1)
        return result

    try:
        return await asyncio.gather(*(one(r) for r in rows))
    finally:
        bar.close()
        await client.close()


def run_judge(rows: list[dict[str, Any]], judge_args: JudgeArguments, progress: bool = True):
    """Grade `rows` and return (per-row results, summary for eval_results.json)."""
    judge_args.validate()
    start = time.perf_counter()
    graded = asyncio.run(grade_async(rows, judge_args, progress))
    summary = {
        "model": judge_args.judge_model,
        "base_url": public_url(judge_args.judge_base_url),
        "scheme": "single-turn" if judge_args.judge_single_turn else "two-turn",
        "temperature": judge_args.judge_temperature,
        **aggregate(graded),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return graded, summary
