"""Fused linear + cross-entropy for causal LMs: the 50,257-way softmax without materialising the logits.

A TinyStories model spends most of its compute and memory on the LM head: for the 1M model (hidden 64)
the `(tokens, 50257)` logits of one 8×512 batch are 820 MB in fp32, written by the head, read and written
again by `log_softmax`, its backward and the head's backward. `fused_linear_cross_entropy` walks the
tokens in chunks: for each chunk it computes the logits, the log-sum-exp, the loss, and right away the
gradients w.r.t. the hidden states and the head weight (softmax minus one-hot, in place), then drops the
chunk. Same math as `transformers`' `ForCausalLMLoss` (shift inside, `ignore_index=-100`, mean over
valid tokens or sum / `num_items_in_batch` under gradient accumulation), one pass over the logits
instead of four, and rows whose label is ignored (padding) are skipped entirely.

`use_fused_cross_entropy(model)` installs it on a `*ForCausalLM` model in place (training forward passes
with `labels` only; evaluation and generation keep the stock forward, and nothing about the parameters
or the saved checkpoint changes). It works with `transformers.Trainer`, DDP and DeepSpeed because the
model's own `forward` computes the loss. Under DeepSpeed ZeRO-3 the head weight is read outside the head's
own forward: DeepSpeed's engine gathers a parameter read that way during its forward by itself; when the
weight is still partitioned (the model called without the engine), the fused forward gathers it and
registers it as an external parameter of the model, so the backward has it too.
"""

from __future__ import annotations

import types
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from deepspeed.runtime.zero.partition_parameters import GatheredParameters, ZeroParamStatus
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 256

__all__ = ["fused_linear_cross_entropy", "is_fused_cross_entropy", "use_fused_cross_entropy"]


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, chunk_size):
        # hidden (N, H), weight (V, H), targets (N,) with IGNORE_INDEX; returns sum(loss) / divisor
        cdtype = _compute_dtype(hidden.device, hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        valid_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)
            for start in range(0, valid_rows.numel(), chunk_size):
                rows = valid_rows[start : start + chunk_size]
                h = hidden.index_select(0, rows).to(cdtype)
                t = targets.index_select(0, rows)
                logits = (h @ w.t()).float()
                arange = torch.arange(rows.numel(), device=logits.device)
                target_logit = logits[arange, t]
                # log-sum-exp and softmax with a single exp pass, in place (torch.logsumexp is ~4× slower on CPU)
                row_max = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(row_max).exp_()
                denom = probs.sum(dim=-1, keepdim=True)
                total += (denom.log() + row_max).squeeze(1).sub_(target_logit).sum()
                if not (need_h or need_w):
                    continue
                grad = probs.div_(denom)
                grad[arange, t] -= 1.0
                grad = grad.to(cdtype)
                if need_h:
                    grad_hidden.index_copy_(0, rows, (grad @ w).to(hidden.dtype))
                if need_w:
                    if cdtype == torch.float32:
                        grad_weight.addmm_(grad.t(), h)
                    else:
                        grad_weight.add_((grad.t() @ h).float())
        divisor = float(divisor)
        if grad_hidden is not None:
            grad_hidden.div_(divisor)
        if grad_weight is not None:
            grad_weight = grad_weight.div_(divisor).to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if grad_hidden is not None else None
        gw = grad_weight * grad_output.to(grad_weight.dtype) if grad_weight is not None else None
        return gh, gw, None, None, None


def _gathered(weight: torch.Tensor, owner: nn.Module) -> AbstractContextManager:
    """The full `weight` inside the context when it is a partitioned ZeRO-3 parameter (a collective).

    It is also registered as an external parameter of `owner` (what DeepSpeed does by itself for a
    parameter read inside the engine's forward): the gradient arrives in the backward as a full tensor,
    and `owner`'s backward hook gathers the parameter again to receive it.
    """
    if getattr(weight, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE:
        return GatheredParameters([weight], modifier_rank=None, fwd_module=owner)
    return nullcontext()


@torch.compiler.disable  # data-dependent chunk loop: keep it out of torch.compile graphs (one clean break)
def fused_linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    shift: bool = True,
) -> torch.Tensor:
    """Causal-LM loss of `hidden_states @ weight.T` against `labels`, without keeping the logits.

    Equals `transformers.loss.loss_utils.ForCausalLMLoss(hidden_states @ weight.T, labels, vocab_size,
    num_items_in_batch)`: with `shift`, position t predicts label t+1; tokens labelled -100 are ignored;
    the sum is divided by `num_items_in_batch` when given, else by the number of valid tokens. `weight`
    must be whole: under ZeRO-3, read it inside the model's forward (see `use_fused_cross_entropy`).
    """
    if shift:
        labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().clamp(min=1).item()
    else:
        divisor = num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, divisor, int(chunk_size))


def _fused_forward(
    self,
    input_ids=None,
    past_key_values=None,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    logits_to_keep=0,
    **kwargs,
):
    stock = type(self).forward
    if labels is None or not self.training or not torch.is_grad_enabled() or output_attentions:
        return stock(
            self,
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    base = getattr(self, self.base_model_prefix)
    outputs = base(
        input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        use_cache=False,
        output_hidden_states=output_hidden_states,
        return_dict=True,
    )
    weight = self.get_output_embeddings().weight
    with _gathered(weight, owner=self):
        loss = fused_linear_cross_entropy(
            outputs.last_hidden_state,
            weight,
            labels,
            num_items_in_batch=num_items_in_batch,
            chunk_size=self._fused_ce_chunk_size,
        )
    return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=outputs.hidden_states)


def use_fused_cross_entropy(
    model: nn.Module, chunk_size: int = DEFAULT_CHUNK_SIZE, enable: bool = True
) -> nn.Module:
    """Compute the training loss of a `*ForCausalLM` with `fused_linear_cross_entropy`, in place.

    Only training forward passes that get `labels` change (they return `loss` and `logits=None`); eval,
    generation and the saved checkpoint are untouched. `enable=False` restores the stock forward.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(head, nn.Linear) or head.bias is not None:
        raise TypeError(f"{type(model).__name__} has no bias-free linear LM head: cannot fuse its loss")
    if not enable:
        model.__dict__.pop("forward", None)
        return model
    model._fused_ce_chunk_size = int(chunk_size)
    model.forward = types.MethodType(_fused_forward, model)
    return model


def is_fused_cross_entropy(model: nn.Module) -> bool:
    return "forward" in getattr(model, "__dict__", {})
