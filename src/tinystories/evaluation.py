"""`tinystories eval`: held-out loss, perplexity and bits per byte; story completions; the LLM judge.

    tinystories eval --model outputs/tinystories-8M --data roneneldan/TinyStories
    tinystories eval --model roneneldan/TinyStories-1M roneneldan/TinyStories-33M --max_samples 2000
    tinystories eval --model outputs/tinystories-8M --judge_base_url http://localhost:8000/v1 \\
        --judge_model Qwen/Qwen2.5-72B-Instruct            # key from $OPENAI_API_KEY (--judge_api_key_env)

Loss is computed per story, not on packed blocks: each story is tokenized, the end-of-text token is
prepended as context (the models saw it before every story) and appended as a target, and every target
token is scored once within the model's trained context (512 tokens for the released checkpoints, whose
stored 2048 position embeddings were never trained); longer stories are scored in overlapping windows.
The token NLLs are summed over the whole split, so the loss is token-weighted; bits per byte divides the
same sum by ln 2 × the UTF-8 bytes of the stories, which makes models with different tokenizers comparable.

Each model's `eval_results.json` lands in its own folder (for a Hub id: `outputs/eval/<org>__<name>/`),
with `completions.jsonl` (story beginnings from `data_generation/eval_prompts.jsonl`, the completions and
the sampling parameters) and, when a judge ran, `judge_results.jsonl`. The model card of a folder trained
with these recipes is re-rendered with the new numbers. Several `--model` values give one comparison table
(`outputs/eval/comparison.md` / `.json`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tinystories.config import TRAINED_CONTEXT, ConfigError, parse_args
from tinystories.metrics import bits_per_byte, perplexity

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "data_generation" / "eval_prompts.jsonl"


@dataclass
class EvalArguments:
    # ----- models and data
    model: list[str] = field(
        default_factory=lambda: ["roneneldan/TinyStories-33M"],
        metadata={"help": "one or more Hub ids or local model dirs (repeat --model or list several)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision for every --model"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer (default: the model's own)"})
    data: str = field(
        default="roneneldan/TinyStories",
        metadata={"help": "Hub dataset id or local .txt/.jsonl/.json/.parquet/save_to_disk dir"},
    )
    split: str = field(default="validation", metadata={"help": "split to evaluate on"})
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "held-out fraction for local files without a validation split (as in training)"},
    )
    seed: int = field(default=42, metadata={"help": "seed of the held-out split and of sampling"})
    text_column: str = field(default="text", metadata={"help": "text column of the data"})
    max_samples: int | None = field(default=None, metadata={"help": "evaluate on the first N stories only"})
    # ----- loss
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per window (default min(max_position_embeddings, 512))"}
    )
    stride: int | None = field(
        default=None, metadata={"help": "new tokens per window for long stories (default max_length // 2)"}
    )
    batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(
        default="float32", metadata={"help": "float32, bfloat16 or float16 for the forward pass"}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, flex or eager"})
    skip_loss: bool = field(default=False, metadata={"help": "skip the held-out loss"})
    # ----- completions
    prompts: str = field(
        default=str(DEFAULT_PROMPTS), metadata={"help": "JSONL of story beginnings (field `prompt`)"}
    )
    generate: bool = field(default=True, metadata={"help": "complete the evaluation prompts"})
    num_prompts: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    num_completions: int = field(default=1, metadata={"help": "completions per prompt (the paper used 10)"})
    max_new_tokens: int = field(
        default=200, metadata={"help": "tokens per completion (capped by the context)"}
    )
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling"})
    top_k: int | None = field(default=None, metadata={"help": "top-k sampling (None = off)"})
    # ----- LLM judge (any OpenAI-compatible endpoint)
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
    # ----- outputs
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "where eval_results.json goes (default: the model dir / outputs/eval/<org>__<name>)"
        },
    )
    comparison_dir: str = field(default="outputs/eval", metadata={"help": "where the comparison table goes"})
    write_card: bool = field(
        default=True, metadata={"help": "re-render the model card of a trained model dir"}
    )


# --------------------------------------------------------------------------------------- scoring


def _windows(seq: list[int], max_length: int, stride: int) -> list[tuple[list[int], int]]:
    """Split `seq` into (window, first scored position) so that every target seq[1:] is scored exactly once.

    A target at window position k is predicted from the window's tokens before k; a window after the first
    keeps `max_length - stride` tokens of context from the previous one.
    """
    if len(seq) <= max_length:
        return [(seq, 1)]
    out, start, scored_to = [], 0, 1  # targets [1, scored_to) are done
    while scored_to < len(seq):
        end = min(start + max_length, len(seq))
        out.append((seq[start:end], scored_to - start))
        scored_to = end
        start = end - (max_length - stride)
    return out


def score_texts(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int = 16,
    stride: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Summed NLL (nats) of every text, each scored on its own with EOS as context before it and target after.

    Returns totals plus per-text `nll` and `tokens` lists (used by the `bits_per_byte` metric module).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos_token: pass a --tokenizer with <|endoftext|>")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    stride = stride or max(1, max_length // 2)
    if not 0 < stride <= max_length - 1:
        raise ConfigError(f"stride must be in [1, max_length - 1 = {max_length - 1}], got {stride}")
    vocab = model.get_input_embeddings().num_embeddings

    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    windows: list[tuple[int, list[int], int]] = []  # (text index, ids, first scored position)
    for i, ids in enumerate(encoded):
        seq = [bos, *ids, eos]
        if max(seq) >= vocab:
            raise ConfigError(
                f"token id {max(seq)} >= the model's vocabulary {vocab}: pass the model's own --tokenizer"
            )
        windows += [(i, w, first) for w, first in _windows(seq, max_length, stride)]
    order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))  # similar lengths share a batch

    device = next(model.parameters()).device
    nll = [0.0] * len(texts)
    ntok = [0] * len(texts)
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress, mininterval=2):
            width = max(len(windows[j][1]) for j in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            attn = torch.zeros(len(batch), width, dtype=torch.long)
            scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)  # scored[b, k-1]: target at k
            for b, j in enumerate(batch):
                _, w, first = windows[j]
                ids[b, : len(w)] = torch.tensor(w)
                attn[b, : len(w)] = 1
                scored[b, first - 1 : len(w) - 1] = True
            ids, attn, scored = ids.to(device), attn.to(device), scored.to(device)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            token_nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
            ).view(len(batch), -1)
            sums = (token_nll * scored).sum(dim=1, dtype=torch.float64).tolist()
            counts = scored.sum(dim=1).tolist()
            for b, j in enumerate(batch):
                nll[windows[j][0]] += sums[b]
                ntok[windows[j][0]] += counts[b]
    total_nll, num_tokens = math.fsum(nll), sum(ntok)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = total_nll / num_tokens
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits_per_byte(total_nll, num_bytes),
        "total_nll": total_nll,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "num_stories": len(texts),
        "num_windows": len(windows),
        "nll": nll,
        "tokens": ntok,
    }


# --------------------------------------------------------------------------------------- helpers


def _merge_model_flags(argv: list[str]) -> list[str]:
    """`--model a --model b c` -> `--model a b c` (argparse keeps only the last occurrence)."""
    models, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--model" or argv[i].startswith("--model="):
            if "=" in argv[i]:
                models.append(argv[i].split("=", 1)[1])
                i += 1
            else:
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    models.append(argv[i])
                    i += 1
        else:
            rest.append(argv[i])
            i += 1
    models = [m for value in models for m in value.split()]  # MODEL="a b" from make arrives as one word
    return (["--model", *models] if models else []) + rest


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_output_dir(model: str, output_dir: str | None, multiple: bool) -> Path:
    """The model dir itself, or `outputs/eval/<org>__<name>/` for a Hub id (or under --output_dir)."""
    safe = model.strip("/").replace("/", "__") if not Path(model).is_dir() else Path(model).resolve().name
    if output_dir:
        return Path(output_dir) / safe if multiple else Path(output_dir)
    if Path(model).is_dir():
        return Path(model)
    return Path("outputs") / "eval" / safe


def data_name(data: str) -> str:
    """What eval_results.json records as the data: the Hub id, a path relative to here, or a basename."""
    path = Path(data).expanduser()
    if not path.exists():
        return data
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def load_eval_texts(args: EvalArguments) -> list[str]:
    """The held-out stories: the Hub split as published, or the same held-out fraction training used."""
    from tinystories import data as data_lib

    path = Path(args.data).expanduser()
    if not path.exists() and not data_lib.looks_like_path(args.data):
        import datasets

        try:
            ds = datasets.load_dataset(args.data, split=args.split)
        except Exception as err:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            raise ConfigError(
                f"could not load split {args.split!r} of dataset {args.data!r}{offline}: {type(err).__name__}: {err}. "
                "Pass DATA=<local .txt/.jsonl/.parquet> or a reachable Hub dataset id."
            ) from err
        if args.text_column not in ds.column_names:
            raise ConfigError(
                f"dataset has no {args.text_column!r} column ({ds.column_names}); pass --text_column"
            )
        if args.max_samples:
            ds = ds.select(range(min(args.max_samples, len(ds))))
        texts = ds[args.text_column]
    else:
        splits = data_lib.load_stories(
            args.data,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            text_column=args.text_column,
            max_eval_samples=args.max_samples,
            max_train_samples=args.max_samples,
        )
        if args.split not in splits:
            raise ConfigError(f"split {args.split!r} not available: use one of {list(splits)}")
        texts = splits[args.split][args.text_column]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ConfigError(f"no non-empty stories in split {args.split!r} of {args.data!r}")
    return texts


def load_prompts(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"prompts file {str(path)!r} not found: pass --prompts <jsonl with a `prompt` field>"
        )
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{n} is not valid JSON: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ConfigError(f"{path}:{n} needs a non-empty string field `prompt`")
        row.setdefault("id", f"p{len(prompts):03d}")
        prompts.append(row)
    return prompts[:limit] if limit else prompts


def generate_completions(
    model, tokenizer, prompts: list[dict], args: EvalArguments, model_name: str
) -> list[dict]:
    from tinystories.generate import generate_story

    sampling = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p if args.temperature > 0 else None,
        "top_k": args.top_k if args.temperature > 0 else None,
        "do_sample": args.temperature > 0,
        "num_completions": args.num_completions,
        "seed": args.seed,
    }
    rows = []
    for i, p in enumerate(tqdm(prompts, desc="completing prompts", unit="prompt", mininterval=2)):
        outs = generate_story(
            model,
            tokenizer,
            p["prompt"],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed + i,
            num_return_sequences=args.num_completions,
        )
        outs = outs if isinstance(outs, list) else [outs]
        for k, completion in enumerate(outs):
            rows.append(
                {
                    "id": f"{p['id']}-{k}",
                    "prompt_id": p["id"],
                    "category": p.get("category"),
                    "prompt": p["prompt"],
                    "completion": completion,
                    "model": model_name,
                    "sampling": sampling,
                }
            )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------- main


def judge_config_from(args: EvalArguments):
    if not (args.judge_model or args.judge_base_url):
        return None
    from tinystories.judge import JudgeConfig

    config = JudgeConfig(
        base_url=args.judge_base_url,
        model=args.judge_model,
        api_key_env=args.judge_api_key_env,
        concurrency=args.judge_concurrency,
        max_retries=args.judge_max_retries,
        timeout=args.judge_timeout,
        max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
        two_turn=not args.judge_single_turn,
    )
    config.check()  # a missing key fails here, before any model is loaded
    return config


def evaluate_model(
    name: str,
    texts: list[str] | None,
    prompts: list[dict] | None,
    args: EvalArguments,
    out_dir: Path,
    judge_config=None,
):
    from tinystories.cards import public_name, resolve_hub_id, update_model_card
    from tinystories.modeling import load_model
    from tinystories.tokenizer import load_tokenizer

    device = resolve_device(args.device)
    model = load_model(
        name, attn_implementation=args.attn_implementation, revision=args.revision, dtype=DTYPES[args.dtype]
    )
    model.to(device)
    tokenizer = load_tokenizer(args.tokenizer or name, revision=None if args.tokenizer else args.revision)
    stored = int(getattr(model.config, "max_position_embeddings", TRAINED_CONTEXT) or TRAINED_CONTEXT)
    max_length = args.max_length or min(stored, TRAINED_CONTEXT)
    if max_length > stored:
        raise ConfigError(f"--max_length {max_length} exceeds the model's {stored} position embeddings")

    model_label = resolve_hub_id(name) or public_name(name)
    results: dict[str, Any] = {
        "model": model_label,
        "revision": args.revision,
        "data": data_name(args.data),
        "dataset": data_name(args.data),
        "split": args.split,
        "max_length": max_length,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
    }
    existing = {}
    if (out_dir / "eval_results.json").is_file():
        existing = json.loads((out_dir / "eval_results.json").read_text())
    if texts is not None:
        start = time.perf_counter()
        scores = score_texts(model, tokenizer, texts, max_length, args.batch_size, args.stride)
        scores.pop("nll"), scores.pop("tokens")
        results.update(scores)
        results["eval_seconds"] = round(time.perf_counter() - start, 2)
        logger.info(
            "%s: loss %.4f, bpb %.4f over %d tokens",
            name,
            scores["loss"],
            scores["bits_per_byte"],
            scores["num_tokens"],
        )
    else:  # keep the previous loss numbers when only re-running completions / the judge
        results.update({k: v for k, v in existing.items() if k not in results and k != "judge"})

    if prompts:
        rows = generate_completions(model, tokenizer, prompts, args, model_label)
        _write_jsonl(out_dir / "completions.jsonl", rows)
        results["completions_file"] = "completions.jsonl"
        results["generation"] = rows[0]["sampling"] if rows else {}
        results["samples"] = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows[:3]]
        if judge_config is not None:
            from tinystories.judge import run_judge

            graded, summary = run_judge(rows, judge_config)
            _write_jsonl(out_dir / "judge_results.jsonl", graded)
            summary["results_file"] = "judge_results.jsonl"
            results["judge"] = summary
    elif existing.get("judge"):
        results["judge"] = existing["judge"]

    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    same_dir = Path(name).is_dir() and out_dir.resolve() == Path(name).resolve()
    if args.write_card and same_dir and update_model_card(out_dir):
        logger.info("model card updated: %s", out_dir / "README.md")
    del model
    return results


def comparison_table(rows: list[dict[str, Any]]) -> str:
    cats = []
    for r in rows:
        for c in (r.get("judge") or {}).get("scores", {}):
            if c not in cats:
                cats.append(c)
    head = ["model", "params", "context", "tokens", "loss", "ppl", "bits/byte", *cats]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:

        def num(key, fmt, r=r):
            return format(r[key], fmt) if isinstance(r.get(key), int | float) else "–"

        judge = (r.get("judge") or {}).get("scores", {})
        cells = [
            f"`{r['model']}`",
            f"{r['num_parameters'] / 1e6:.2f}M" if r.get("num_parameters") else "–",
            str(r.get("max_length", "–")),
            num("num_tokens", ","),
            num("loss", ".4f"),
            num("perplexity", ".3f"),
            num("bits_per_byte", ".4f"),
            *[
                f"{judge[c]['mean']:.2f} ± {(judge[c]['ci95'][1] - judge[c]['ci95'][0]) / 2:.2f}"
                if c in judge and judge[c].get("mean") is not None and judge[c].get("ci95")
                else "–"
                for c in cats
            ],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = _merge_model_flags(list(sys.argv[1:] if argv is None else argv))
    (args,) = parse_args([EvalArguments], argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = [m for value in args.model for m in value.split()]
    if not models:
        raise ConfigError("no --model given: pass MODEL=<Hub id or dir> (several separated by spaces)")
    if args.dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {list(DTYPES)}, got {args.dtype!r}")
    if (args.judge_model is None) != (args.judge_base_url is None):
        raise ConfigError("the judge needs both --judge_base_url and --judge_model")
    if args.judge_model and not args.generate:
        raise ConfigError("the judge grades completions: drop --generate false")
    resolve_device(args.device)
    judge_config = judge_config_from(args)
    prompts = load_prompts(args.prompts, args.num_prompts) if args.generate else None
    texts = None if args.skip_loss else load_eval_texts(args)
    if texts is not None:
        print(
            f"evaluating {len(models)} model(s) on {len(texts):,} stories of {data_name(args.data)} [{args.split}]"
        )

    rows = []
    for name in models:
        out_dir = model_output_dir(name, args.output_dir, len(models) > 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = evaluate_model(name, texts, prompts, args, out_dir, judge_config)
        result["eval_results_file"] = str(out_dir / "eval_results.json")
        rows.append(result)

    table = comparison_table(rows)
    print()
    print(table)
    if len(rows) > 1:
        comp = Path(args.comparison_dir)
        comp.mkdir(parents=True, exist_ok=True)
        (comp / "comparison.md").write_text(table + "\n", encoding="utf-8")
        keep = (
            "model",
            "num_parameters",
            "max_length",
            "num_tokens",
            "num_bytes",
            "loss",
            "perplexity",
            "bits_per_byte",
            "judge",
            "data",
            "split",
            "eval_results_file",
        )
        (comp / "comparison.json").write_text(
            json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=2) + "\n"
        )
        print(f"\ncomparison written to {comp / 'comparison.md'}")
    for r in rows:
        print(f"results: {r['eval_results_file']}")
    return 0


__all__ = ["EvalArguments", "comparison_table", "main", "score_texts"]
