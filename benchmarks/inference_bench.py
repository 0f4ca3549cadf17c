"""Inference suite (`make bench ARGS="--suite inference"`): batch-1 greedy generation on the CPU, four ways.

Per model, in one process and one run, from the same prompt (a real story beginning) for the same number of
new tokens, greedy, EOS ignored so every path makes all of them:

* **torch eager**: the model as `transformers` runs it (eager attention; GPT-Neo's `gelu_new`), `model.generate`;
* **torch fast**: the same weights with the project's attention (`use_fast_attention`: SDPA; the one-kernel GELU),
  as `load_model` gives it to every stage, `model.generate`;
* **torch fast loop**: the same model in a plain loop (forward with a `DynamicCache`, argmax), the loop the ONNX
  paths run: the gap to `torch fast` is `generate`'s own per-token work (logits processors, stopping criteria);
* **onnx web fp32**: `tinystories export`'s transformers.js graph (`onnx/model.onnx`, a cache that grows by a
  concatenation each step) through ONNX Runtime's CPU provider, fed as transformers.js feeds it (`OnnxCausalLM`);
* **onnx fp32** / **onnx int8**: the export's generation graph (`onnx/generation.onnx`,
  `onnx/generation_quantized.onnx`: contrib-op kernels, a preallocated cache bound in place) through
  `open_generator`, what `tinystories generate --runtime onnx` runs.

Tokens/s counts the new tokens over the whole call (prompt included); first-token latency is prompt forward +
the first token (`generate` is timed with a streamer); tokens per CPU-second divide by the process's CPU time
(all threads), which a machine shared with other jobs disturbs less than the wall clock. Each number is the median of
`--inference_repeats` runs after one short warm-up; ratios are against torch eager in the same run. torch and
ONNX Runtime get the same number of threads. The models are `build_config` shapes with random weights (speed does
not depend on training; a released size name or `<hidden>x<layers>`), plus released checkpoints found in the HF
cache (none: skipped) or the dirs given by `--inference_models`. `same_tokens` says whether a path produced
exactly torch eager's tokens: fp32 must; int8 may pick another token where a model's top logits nearly tie (random
weights do that all the time; trained models rarely).

`--inference_architectures gpt_neo,llama` adds each shape's Llama twin (`build_config(architecture="llama")`);
`--llama2c_model` + `--llama2c_tokenizer` a llama2.c checkpoint (its imported twin); `--llama2c_run` a **run.c** row
on every Llama model (`benchmarks.inference_peers`: the prompt rule, how it is timed and compared).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoTokenizer, DynamicCache, GenerationConfig, GPTNeoForCausalLM, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from benchmarks.inference_peers import (
    LLAMA_CPP,
    RUNC,
    check_peer_flags,
    llama_cpp_engine,
    llama_cpp_missing,
    runc_files,
    runc_row,
)
from tinystories.core import ConfigError
from tinystories.data.llama2c_tokenizer import SPECIALS, load_llama2c_tokenizer
from tinystories.models.attention import use_fast_attention, use_fast_gelu
from tinystories.models.export.layout import FP32_FILE, export_model
from tinystories.models.export.session import (
    GENERATION_FILE,
    GENERATION_INT8_FILE,
    OnnxCausalLM,
    open_generator,
)
from tinystories.models.llama2c import read_checkpoint, to_transformers
from tinystories.models.loading import context_limit, install_attention, load_model
from tinystories.models.sizes import ARCHITECTURES, SIZES, build_config

PATHS = ("torch eager", "torch fast", "torch fast loop", "onnx web fp32", "onnx fp32", "onnx int8")
PROMPT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "friends. One day, she saw a big red ball under a tree."
)
DEFAULT_SIZES = "1M,8M"


def parse_shapes(text: str) -> list[tuple[str, dict]]:
    """`1M,8M` (released sizes) or `64x2` (hidden x layers) -> [(label, build_config kwargs)]."""
    shapes = []
    for item in [s.strip() for s in (DEFAULT_SIZES if text == "auto" else text).split(",") if s.strip()]:
        if item == "none":
            continue
        if item in SIZES:
            shapes.append((item, {"size": item}))
            continue
        hidden, _, layers = item.partition("x")
        if not (hidden.isdigit() and layers.isdigit()):
            raise ConfigError(
                f"unknown --inference_sizes entry {item!r}: a released size ({', '.join(SIZES)}) or <hidden>x<layers>"
            )
        shapes.append((item, {"hidden_size": int(hidden), "num_layers": int(layers), "num_heads": 4}))
    return shapes


def cached_checkpoints(shapes: list[tuple[str, dict]]) -> list[str]:
    """Released checkpoints of the benchmarked sizes that are in the HF cache (never downloads)."""
    found = []
    for label, _ in shapes:
        if label in SIZES:
            config = try_to_load_from_cache(SIZES[label].hub_id, "config.json")
            if isinstance(config, str):
                found.append(str(Path(config).parent))  # the snapshot folder: loaded as a local dir
    return found


class _Clock(BaseStreamer):
    """`generate` calls `put` with the prompt, then with each new token: the second call is the first token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _torch_run(model, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids = torch.tensor([prompt_ids])
    clock = _Clock()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=clock
        )
    seconds = time.perf_counter() - started
    return out[0, len(prompt_ids) :].tolist(), clock.times[1] - started, seconds


def _torch_loop(model, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    started = time.perf_counter()
    tokens: list[int] = []
    first = 0.0
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=torch.tensor([prompt_ids]), past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        for step in range(new_tokens):
            tokens.append(int(out.logits[0, -1].argmax()))
            if step == 0:
                first = time.perf_counter() - started
            if step == new_tokens - 1:
                break
            step_ids = torch.tensor([[tokens[-1]]])
            out = model(
                input_ids=step_ids, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1
            )
    return tokens, first, time.perf_counter() - started


def _onnx_run(lm, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    result = lm.generate_greedy(prompt_ids, new_tokens)
    return result.tokens, result.first_token_seconds, result.seconds


def _measure(run, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    run(prompt_ids, min(4, new_tokens))  # warm-up: allocations, thread pools, kernel selection
    timings, cpu = [], []
    for _ in range(repeats):
        started = time.process_time()
        timings.append(run(prompt_ids, new_tokens))
        cpu.append(time.process_time() - started)
    tokens = timings[0][0]
    seconds = statistics.median(t[2] for t in timings)
    return {
        "tokens": tokens,
        "new_tokens": len(tokens),
        "seconds": round(seconds, 4),
        "tokens_per_second": round(len(tokens) / seconds, 1),
        "tokens_per_cpu_second": round(len(tokens) / max(statistics.median(cpu), 1e-9), 1),
        "first_token_ms": round(1000 * statistics.median(t[1] for t in timings), 2),
    }


def _prompt(tokenizer, model, runs_runc: bool) -> tuple[str, list[int]]:
    """The prompt (text for run.c, ids for every row): the story beginning; a llama2.c tokenizer puts BOS first
    as run.c does; a Llama model whose tokenizer run.c cannot reproduce (GPT-Neo's) starts from token 1, run.c's
    BOS, when run.c runs it."""
    if tokenizer.convert_ids_to_tokens(list(SPECIALS)) == list(SPECIALS.values()):
        return PROMPT, tokenizer(PROMPT)["input_ids"]  # llama2.c's tokenizer: BOS + run.c's encoding
    if runs_runc:
        return "", [1]
    return PROMPT, tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def _length(model, prompt_ids: list[int], new_tokens: int, runs_runc: bool) -> int:
    """How many to generate: within the model's context (a short one gets fewer); when run.c runs, before the
    first greedy BOS (id 1), where run.c stops."""
    context = context_limit(model)
    if len(prompt_ids) >= context:
        raise ConfigError(
            f"the benchmark prompt ({len(prompt_ids)} tokens) does not fit the model's {context}-token context"
        )
    new = min(new_tokens, context - len(prompt_ids))
    if runs_runc:
        tokens = _torch_loop(model, prompt_ids, new)[0]
        new = tokens.index(1) if 1 in tokens else new
        if new == 0:
            raise ConfigError("the model's first greedy token is BOS (1): run.c would stop at once")
    return new


def _set_attention(model, fast: bool) -> None:
    """torch eager: stock transformers (eager attention; GPT-Neo's gelu_new); torch fast: what load_model gives."""
    if fast:
        install_attention(model, "sdpa")  # SDPA attention (+ GPT-Neo's fused GELU)
    elif model.config.model_type == "llama":
        model.set_attn_implementation("eager")
    else:
        use_fast_attention(model, backend="eager")
        use_fast_gelu(model, enable=False)


def _onnx_generator(folder: Path, graph: str, threads: int):
    """An ONNX Runtime loop over an exported folder (`.generate_greedy(prompt_ids, new_tokens)`): `web` the
    transformers.js graph, `fp32` / `int8` the generation graph and its int8 twin."""
    if graph == "web":
        return OnnxCausalLM(folder / FP32_FILE, threads=threads)
    return open_generator(folder, quantized=graph == "int8", threads=threads)


def _compare(runs: dict, sizes: dict) -> None:
    """same_tokens, agreement and ratios of every row against torch eager's; sizes on disk."""
    base = runs["torch eager"]
    for name, run in runs.items():
        if name != RUNC:  # run.c's row compares its printed text itself
            run["same_tokens"] = run["tokens"] == base["tokens"]
            run["tokens_before_first_difference"] = next(
                (i for i, (a, b) in enumerate(zip(run["tokens"], base["tokens"], strict=True)) if a != b),
                len(base["tokens"]),
            )
        run["speedup"] = round(run["tokens_per_second"] / base["tokens_per_second"], 2)
        run["cpu_speedup"] = round(run["tokens_per_cpu_second"] / base["tokens_per_cpu_second"], 2)
        run["first_token_speedup"] = round(base["first_token_ms"] / run["first_token_ms"], 2)
        run["size_mb"] = round(sizes[name] / 1e6, 2)


def bench_model(label: str, model, tokenizer, args, workdir: Path, source=None) -> dict:
    """Every path on one model (fp32, CPU), its export in `workdir`; sizes on disk and ratios vs eager. `source`:
    the llama2.c (.bin, tokenizer.bin) the model was imported from (run.c runs those)."""
    model = model.to(device="cpu", dtype=torch.float32).eval()
    not_run, files = _not_run(model, args), None
    if args.llama2c_run and model.config.model_type == "llama":
        try:  # run.c's .bin and tokenizer.bin: the given llama2.c files, else written from this model
            files = runc_files(model, tokenizer, workdir, source)
        except ConfigError as err:  # a Llama that run.c cannot compute (other RoPE theta, biases, ...)
            not_run[RUNC] = f"not run: {err}"
    runs_runc = files is not None
    model.save_pretrained(workdir / "torch")
    started = time.perf_counter()
    export_model(model, tokenizer, workdir / "onnx-export", quantize="int8", verify=False)
    export_seconds = time.perf_counter() - started
    text, prompt_ids = _prompt(tokenizer, model, runs_runc)
    new = _length(model, prompt_ids, args.inference_new_tokens, runs_runc)
    threads, repeats = torch.get_num_threads(), args.inference_repeats

    _set_attention(model, fast=False)
    runs = {"torch eager": _measure(lambda p, n: _torch_run(model, p, n), prompt_ids, new, repeats)}
    _set_attention(model, fast=True)
    runs["torch fast"] = _measure(lambda p, n: _torch_run(model, p, n), prompt_ids, new, repeats)
    runs["torch fast loop"] = _measure(lambda p, n: _torch_loop(model, p, n), prompt_ids, new, repeats)
    for name, graph in (("onnx web fp32", "web"), ("onnx fp32", "fp32"), ("onnx int8", "int8")):
        lm = _onnx_generator(workdir / "onnx-export", graph, threads)
        runs[name] = _measure(lambda p, n, lm=lm: _onnx_run(lm, p, n), prompt_ids, new, repeats)
    sizes = {
        "torch eager": (workdir / "torch" / "model.safetensors").stat().st_size,
        "onnx web fp32": (workdir / "onnx-export" / FP32_FILE).stat().st_size,
        "onnx fp32": (workdir / "onnx-export" / GENERATION_FILE).stat().st_size,
        "onnx int8": (workdir / "onnx-export" / GENERATION_INT8_FILE).stat().st_size,
    }
    sizes["torch fast"] = sizes["torch fast loop"] = sizes["torch eager"]
    if LLAMA_CPP not in not_run:
        try:
            tokenizer.save_pretrained(workdir / "torch")  # llama.cpp's converter reads the folder
            gguf = workdir / "model-f32.gguf"
            run = llama_cpp_engine(workdir / "torch", gguf, threads, context_limit(model))
            runs[LLAMA_CPP] = _measure(run, prompt_ids, new, repeats)
            sizes[LLAMA_CPP] = gguf.stat().st_size
        except ConfigError as err:  # e.g. a tokenizer the converter does not know
            not_run[LLAMA_CPP] = f"not run: {err}"
    if runs_runc:
        expected = runs["torch eager"]["tokens"]
        runs[RUNC] = runc_row(args.llama2c_run, files, (text, prompt_ids), expected, repeats, threads)
        sizes[RUNC] = runs[RUNC].pop("size_bytes")
    _compare(runs, sizes)
    return {
        "label": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompt_tokens": len(prompt_ids),
        "new_tokens": new,
        "threads": threads,
        "export_seconds": round(export_seconds, 2),
        "runs": runs,
        "not_run": not_run,
    }


def _not_run(model, args) -> dict:
    """The peers left out of this model's rows, and why."""
    out = {}
    if missing := llama_cpp_missing(model):
        out[LLAMA_CPP] = missing
    if not args.llama2c_run:
        out[RUNC] = "not run: no --llama2c_run (a built llama2.c run.c binary) given"
    elif model.config.model_type != "llama":
        out[RUNC] = "not run: run.c runs Llama models only (this one is GPT-Neo)"
    return out


def parse_architectures(text: str) -> list[str]:
    found = [a.strip() for a in text.split(",") if a.strip()]
    if not found or any(a not in ARCHITECTURES for a in found):
        raise ConfigError(
            f"unknown --inference_architectures {text!r}: a comma-separated subset of {', '.join(ARCHITECTURES)}"
        )
    return found


def _models(args):
    """(label, model, tokenizer, llama2.c source) for the random-weight shapes (each architecture), the llama2.c
    checkpoint, then the checkpoints, one at a time."""
    shapes = parse_shapes(args.inference_sizes)
    for label, kwargs in shapes:
        for arch in parse_architectures(args.inference_architectures):
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            torch.manual_seed(args.seed)
            config = build_config(
                **kwargs, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, architecture=arch
            )
            cls, name = (
                (LlamaForCausalLM, f"{label} llama") if arch == "llama" else (GPTNeoForCausalLM, label)
            )
            yield f"{name} (random weights)", cls(config), tokenizer, None
    if args.llama2c_model:
        model_bin, tokenizer_bin = (
            Path(args.llama2c_model).expanduser(),
            Path(args.llama2c_tokenizer).expanduser(),
        )
        l2c_args, weights = read_checkpoint(model_bin)
        tokenizer = load_llama2c_tokenizer(tokenizer_bin, l2c_args.vocab_size, l2c_args.seq_len)
        yield model_bin.stem, to_transformers(l2c_args, weights), tokenizer, (model_bin, tokenizer_bin)
    given = args.inference_models
    names = cached_checkpoints(shapes) if given == "auto" else [m for m in given.split(",") if m.strip()]
    for name in [n.strip() for n in names if n.strip() != "none"]:
        model = load_model(name, attn_implementation="eager")
        yield _label(name), model, AutoTokenizer.from_pretrained(name), None


def _label(name: str) -> str:
    path = Path(name)
    if path.parent.name == "snapshots":  # models--org--name/snapshots/<sha>
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.name or name


def check_inference_flags(args) -> None:
    """The suite's flags, before any work starts."""
    if args.inference_new_tokens < 1 or args.inference_repeats < 1:
        raise ConfigError("--inference_new_tokens and --inference_repeats must be at least 1")
    parse_shapes(args.inference_sizes)
    parse_architectures(args.inference_architectures)
    check_peer_flags(args)


def bench_inference(args) -> dict:
    check_inference_flags(args)
    out: dict = {"new_tokens": args.inference_new_tokens, "repeats": args.inference_repeats, "models": {}}
    for label, model, tokenizer, source in _models(args):
        print(f"[bench] inference {label}: export, then {', '.join(PATHS)} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="tinystories-inference-") as tmp:
            out["models"][label] = bench_model(label, model, tokenizer, args, Path(tmp), source)
    return out


def format_inference_table(result: dict) -> str:
    head = (
        f"{'model':<28} {'path':<16} {'tok/s':>8} {'× eager':>8} {'tok/cpu-s':>9} {'× eager':>8} "
        f"{'first ms':>9} {'× eager':>8} {'MB':>7} {'same tokens':>11}"
    )
    lines, notes = [head, "-" * len(head)], []
    for label, res in result["models"].items():
        for name, r in res["runs"].items():
            lines.append(
                f"{label:<28} {name:<16} {r['tokens_per_second']:>8.1f} {r['speedup']:>8.2f} "
                f"{r['tokens_per_cpu_second']:>9.1f} {r['cpu_speedup']:>8.2f} "
                f"{r['first_token_ms']:>9.1f} {r['first_token_speedup']:>8.2f} {r['size_mb']:>7.1f} "
                f"{'yes' if r['same_tokens'] else 'no':>11}"
            )
        runc = res["runs"].get(RUNC)
        if runc:
            notes.append(
                f"{label} run.c: {res['prompt_tokens']} prompt + {res['new_tokens']} new tokens; its own loop "
                f"{runc['loop_tokens_per_second']} positions/s = {runc['loop_new_tokens_per_second']} new tok/s "
                f"without start and loading; peak RSS {runc['peak_rss_mb']} MB"
            )
    lines += notes
    lines.append(
        f"batch 1, greedy, {result['new_tokens']} new tokens (fewer where a model's context is shorter, or before "
        f"a greedy BOS where run.c runs), median of {result['repeats']}; MB: safetensors (torch) / .onnx / "
        "run.c .bin file size; same tokens: identical to torch eager's (run.c: its printed text is); run.c's "
        "tok/s and first ms: whole process (start, load, prompt, loop)"
    )
    return "\n".join(lines)
