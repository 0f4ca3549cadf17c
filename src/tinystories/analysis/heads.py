"""Attention heads: how far each one looks, how spread its attention is, and what global heads attend to.

Definitions (over the analysed stories, each [EOS] + tokens cut to the analysed context; `a_ij` is the
attention probability of query position i on key position j ≤ i):

- `mean_attention_distance`: at query i, d_i = Σ_j a_ij·(i − j); a head's value is the mean of d_i over all
  query positions of all stories (position 0, the EOS, included: d_0 = 0).
- `attention_entropy`: the mean over the same queries of −Σ_j a_ij·ln a_ij (nats).
- `local_attention_share`: the mean of Σ_{j: i−j ≤ 8} a_ij, the attention on the query token and the 8
  tokens before it.
- `first_token_share`: the mean attention on position 0 (the EOS prefix; an "attention sink").
- `distance_vs_uniform`: mean_attention_distance / the mean of i/2 over the same queries (what uniform
  causal attention gives): 1 for a head that spreads evenly over the story, 0 for one on the query token.
- `kind` (the rule): `local` when local_attention_share ≥ 0.5, else `global` when distance_vs_uniform ≥ 0.5
  (it looks at least half as far back as even attention would), else `mixed`.
- `top_attended` (global heads): the token types that receive the most attention from later queries
  (keys j with 1 ≤ j < i: the EOS prefix and the query itself left out), as shares of that attention, with
  how often each occurs as such a key.

In-context copying (`copying_score`, the induction test of Olsson et al. 2022): sequences of random tokens
(drawn from the analysed stories' tokens), each shown twice after an EOS; the mean loss (nats) on the second
copy against the first. A model with induction heads predicts the repeat (a second-copy loss near 0); one
without them finds the repeat as surprising as the first copy (score ≈ 0).
"""

from __future__ import annotations

import torch

from tinystories.analysis.inputs import Batch

LOCAL_WINDOW = 8  # tokens before the query that count as local
LOCAL_SHARE = 0.5  # local_attention_share at or above this: a local head
GLOBAL_DISTANCE = 0.5  # else distance_vs_uniform at or above this: a global head
KIND_RULE = (
    f"local: >= {LOCAL_SHARE:.0%} of the attention on the query token and the {LOCAL_WINDOW} tokens before it; "
    f"else global: a mean distance >= {GLOBAL_DISTANCE} x that of uniform causal attention; else mixed"
)
TOP_ATTENDED = 8


@torch.no_grad()
def copying_score(
    model, token_ids: torch.Tensor, length: int = 40, sequences: int = 16, seed: int = 0
) -> dict:
    """{"first_copy_loss", "second_copy_loss", "copying_score"}: random sequences of `token_ids`, shown twice."""
    generator = torch.Generator().manual_seed(seed)
    pool = token_ids.unique()
    half = pool[torch.randint(len(pool), (sequences, length), generator=generator)]
    eos = torch.full((sequences, 1), int(model.config.eos_token_id or 0))
    ids = torch.cat([eos, half, half], dim=1).to(model.device)
    logits = model(ids).logits.float()
    nll = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    first, second = (
        nll[:, 1:length].mean().item(),
        nll[:, length + 1 :].mean().item(),
    )  # each copy's tokens 2..L
    return {"first_copy_loss": first, "second_copy_loss": second, "copying_score": first - second}


def head_kind(local_share: float, distance_vs_uniform: float) -> str:
    if local_share >= LOCAL_SHARE:
        return "local"
    return "global" if distance_vs_uniform >= GLOBAL_DISTANCE else "mixed"


class HeadStatistics:
    """Accumulates the per-head sums of every batch's attention probabilities (float64)."""

    def __init__(self, num_layers: int, num_heads: int, vocab_size: int):
        shape = (num_layers, num_heads)
        self.distance = torch.zeros(shape, dtype=torch.float64)
        self.entropy = torch.zeros(shape, dtype=torch.float64)
        self.local = torch.zeros(shape, dtype=torch.float64)
        self.first = torch.zeros(shape, dtype=torch.float64)
        self.received = torch.zeros((num_layers, num_heads, vocab_size), dtype=torch.float64)
        self.key_counts = torch.zeros(vocab_size, dtype=torch.float64)
        self.queries = 0
        self.uniform = 0.0  # Σ i/2 over the queries: the distance of uniform causal attention
        self.pattern: list[torch.Tensor] | None = None  # the first story's attention, every layer

    def update(self, batch: Batch, outputs) -> None:
        valid = batch.valid()  # (B, T) real query positions
        width = valid.shape[1]
        pos = torch.arange(width, device=valid.device)
        offset = (pos[:, None] - pos[None, :]).clamp(min=0).to(torch.float32)  # (T, T): i − j, 0 above
        local = ((pos[:, None] - pos[None, :]) <= LOCAL_WINDOW).to(torch.float32)
        earlier = (pos[None, :] < pos[:, None]) & (pos[None, :] >= 1)  # keys 1 ≤ j < i
        query_mask = valid[:, None, :].to(torch.float32)  # (B, 1, T)
        keys = batch.input_ids.cpu().reshape(-1)
        self.key_counts.index_add_(0, keys, (valid & (pos[None, :] >= 1)).reshape(-1).to(torch.float64).cpu())
        self.queries += int(valid.sum())
        self.uniform += float((pos[None, :] * valid).sum()) / 2
        if self.pattern is None:
            n = int(batch.lengths[0])
            self.pattern = [att[0, :, :n, :n].float().cpu() for att in outputs.attentions]
        for layer, att in enumerate(outputs.attentions):
            a = att.float()  # (B, H, T, T)
            per_query = {
                "distance": (a * offset).sum(-1),
                "entropy": -(a * torch.log(a.clamp_min(1e-30))).sum(-1),
                "local": (a * local).sum(-1),
                "first": a[..., 0],
            }
            for name, values in per_query.items():
                getattr(self, name)[layer] += (values * query_mask).sum(dim=(0, 2)).double().cpu()
            mass = (a * earlier * query_mask[..., None]).sum(2)  # (B, H, T): attention each key receives
            heads = mass.shape[1]
            self.received[layer].index_add_(1, keys, mass.permute(1, 0, 2).reshape(heads, -1).double().cpu())

    def top_attended(self, layer: int, head: int, tokenizer, k: int = TOP_ATTENDED) -> list[dict]:
        received = self.received[layer, head]
        total = float(received.sum())
        if total <= 0:
            return []
        values, ids = received.topk(min(k, int((received > 0).sum())))
        return [
            {
                "token": tokenizer.decode([int(i)]),
                "token_id": int(i),
                "share": round(float(v) / total, 4),
                "occurrences": int(self.key_counts[int(i)]),
            }
            for v, i in zip(values, ids, strict=True)
        ]

    def entries(self, tokenizer, layer_types: list[str] | None = None) -> list[dict]:
        """One entry per layer and head (JSON-ready)."""
        n, uniform = max(self.queries, 1), max(self.uniform, 1e-9)
        rows = []
        for layer in range(self.distance.shape[0]):
            for head in range(self.distance.shape[1]):
                local = float(self.local[layer, head]) / n
                relative = float(self.distance[layer, head]) / uniform
                row = {
                    "layer": layer,
                    "head": head,
                    "layer_attention": layer_types[layer] if layer_types else None,
                    "mean_attention_distance": round(float(self.distance[layer, head]) / n, 4),
                    "attention_entropy": round(float(self.entropy[layer, head]) / n, 4),
                    "local_attention_share": round(local, 4),
                    "first_token_share": round(float(self.first[layer, head]) / n, 4),
                    "distance_vs_uniform": round(relative, 4),
                    "kind": head_kind(local, relative),
                }
                if row["kind"] == "global":
                    row["top_attended"] = self.top_attended(layer, head, tokenizer)
                rows.append(row)
        return rows


def layer_attention_types(config) -> list[str] | None:
    """GPT-Neo's per-layer attention type (global / local window), None for other models."""
    layers = getattr(config, "attention_layers", None)
    return list(layers) if layers else None
