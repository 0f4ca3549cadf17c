"""The figures of `tinystories analyze` (PNG next to `analysis.json`; the Agg backend is set by `plots`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinystories.analysis.inputs import CATEGORIES
from tinystories.core.plots import plt, save_figure

KIND_COLORS = {"local": "tab:blue", "mixed": "tab:orange", "global": "tab:red"}


def plot_head_distances(heads: list[dict], path: Path) -> Path:
    """Mean attention distance per layer × head (heat map), and distance vs local share by kind."""
    layers = 1 + max(h["layer"] for h in heads)
    num_heads = 1 + max(h["head"] for h in heads)
    grid = np.zeros((layers, num_heads))
    for h in heads:
        grid[h["layer"], h["head"]] = h["mean_attention_distance"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.55 * num_heads + 6), max(3.5, 0.5 * layers + 2)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    for h in heads:
        ax.text(h["head"], h["layer"], h["kind"][0], ha="center", va="center", color="white", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(num_heads))
    ax.set_yticks(range(layers))
    ax.set_title("mean attention distance (tokens); l/m/g = kind")
    fig.colorbar(image, ax=ax)
    for kind, color in KIND_COLORS.items():
        pts = [(h["mean_attention_distance"], h["local_attention_share"]) for h in heads if h["kind"] == kind]
        if pts:
            ax2.scatter(*zip(*pts, strict=True), label=kind, color=color, s=18)
    ax2.set_xlabel("mean attention distance (tokens)")
    ax2.set_ylabel("attention share within 8 tokens")
    ax2.set_title("heads by kind")
    ax2.grid(alpha=0.3)
    ax2.legend()
    save_figure(fig, path, dpi=110)
    return path


def plot_attention_patterns(pattern, heads: list[dict], tokens: list[str], path: Path, max_tokens: int = 40):
    """The attention of one story (its first `max_tokens` tokens) for every layer × head."""
    layers, num_heads = len(pattern), pattern[0].shape[0]
    n = min(max_tokens, pattern[0].shape[-1])
    kinds = {(h["layer"], h["head"]): h["kind"] for h in heads}
    size = (max(6.0, 1.3 * num_heads), 1.3 * layers + 0.8)
    fig, axes = plt.subplots(layers, num_heads, figsize=size, squeeze=False)
    for layer in range(layers):
        for head in range(num_heads):
            ax = axes[layer][head]
            ax.imshow(pattern[layer][head, :n, :n].numpy(), cmap="Blues", vmin=0)  # each head its own scale
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"L{layer}H{head} {kinds.get((layer, head), '')[:1]}", fontsize=6, pad=2)
    story = "".join(tokens[1:n]).strip().replace("\n", " ")
    fig.suptitle(f"attention, first {n} tokens of one story (query ↓, key →):\n{story[:80]}…", fontsize=8)
    save_figure(fig, path, dpi=100)
    return path


def plot_neuron_roles(trained: dict, random_init: dict, path: Path) -> Path:
    """Share of neurons per role: the analysed model against a random initialisation of the same shape."""
    x = np.arange(len(CATEGORIES))
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ((-0.2, "trained", trained), (0.2, "random init", random_init))
    for offset, label, summary in bars:
        n = max(summary["num_neurons"], 1)
        ax.bar(x + offset, [summary["roles"][c] / n for c in CATEGORIES], width=0.4, label=label)
    ax.set_xticks(x, [c.replace("_", " ") for c in CATEGORIES])
    ax.set_ylabel("share of MLP neurons")
    ax.set_title(
        f"neurons with a clear role: {trained['clear_role_share']:.1%} trained vs "
        f"{random_init['clear_role_share']:.1%} random init"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path, dpi=110)
    return path
