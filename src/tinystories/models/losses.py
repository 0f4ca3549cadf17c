"""Fused linear + cross-entropy for causal LMs: the 50,257-way softmax without materialising the logits.

A TinyStories model spends most of its compute and memory on the LM head: for the 1M model (hidden 64)
the `(tokens, 50257)` logits of one 8×512 batch are 820 MB in fp32, written by the head, read and written
again by `log_softmax`, its backward and the head's backward. `fused_linear_cross_entropy` walks the
tokens in chunks: for each chunk it computes the logits, the log-sum-exp, the loss, and right away the
gradients w.r.t. the hidden states and the head weight (softmax minus one-hot, in place), then drops the
chunk. Same math as `transformers`' `ForCausalLMLoss` (shift inside, `ignore_index=-100`, mean over
valid tokens or sum / `num_items_in_batch` under gradient accumulation), one pass over the logits
instead of four, and rows whose label is ignored (padding) are skipped entirely.

`use_fused_cross_entropy(model)` installs it on a `*ForCausalLM` model in place (forward passes with `labels`
in training and in no-grad evaluation, which returns the loss only; generation keeps the stock forward, and
nothing about the parameters or the saved checkpoint changes). The chunk size is per device
(`default_loss_chunk_size`: 256 rows on a CPU, 4096 on a GPU; the recipe key `loss_chunk_size` overrides it);
on a GPU the head is padded to a multiple of 64 rows for the matmuls and the weight gradient accumulates
inside the GEMM (fp32 output). It works with `transformers.Trainer`, DDP and DeepSpeed because the
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
# Rows (tokens) per chunk by device: on a CPU small chunks stay in cache (256 measured best on 2 CPU cores);
# on a GPU each chunk re-reads the fp32 (V, H) weight-gradient accumulator, so a few thousand rows amortise it
# (an 80 x 512 micro-batch is 10 chunks, not 160) and keep the GEMMs wide. A (4096, 50304) fp32 chunk is 0.8 GB.
CHUNK_SIZES = {"cuda": 4096}
DEFAULT_CHUNK_SIZE = 256
# The head's rows are padded to a multiple of this for the matmuls (tensor-core aligned GEMMs; the padded
# logits are -inf and never reach the loss or the gradients; the model keeps its 50,257 rows).
VOCAB_MULTIPLES = {"cuda": 64}

__all__ = [
    "default_loss_chunk_size",
    "fused_linear_cross_entropy",
    "is_fused_cross_entropy",
    "use_fused_cross_entropy",
]


def default_loss_chunk_size(device_type: str) -> int:
    """Rows per chunk of the fused loss on a device type (`cuda`, `cpu`, `mps`)."""
    return CHUNK_SIZES.get(device_type, DEFAULT_CHUNK_SIZE)


def vocab_multiple(device_type: str) -> int:
    """The LM head's rows are padded to a multiple of this inside the fused loss (1: no padding)."""
    return VOCAB_MULTIPLES.get(device_type, 1)


def skips_ignored_rows(device_type: str) -> bool:
    """Whether the fused loss gathers the labelled rows first (a `nonzero`, i.e. a host sync on a GPU).

    On a CPU there is no sync to avoid and ignored rows (prompt tokens, padding) cost nothing; on a GPU the
    loss walks contiguous chunks and masks the ignored rows instead, so a step never waits for the host.
    """
    return device_type == "cpu"


def weight_grad_in_gemm(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the weight gradient is accumulated by the GEMM itself (bf16/fp16 inputs, an fp32 output).

    `torch.addmm(..., out_dtype=torch.float32, out=acc)` is one GEMM whose epilogue adds into the fp32
    accumulator (CUDA only); elsewhere a half-precision product is cast and added (three more passes).
    """
    return device_type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _chunks(targets: torch.Tensor, chunk_size: int):
    """(rows, targets, valid mask or None) per chunk: gathered labelled rows, or contiguous masked slices."""
    if skips_ignored_rows(targets.device.type):
        valid_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        for start in range(0, valid_rows.numel(), chunk_size):
            rows = valid_rows[start : start + chunk_size]
            yield rows, targets.index_select(0, rows), None
        return
    for start in range(0, targets.numel(), chunk_size):
        rows = slice(start, min(start + chunk_size, targets.numel()))
        t = targets[rows]
        valid = t != IGNORE_INDEX
        yield rows, torch.where(valid, t, 0), valid


def _accumulate(acc: torch.Tensor, grad: torch.Tensor, h: torch.Tensor) -> None:
    """acc (fp32) += grad.T @ h."""
    if grad.dtype == torch.float32:
        acc.addmm_(grad.t(), h)
    elif weight_grad_in_gemm(acc.device.type, grad.dtype):
        torch.addmm(acc, grad.t(), h, out_dtype=torch.float32, out=acc)
    else:
        acc.add_((grad.t() @ h).float())


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, chunk_size):
        # hidden (N, H), weight (V, H), targets (N,) with IGNORE_INDEX; returns sum(loss) / divisor
        cdtype = _compute_dtype(hidden.device, hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        vocab = weight.shape[0]
        padded = -(-vocab // vocab_multiple(hidden.device.type)) * vocab_multiple(hidden.device.type)
        grad_hidden = torch.zeros_like(hidden) if need_h else None
        grad_weight = (
            torch.zeros((padded, weight.shape[1]), dtype=torch.float32, device=weight.device)
            if need_w
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = F.pad(weight.to(cdtype), (0, 0, 0, padded - vocab))
            for rows, t, valid in _chunks(targets, chunk_size):
                h = (hidden.index_select(0, rows) if valid is None else hidden[rows]).to(cdtype)
                logits = (h @ w.t()).float()
                if padded > vocab:
                    logits[:, vocab:] = float("-inf")
                arange = torch.arange(logits.shape[0], device=logits.device)
                target_logit = logits[arange, t]
                # log-sum-exp and softmax with a single exp pass, in place (torch.logsumexp is ~4× slower on CPU)
                row_max = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(row_max).exp_()
                denom = probs.sum(dim=-1, keepdim=True)
                row_loss = (denom.log() + row_max).squeeze(1).sub_(target_logit)
                total += (row_loss if valid is None else row_loss * valid).sum()
                if not (need_h or need_w):
                    continue
                grad = probs.div_(denom)
                grad[arange, t] -= 1.0
                if valid is not None:
                    grad.mul_(valid.unsqueeze(1))  # ignored rows: no gradient
                grad = grad.to(cdtype)
                if need_h:
                    if valid is None:
                        grad_hidden.index_copy_(0, rows, (grad @ w).to(hidden.dtype))
                    else:
                        grad_hidden[rows] = (grad @ w).to(hidden.dtype)
                if need_w:
                    _accumulate(grad_weight, grad, h)
        if grad_hidden is not None:
            grad_hidden.div_(divisor)
        if grad_weight is not None:
            grad_weight = grad_weight[:vocab].div_(divisor).to(weight.dtype)
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
    chunk_size: int | None = None,
    shift: bool = True,
) -> torch.Tensor:
    """Causal-LM loss of `hidden_states @ weight.T` against `labels`, without keeping the logits.

    Equals `transformers.loss.loss_utils.ForCausalLMLoss(hidden_states @ weight.T, labels, vocab_size,
    num_items_in_batch)`: with `shift`, position t predicts label t+1; tokens labelled -100 are ignored;
    the sum is divided by `num_items_in_batch` when given, else by the number of valid tokens. `weight`
    must be whole: under ZeRO-3, read it inside the model's forward (see `use_fused_cross_entropy`).
    `chunk_size` None: the device's default (`default_loss_chunk_size`). Nothing here waits for the host on
    a GPU: the divisor stays a tensor and ignored rows are masked, not gathered.
    """
    if shift:
        labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().clamp(min=1)
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device)
    divisor = divisor.to(device=hidden.device, dtype=torch.float32)
    chunk_size = int(chunk_size or default_loss_chunk_size(hidden.device.type))
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, divisor, chunk_size)


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
    # the fused loss whenever labels come for a loss: training, and evaluation without grad (loss only, so the
    # Trainer's eval never builds the (tokens, vocab) logits); logits for everything else
    wants_logits = not self.training and torch.is_grad_enabled()
    if labels is None or output_attentions or wants_logits or "fused_lm_head" in kwargs:
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
    extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}  # GPT-Neo only
    outputs = base(
        input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        use_cache=False,
        output_hidden_states=output_hidden_states,
        return_dict=True,
        **extra,
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
    model: nn.Module, chunk_size: int | None = None, enable: bool = True
) -> nn.Module:
    """Compute the loss of a `*ForCausalLM` with `fused_linear_cross_entropy`, in place.

    Forward passes that get `labels` in training, or without grad (the Trainer's evaluation), return `loss`
    and `logits=None`; generation, calls without labels and the saved checkpoint are untouched.
    `chunk_size` None: the default of the device the forward runs on. `enable=False` restores the stock forward.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(head, nn.Linear) or head.bias is not None:
        raise TypeError(f"{type(model).__name__} has no bias-free linear LM head: cannot fuse its loss")
    if not enable:
        model.__dict__.pop("forward", None)
        return model
    model._fused_ce_chunk_size = int(chunk_size) if chunk_size else None
    model.forward = types.MethodType(_fused_forward, model)
    return model


def is_fused_cross_entropy(model: nn.Module) -> bool:
    return "forward" in getattr(model, "__dict__", {})
