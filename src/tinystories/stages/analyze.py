"""`tinystories analyze`: the paper's interpretability findings for any model (attention heads, MLP neurons).

    tinystories analyze --model roneneldan/TinyStories-1Layer-21M            # the paper's subject
    tinystories analyze --model outputs/TinyStories-1M --data stories.txt --max_samples 20

recipe-free: model (Hub id, local dir or LoRA adapter dir, eager attention so the probabilities are
returned) → the first `--max_samples` stories of `--data` (as `tinystories eval` reads them), each [EOS] +
tokens cut to min(512, max_position_embeddings) → one pass collecting per-head attention statistics
(`analysis_heads`: distance, entropy, local share, kind) and per-neuron activations (`analysis_neurons`:
top tokens, role) → the same neuron measurement on a random initialisation of the same shape (the control) →
`analysis.json`, `analysis.md` and figures in `--output_dir` (default `<model dir>/analysis`,
`outputs/analysis/<org>__<name>` for a Hub id).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.analysis.heads import KIND_RULE, HeadStatistics, copying_score, layer_attention_types
from tinystories.analysis.heads import __doc__ as HEADS_DOC
from tinystories.analysis.inputs import WordCategories, encode_stories, run_batches
from tinystories.analysis.neurons import (
    ROLE_RULE,
    NeuronStatistics,
    neuron_entries,
    random_init_model,
    role_summary,
)
from tinystories.analysis.plots import plot_attention_patterns, plot_head_distances, plot_neuron_roles
from tinystories.analysis.report import analysis_output_dir, write_analysis
from tinystories.core import ConfigError
from tinystories.core.arguments import (
    DEFAULT_DATA,
    BatchArguments,
    ContextArguments,
    HeldOutArguments,
    InferenceArguments,
    ModelSource,
    OutputArguments,
    SeedArguments,
    check_min,
)
from tinystories.core.config import parse_args, setup_logging
from tinystories.core.paths import data_name, public_name, resolve_hub_id
from tinystories.core.runtime import resolve_device, resolve_dtype
from tinystories.data.loading import held_out_texts
from tinystories.data.tokenizer import load_tokenizer
from tinystories.hub.cards import link_figures
from tinystories.models.loading import context_limit, load_model

logger = logging.getLogger("tinystories.analysis")


@dataclass
class AnalysisArguments(
    ModelSource,
    HeldOutArguments,
    InferenceArguments,
    BatchArguments,
    ContextArguments,
    SeedArguments,
    OutputArguments,
):
    """--model (default: the paper's 1-layer model), --data / --split / --validation_fraction, --max_samples
    stories, --seed (held-out split and the random control), --output_dir (default: <model dir>/analysis or
    outputs/analysis/<org>__<name>)."""

    top_neurons: int = field(default=8, metadata={"help": "most selective neurons listed per layer"})
    top_activations: int = field(default=50, metadata={"help": "top activations kept per neuron"})
    random_control: bool = field(
        default=True, metadata={"help": "measure neuron roles on a random init of the same shape too"}
    )
    pattern_tokens: int = field(default=40, metadata={"help": "tokens shown in the attention-pattern figure"})

    def check(self):
        for flag in ("top_neurons", "top_activations", "pattern_tokens"):
            check_min(flag, getattr(self, flag), 1)


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (AnalysisArguments,)
DEFAULTS = {
    "data": DEFAULT_DATA,
    "model": "roneneldan/TinyStories-1Layer-21M",
    "max_samples": 100,
    "batch_size": 8,
}


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    setup_logging()
    device = resolve_device(args.device)
    texts = held_out_texts(args)
    model = load_model(
        args.model, attn_implementation="eager", revision=args.revision, dtype=resolve_dtype(args.precision)
    )
    model = model.to(device).eval()
    tokenizer = load_tokenizer(
        args.tokenizer or args.model, revision=None if args.tokenizer else args.revision
    )
    stored = int(getattr(model.config, "max_position_embeddings", 0) or context_limit(model))
    context = args.max_length or context_limit(model)
    if not 2 <= context <= stored:
        raise ConfigError(f"--max_length {context} must be in [2, the model's {stored} position embeddings]")

    # one pass: attention statistics per head, activations per MLP neuron
    stories = encode_stories(tokenizer, texts.texts, context)
    flat_ids, categories = stories.flat_ids(), WordCategories(texts.texts).label_all(stories)
    config = model.config
    heads = HeadStatistics(
        config.num_hidden_layers, config.num_attention_heads, model.get_input_embeddings().num_embeddings
    )
    neurons = NeuronStatistics(model, args.top_activations)
    run_batches(model, stories, args.batch_size, [heads, neurons], attentions=True)
    neurons.detach()
    head_rows = heads.entries(tokenizer, layer_attention_types(config))
    roles = neurons.roles(categories)
    neuron_rows = neuron_entries(neurons, roles, tokenizer, stories, flat_ids, args.top_neurons)
    summary, control = role_summary(roles), None
    copying = copying_score(model, flat_ids, length=min(40, (context - 1) // 2), seed=args.seed)

    # the control: the same neuron measurement on a random initialisation of the same shape
    if args.random_control:
        fresh = random_init_model(model, args.seed)
        fresh_stats = NeuronStatistics(fresh, args.top_activations)
        run_batches(fresh, stories, args.batch_size, [fresh_stats], attentions=False)
        fresh_stats.detach()
        control = role_summary(fresh_stats.roles(categories))
        del fresh

    out_dir = analysis_output_dir(args.model, args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    story_tokens = [tokenizer.decode([t]) for t in stories.ids[0]]
    figures = [
        plot_head_distances(head_rows, out_dir / "head_distances.png").name,
        plot_attention_patterns(
            heads.pattern, head_rows, story_tokens, out_dir / "attention_patterns.png", args.pattern_tokens
        ).name,
    ]
    if control is not None:
        figures.append(plot_neuron_roles(summary, control, out_dir / "neuron_roles.png").name)
    result = {
        "model": resolve_hub_id(args.model) or public_name(args.model),
        "revision": args.revision,
        "data": data_name(args.data),
        **texts.record(),
        "num_stories": len(stories.ids),
        "num_tokens": stories.num_tokens,
        "context": context,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "definitions": {
            "heads": " ".join(HEADS_DOC.split()),
            "kind": KIND_RULE,
            "role": ROLE_RULE.format(top_k=args.top_activations),
        },
        "heads": head_rows,
        "in_context_copying": copying,
        "neurons": neuron_rows,
        "neuron_summary": summary,
        "neuron_summary_random_init": control,
        "figures": figures,
    }
    path = write_analysis(out_dir, result)
    if Path(args.model).expanduser().is_dir():  # a folder we trained: its card links the figures
        link_figures(
            Path(args.model).expanduser(),
            "Attention heads and MLP neurons (`make analyze`)",
            out_dir,
            figures,
        )
    kinds = {k: sum(h["kind"] == k for h in head_rows) for k in ("local", "mixed", "global")}
    print(f"heads: {kinds}; neurons with a clear role: {summary['clear_role_share']:.1%}", end="")
    print(f" (random init: {control['clear_role_share']:.1%})" if control else "")
    print(
        f"in-context copying: loss {copying['first_copy_loss']:.2f} → {copying['second_copy_loss']:.2f} nats "
        f"on the repeat of a random sequence (score {copying['copying_score']:.2f})"
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
