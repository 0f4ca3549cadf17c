"""Other engines in the inference suite: llama2.c's `run.c` (`--llama2c_run`, a built binary), on the same model.

The model run.c runs is the model of the other rows: a llama2.c checkpoint given as `--llama2c_model` is handed
to run.c as it is (the torch/ONNX rows run its imported transformers twin); a Llama shape with random weights is
written by `tinystories.models.llama2c.save_llama2c` and its tokenizer by `write_tokenizer_bin`.

run.c starts every sequence with BOS (id 1), encodes `-i <prompt>` with its own tokenizer, runs one position at
a time (`-n` counts positions: prompt + new tokens - 1) and stops early when it samples BOS. A llama2.c tokenizer
encodes the benchmark prompt as run.c does, so those rows all start from BOS + the prompt; a GPT-Neo vocabulary
(the Llama twins) has no run.c encoding, so where run.c runs such a model, its rows all start from token 1 (`-i ""`).
run.c prints text, not ids: `same_tokens` says its stdout is exactly what run.c's decode prints for torch eager's
tokens (`runc_text`).

Each run is one fresh process: `tokens_per_second` is new tokens over the process's whole wall clock (start,
loading the checkpoint, the prompt, the loop); `loop_tokens_per_second` is run.c's own "achieved tok/s" (positions
after the first over the time since, prompt positions included) and `loop_new_tokens_per_second` the new tokens
over that loop's time, the unit of the other rows without process start and loading; `first_token_ms` is from the start of the
process to the first printed new token; `peak_rss_mb` is the process's VmHWM read from /proc while it runs (the
parent's getrusage would count the benchmark's own memory: a child's maxrss starts from its parent's at fork).
"""

from __future__ import annotations

import importlib.util
import os
import re
import select
import statistics
import subprocess
import time
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.data.llama2c_tokenizer import read_tokenizer_bin, runc_pieces, runc_text, write_tokenizer_bin
from tinystories.models.export.gguf import check_convertible, convert_to_gguf, find_converter
from tinystories.models.llama2c import BIN_FIX, HEADER_BYTES, read_header, save_llama2c

RUNC = "run.c"
RUNC_RATE = re.compile(rb"achieved tok/s: ([0-9.]+)")
LLAMA_CPP = "llama.cpp"


def check_peer_flags(args) -> None:
    """Every peer path exists and is what it should be, before any work starts."""
    if args.llama2c_run:
        path = Path(args.llama2c_run).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(
                f"--llama2c_run {args.llama2c_run!r} is not an executable file: build llama2.c's run.c "
                "(`cc -O3 -o run run.c -lm` in a llama2.c checkout) and pass the binary"
            )
    if bool(args.llama2c_model) != bool(args.llama2c_tokenizer):
        raise ConfigError(
            "--llama2c_model and --llama2c_tokenizer go together: a llama2.c .bin and its tokenizer.bin "
            "(e.g. stories260K.bin with tok512.bin)"
        )
    if args.llama2c_model:
        model = Path(args.llama2c_model).expanduser()
        if not model.is_file() or model.suffix != ".bin":
            raise ConfigError(
                f"--llama2c_model {args.llama2c_model!r} is not a llama2.c .bin file (run.c reads .bin only): "
                f"{BIN_FIX}"
            )
        tokenizer = Path(args.llama2c_tokenizer).expanduser()
        if not tokenizer.is_file():
            raise ConfigError(
                f"--llama2c_tokenizer {args.llama2c_tokenizer!r} is not a file: pass the model's tokenizer.bin"
            )
        with model.open("rb") as f:  # the header only: the pair fits together
            vocab_size = read_header(f.read(HEADER_BYTES), model.name)[0].vocab_size
        read_tokenizer_bin(tokenizer, vocab_size)


def runc_files(model, tokenizer, workdir: Path, source: tuple[Path, Path] | None) -> tuple[Path, Path, list]:
    """The `.bin` and `tokenizer.bin` run.c runs (the given llama2.c files, else written from the model) and the
    pieces it prints."""
    pieces, scores = runc_pieces(tokenizer)
    if source is not None:
        return source[0], source[1], pieces
    save_llama2c(model, workdir / "model.bin")
    return workdir / "model.bin", write_tokenizer_bin(pieces, scores, workdir / "tokenizer.bin"), pieces


def _vm_hwm_kb(status: Path) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None  # gone, or a zombie: its memory is already released


def spawn(command: list[str], printed_before: int, threads: int = 1) -> dict:
    """One run of `command`: its stdout, stderr, wall and CPU seconds, when its stdout first grew past
    `printed_before` bytes, and its peak resident memory (VmHWM, read until it exits). `threads`: OMP_NUM_THREADS
    (run.c built with -fopenmp uses them; a plain build runs on one)."""
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    fd, status = proc.stdout.fileno(), Path(f"/proc/{proc.pid}/status")
    out, first, peak = bytearray(), None, None
    while True:
        if select.select([fd], [], [], 0.001)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # end of file: the process has exited
                break
            out += chunk
            if first is None and len(out) > printed_before:
                first = time.perf_counter() - started
        peak = _vm_hwm_kb(status) or peak
    _, code, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(code)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{command[0]} exited with {proc.returncode}: {tail}")
    return {
        "stdout": bytes(out),
        "stderr": err,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "first_seconds": first if first is not None else seconds,
        "peak_rss_kb": peak,
    }


def runc_row(
    binary: str, files: tuple, prompt: tuple, expected: list[int], repeats: int, threads: int
) -> dict:
    """run.c's row: `files` (.bin, tokenizer.bin, pieces), `prompt` (its text, its ids from BOS), `expected` the
    new tokens torch eager made; the median of `repeats` runs after a short warm-up, with torch's `threads`."""
    model_bin, tokenizer_bin, pieces = files
    text, prompt_ids = prompt
    new = len(expected)
    printed_before = len(runc_text(pieces, prompt_ids))
    want = runc_text(pieces, prompt_ids + expected) + b"\n"

    def command(n: int) -> list[str]:
        return [
            binary,
            str(model_bin),
            "-z",
            str(tokenizer_bin),
            "-t",
            "0",
            "-n",
            str(len(prompt_ids) + n - 1),
        ]

    spawn(
        [*command(min(4, new)), "-i", text], printed_before, threads
    )  # warm-up: the files into the page cache
    runs = [spawn([*command(new), "-i", text], printed_before, threads) for _ in range(repeats)]
    seconds = statistics.median(r["seconds"] for r in runs)
    rates = [float(m.group(1)) for r in runs if (m := RUNC_RATE.search(r["stderr"]))]
    got = runs[0]["stdout"]
    agree = next(
        (i for i in range(new, 0, -1) if got.startswith(runc_text(pieces, prompt_ids + expected[:i]))), 0
    )
    peaks = [r["peak_rss_kb"] for r in runs if r["peak_rss_kb"]]
    steps = len(prompt_ids) + new - 1  # run.c's -n: the positions it runs, BOS first
    return {
        "tokens": expected if got == want else None,
        "new_tokens": new,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(new / seconds, 1),
        "tokens_per_cpu_second": round(new / max(statistics.median(r["cpu_seconds"] for r in runs), 1e-9), 1),
        "first_token_ms": round(1000 * statistics.median(r["first_seconds"] for r in runs), 2),
        "same_tokens": got == want,
        "tokens_before_first_difference": agree,
        "loop_tokens_per_second": round(statistics.median(rates), 1) if rates else None,
        # the same loop in the other rows' unit: new tokens over the loop's time, (positions - 1) / its rate
        "loop_new_tokens_per_second": round(new * statistics.median(rates) / (steps - 1), 1)
        if rates
        else None,
        "peak_rss_mb": round(max(peaks) / 1024, 2) if peaks else None,
        "size_bytes": model_bin.stat().st_size,
        "command": " ".join([*command(new), "-i", repr(text)]),
    }


def llama_cpp_missing(model) -> str | None:
    """Why llama.cpp cannot run this model here (None: it can): it has no GPT-Neo, and needs `make gguf-tools`."""
    try:
        check_convertible(model.config)
        find_converter()
    except ConfigError as err:
        return f"not run: {err}"
    if importlib.util.find_spec("llama_cpp") is None:
        return "not run: llama-cpp-python is not installed (`make gguf-tools` builds it)"
    return None


def llama_cpp_engine(model_dir: Path, gguf_path: Path, threads: int, n_ctx: int):
    """llama.cpp on the model of `model_dir` (a saved transformers folder, converted to an f32 GGUF by llama.cpp's
    own converter), through llama-cpp-python: a `run(prompt_ids, new_tokens) -> (tokens, first s, total s)` the
    suite times like every row, greedy (top-k 1, no repetition penalty), EOS not stopping it."""
    from llama_cpp import Llama  # optional backend: the `gguf` extra (`make gguf-tools`)

    convert_to_gguf(model_dir, gguf_path, "f32")
    llm = Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def run(prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        started, first, tokens = time.perf_counter(), 0.0, []
        for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == 1:
                first = time.perf_counter() - started
            if len(tokens) == new_tokens:
                break
        return tokens, first, time.perf_counter() - started

    return run
