"""`tinystories sweep --config recipes/sweep/quickstart.yaml`: the paper's width × depth grid, and its scaling.

    tinystories sweep --config recipes/sweep/paper.yaml                       # the paper's grid (GPUs)
    tinystories sweep --config recipes/sweep/quickstart.yaml --hidden_sizes 32 64 --num_layers 1 2 --max_steps 30
    tinystories sweep --config recipes/sweep/quickstart.yaml --train_tokens 100000 400000   # a token-budget axis

recipe → the base pretraining recipe (`--train_config`) with `train_overrides` / `--train_args key=value`,
parsed once (bad settings fail before any training) → the grid (`--hidden_sizes` × `--num_layers` ×
`--max_steps` or `--train_tokens`) → per cell, unless finished: `tinystories.stages.train.main` (a normal run in
`<output_dir>/<cell>/`, resumable), then `tinystories.evaluation.evaluate_model` on the stories that run held
out (`eval_results.json`; completions and judge scores with `--judge_base_url/--judge_model`), then the
cell's record → power-law fits (`sweep_fit`) → `sweep_results.json` {"runs", "fit"} and figures.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tinystories.core.arguments import (
    DataSource,
    InferenceArguments,
    OutputArguments,
    SamplingArguments,
    TokenizerSource,
    check_each_min,
    check_min,
)
from tinystories.core.config import parse_args, setup_logging
from tinystories.data.loading import load_eval_texts
from tinystories.evaluation.generation import load_prompt_set
from tinystories.evaluation.judge import JudgeArguments
from tinystories.evaluation.pipeline import EvalArguments, evaluate_model
from tinystories.hub.cards import link_figures
from tinystories.models.sizes import count_non_embedding_params
from tinystories.stages import train as pretrain
from tinystories.sweep.fit import fit_runs
from tinystories.sweep.grid import (
    Cell,
    build_grid,
    cell_argv,
    cell_record,
    is_finished,
    is_trained,
    override_flags,
    read_record,
    resolve_recipe,
    write_record,
)
from tinystories.sweep.plots import plot_architectures, plot_judge, plot_loss_vs_compute, plot_loss_vs_params
from tinystories.sweep.report import print_table, write_results
from tinystories.training.pretraining import DataArguments, ModelArguments, PretrainConfig, configure_batch

logger = logging.getLogger("tinystories.sweep")


@dataclass
class SweepArguments(DataSource, TokenizerSource, InferenceArguments, SamplingArguments, OutputArguments):
    """--data, --text_column, --tokenizer: set the pretraining recipe's (default: the recipe's own);
    --output_dir: one folder per cell inside; --device, --precision and the sampling flags: how cells are
    evaluated."""

    train_config: str = field(
        default="recipes/pretrain/33M.yaml",
        metadata={"help": "the pretraining recipe every cell starts from"},
    )
    train_overrides: dict = field(
        default_factory=dict, metadata={"help": "(recipe only) pretraining keys set for every cell"}
    )
    train_args: list[str] = field(
        default_factory=list, metadata={"help": "key=value pretraining overrides for every cell"}
    )
    architectures: list[str] = field(
        default_factory=lambda: ["gpt_neo"],
        metadata={"help": "gpt_neo and/or llama (Llama blocks of matched non-embedding parameters)"},
    )
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 768, 1024])
    num_layers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    max_steps: list[int] = field(default_factory=lambda: [1000], metadata={"help": "training steps per cell"})
    train_tokens: list[int] = field(
        default_factory=list, metadata={"help": "token budgets (replace --max_steps: steps = tokens / step)"}
    )
    eval_samples: int | None = field(default=1000, metadata={"help": "held-out stories scored per cell"})
    eval_batch_size: int = 16
    prompts: str = field(default="paper", metadata={"help": "judge prompts: paper, project or a JSONL"})
    num_prompts: int | None = None
    num_completions: int = 1

    def check(self):
        for flag in ("hidden_sizes", "num_layers", "max_steps", "train_tokens"):
            check_each_min(flag, getattr(self, flag), 1, f"pass positive --{flag}, e.g. --{flag} 64 128")
        check_min("eval_samples", self.eval_samples, 1)
        check_min("eval_batch_size", self.eval_batch_size, 1)
        check_min("num_prompts", self.num_prompts, 1)
        check_min("num_completions", self.num_completions, 1)

    def check_paths(self):
        resolve_recipe(self.train_config)  # names the recipe and the fix when it is not there


def non_embedding_count(cell_dir: Path) -> int:
    """The exact count of the trained architecture (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cell_dir))
    return count_non_embedding_params(model)


def run_cell(cell: Cell, argv: list[str], texts, prompts, eval_args, judge_args) -> dict:
    """Train (unless trained), evaluate and record one cell; a finished cell is returned as recorded."""
    cell_dir = Path(argv[argv.index("--output_dir") + 1])
    record = read_record(cell_dir)
    if is_finished(record, argv, cell_dir, judge_args.enabled):
        logger.info("%s: finished, skipped (%s)", cell.name, cell_dir)
        return record
    timing = {"train_wall_seconds": (record or {}).get("train_wall_seconds")}
    if not is_trained(cell_dir):
        start = time.perf_counter()
        pretrain.main(argv)
        timing["train_wall_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    results = evaluate_model(str(cell_dir), texts, prompts, eval_args, judge_args, cell_dir)
    timing["eval_wall_seconds"] = round(time.perf_counter() - start, 2)
    record = cell_record(cell, argv, non_embedding_count(cell_dir), results, timing)
    write_record(cell_dir, record)
    return record


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (SweepArguments, JudgeArguments)
DEFAULTS = {"data": None, "text_column": None, "output_dir": "outputs/sweep"}


def main(argv: list[str] | None = None) -> int:
    args, judge_args = parse_args(ARGUMENTS, argv, DEFAULTS)
    setup_logging()
    judge_args.validate()  # a missing key fails now, not after the first cell trained

    # every cell's pretraining command line, parsed once: a bad key fails before any training
    base = [
        "--config",
        resolve_recipe(args.train_config),
        *override_flags(args.train_overrides, args.train_args),
    ]
    for flag in ("data", "text_column", "tokenizer"):
        base += [f"--{flag}", getattr(args, flag)] if getattr(args, flag) else []
    if args.on_decode_error != "fail":
        base += ["--on_decode_error", args.on_decode_error]
    _, data_args, train = parse_args((ModelArguments, DataArguments, PretrainConfig), base)
    configure_batch(train)
    per_step = train.per_device_train_batch_size * train.world_size * train.gradient_accumulation_steps
    cells = build_grid(
        args.hidden_sizes,
        args.num_layers,
        args.max_steps,
        args.train_tokens,
        per_step * data_args.block_size,
        args.architectures,
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("sweep of %d cells in %s: %s", len(cells), out_dir, ", ".join(c.name for c in cells))

    # the stories every training run held out (or its eval data), scored by `tinystories eval`'s path
    texts = load_eval_texts(
        data_args.eval_data or data_args.data,
        "validation",
        None if data_args.eval_data else data_args.validation_fraction,
        train.seed,
        data_args.text_column,
        args.eval_samples,
        data_args.on_decode_error,
    )
    prompts = load_prompt_set(args.prompts, args.num_prompts) if judge_args.enabled else None
    eval_args = EvalArguments(
        data=data_args.data,
        seed=train.seed,
        batch_size=args.eval_batch_size,
        device=args.device,
        precision=args.precision,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        prompts=args.prompts,
        generate=judge_args.enabled,
        num_prompts=args.num_prompts,
        num_completions=args.num_completions,
        max_new_tokens=args.max_new_tokens,
    )

    runs = []
    for i, cell in enumerate(cells, 1):
        logger.info("cell %d/%d: %s", i, len(cells), cell.name)
        argv_cell = cell_argv(base, cell, out_dir / cell.name)
        runs.append(run_cell(cell, argv_cell, texts, prompts, eval_args, judge_args))

    fit = fit_runs(runs)
    figures = [plot_loss_vs_params(runs, fit, out_dir / "loss_vs_params.png")]
    if "compute" in fit:
        figures.append(plot_loss_vs_compute(runs, fit, out_dir / "loss_vs_compute.png"))
    if "by_architecture" in fit:
        figures.append(plot_architectures(runs, fit, out_dir / "architectures_vs_params.png"))
    figures.append(plot_judge(runs, out_dir / "judge_vs_size.png"))
    names = [f.name for f in figures if f]
    path = write_results(out_dir, runs, fit, names, texts.record())
    for cell in cells:  # every cell's card links the sweep it belongs to
        link_figures(out_dir / cell.name, "The sweep this run belongs to (`make sweep`)", out_dir, names)
    print_table(runs, fit)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
