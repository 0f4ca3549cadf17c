"""MLP neurons: which tokens make each one fire, and whether one kind of word dominates (its role).

A neuron is one of the MLP's hidden units: the input of the MLP's output projection (GPT-Neo `mlp.c_proj`,
after the GELU; Llama `mlp.down_proj`, the SwiGLU product silu(gate)·up). Over every
token of the analysed stories (the EOS prefix left out) each neuron keeps its `top_k` highest activations.

- `selectivity`: (mean of those top activations − mean activation) / standard deviation of the activation.
- `top_tokens`: the distinct tokens among the top activations, highest first, with the largest activation,
  how many of the top activations they hold, and a short context of the highest one.
- `role` (the rule): the category (`analysis_inputs.CATEGORIES`: name, noun, verb, adjective, function word,
  punctuation) of at least 60% of the top activations; else None.
The same measurement on a randomly initialised model of the same shape (`random_init_model`) is the
control: the share of neurons with a clear role there is what chance and token frequencies give.
"""

from __future__ import annotations

from collections import Counter

import torch
from transformers import AutoModelForCausalLM

from tinystories.analysis.inputs import CATEGORIES, Batch, EncodedStories, token_context
from tinystories.core import ConfigError

TOP_K = 50  # activations kept per neuron
ROLE_SHARE = 0.6
ROLE_RULE = f"a category holds >= {ROLE_SHARE:.0%} of a neuron's top {{top_k}} activations"
TOP_TOKENS = 5


def mlp_outputs(model) -> list:
    """Each block's MLP output projection (its input is the neuron activations): GPT-Neo or Llama blocks."""
    gpt_blocks = getattr(getattr(model, "transformer", None), "h", None)
    llama_blocks = getattr(getattr(model, "model", None), "layers", None)
    if gpt_blocks is not None and all(hasattr(getattr(b, "mlp", None), "c_proj") for b in gpt_blocks):
        return [b.mlp.c_proj for b in gpt_blocks]
    if llama_blocks is not None and all(hasattr(getattr(b, "mlp", None), "down_proj") for b in llama_blocks):
        return [b.mlp.down_proj for b in llama_blocks]
    raise ConfigError(
        "neuron analysis reads GPT-Neo blocks (transformer.h[i].mlp.c_proj) or Llama blocks "
        f"(model.layers[i].mlp.down_proj); {type(model).__name__} has neither"
    )


def random_init_model(model, seed: int):
    """A freshly initialised model of the same config (shape), eager attention, same device."""
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, attn_implementation="eager")
    return fresh.to(next(model.parameters()).device).eval()


class NeuronStatistics:
    """Running sums, sums of squares and the top-k activations of every neuron of every layer."""

    def __init__(self, model, top_k: int = TOP_K):
        self.top_k = top_k
        self.modules = mlp_outputs(model)
        self.captured: list[torch.Tensor | None] = [None] * len(self.modules)
        self.handles = [
            m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(self.modules)
        ]  # removed by `detach`
        self.sums: list[torch.Tensor] = []
        self.squares: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.flat: list[torch.Tensor] = []
        self.count = 0

    def _hook(self, layer: int):
        def capture(module, args):
            self.captured[layer] = args[0].detach()

        return capture

    def detach(self) -> None:
        for h in self.handles:
            h.remove()

    def update(self, batch: Batch, outputs) -> None:
        valid = batch.valid()
        valid[:, 0] = False  # the EOS prefix is context, not a story token
        width = valid.shape[1]
        flat_index = (batch.flat_start[:, None] + torch.arange(width, device=valid.device)[None, :])[valid]
        flat_index = flat_index.cpu()
        self.count += int(valid.sum())
        for layer, acts in enumerate(self.captured):
            a = acts[valid].float().cpu()  # (P, N)
            if len(self.sums) <= layer:
                n = a.shape[1]
                self.sums.append(torch.zeros(n, dtype=torch.float64))
                self.squares.append(torch.zeros(n, dtype=torch.float64))
                self.values.append(torch.empty(n, 0))
                self.flat.append(torch.empty(n, 0, dtype=torch.long))
            self.sums[layer] += a.sum(0, dtype=torch.float64)
            self.squares[layer] += (a.double() ** 2).sum(0)
            values = torch.cat([self.values[layer], a.T], dim=1)
            index = torch.cat([self.flat[layer], flat_index.expand(a.shape[1], -1)], dim=1)
            k = min(self.top_k, values.shape[1])
            self.values[layer], order = values.topk(k, dim=1)
            self.flat[layer] = index.gather(1, order)
        self.captured = [None] * len(self.modules)

    def selectivity(self, layer: int) -> torch.Tensor:
        mean = self.sums[layer] / self.count
        std = (self.squares[layer] / self.count - mean**2).clamp_min(1e-12).sqrt()
        return ((self.values[layer].double().mean(1) - mean) / std).float()

    def role(self, layer: int, neuron: int, categories: list[str]) -> str | None:
        top = self.flat[layer][neuron]
        category, n = Counter(categories[i] for i in top.tolist()).most_common(1)[0]
        return category if category in CATEGORIES and n >= ROLE_SHARE * len(top) else None

    def roles(self, categories: list[str]) -> list[list[str | None]]:
        """The role of every neuron, layer by layer."""
        return [
            [self.role(layer, j, categories) for j in range(self.values[layer].shape[0])]
            for layer in range(len(self.values))
        ]

    def top_tokens(self, layer: int, neuron: int, tokenizer, stories: EncodedStories, flat_ids) -> list[dict]:
        tokens: dict[int, dict] = {}
        for value, flat in zip(
            self.values[layer][neuron].tolist(), self.flat[layer][neuron].tolist(), strict=True
        ):
            token = int(flat_ids[flat])
            if token not in tokens:
                if len(tokens) == TOP_TOKENS:
                    continue
                tokens[token] = {
                    "token": tokenizer.decode([token]),
                    "activation": round(value, 4),
                    "count": 0,
                    "context": token_context(tokenizer, stories, flat),
                }
            tokens[token]["count"] += 1
        return list(tokens.values())


def role_summary(roles: list[list[str | None]]) -> dict:
    """The share of neurons with a clear role, overall and per layer, and how many hold each role."""
    every = [r for layer in roles for r in layer]
    return {
        "num_neurons": len(every),
        "clear_role_share": round(sum(r is not None for r in every) / max(len(every), 1), 4),
        "roles": {c: sum(r == c for r in every) for c in CATEGORIES},
        "by_layer": [round(sum(r is not None for r in layer) / max(len(layer), 1), 4) for layer in roles],
    }


def neuron_entries(
    stats: NeuronStatistics, roles, tokenizer, stories: EncodedStories, flat_ids, per_layer: int
) -> list[dict]:
    """The `per_layer` most selective neurons of every layer (JSON-ready)."""
    rows = []
    for layer in range(len(stats.values)):
        selectivity = stats.selectivity(layer)
        for neuron in selectivity.argsort(descending=True)[:per_layer].tolist():
            rows.append(
                {
                    "layer": layer,
                    "neuron": neuron,
                    "selectivity": round(float(selectivity[neuron]), 4),
                    "role": roles[layer][neuron],
                    "top_tokens": stats.top_tokens(layer, neuron, tokenizer, stories, flat_ids),
                }
            )
    return rows
