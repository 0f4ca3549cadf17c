"""SFT and LoRA on pretraining's fast path: same labels, same loss as TRL's path, same LoRA weights after N steps."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import Trainer
from trl import SFTTrainer

from tinystories.stages.sft import SFTScriptArguments
from tinystories.training.finetune.arguments import FinetuneModelConfig, TinyStoriesSFTConfig
from tinystories.training.finetune.data import prepare_data
from tinystories.training.finetune.trainer import build_trainer, load_base, without_right_padding_mask


def _trainer(tiny_model_dir, instruct_txt, tmp_path, fused: bool, **overrides):
    args = SFTScriptArguments(
        base_model=str(tiny_model_dir),
        data=str(instruct_txt),
        max_train_samples=32,
        fused_cross_entropy=fused,
    )
    training_args = TinyStoriesSFTConfig(
        output_dir=str(tmp_path / ("fused" if fused else "stock")),
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        **{"max_length": 128, **overrides},
    )
    data, _ = prepare_data(args)
    model, tokenizer = load_base(args, FinetuneModelConfig())
    return build_trainer(training_args, model, tokenizer, data, fused_loss=fused)


def test_fused_loss_equals_trl_loss_on_the_same_batch(tiny_model_dir, instruct_txt, tmp_path):
    fused = _trainer(tiny_model_dir, instruct_txt, tmp_path, fused=True)
    stock = _trainer(tiny_model_dir, instruct_txt, tmp_path, fused=False)
    assert fused.fused_loss and not stock.fused_loss
    batch_f = next(iter(fused.get_train_dataloader()))
    batch_s = next(iter(stock.get_train_dataloader()))
    assert torch.equal(batch_f["labels"], batch_s["labels"])  # the same TRL labels: prompt -100, story + EOS
    assert (batch_f["labels"] == -100).any() and (batch_f["labels"] != -100).any()
    fused.model.train(), stock.model.train()
    loss_fused = fused.compute_loss(fused.model, dict(batch_f))
    loss_trl = SFTTrainer.compute_loss(stock, stock.model, dict(batch_s))  # TRL's own path
    torch.testing.assert_close(loss_fused, loss_trl, atol=1e-5, rtol=1e-5)
    loss_fused.backward(), loss_trl.backward()
    for (name, pf), (_, ps) in zip(
        fused.model.named_parameters(), stock.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(pf.grad, ps.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_right_padded_batch_trains_without_its_mask_to_the_same_loss(tiny_model_dir, instruct_txt, tmp_path):
    """The fused path drops the mask of a right-padded batch: the loss and every gradient are those of the
    masked forward (1e-6); a mask that pads on the left, or padding with a label, is kept. Rows up to 512
    tokens: the longest cross the 256-token window of the local layers."""
    trainer = _trainer(tiny_model_dir, instruct_txt, tmp_path, fused=True, max_length=512)
    batch = next(iter(trainer.get_train_dataloader()))
    mask = batch["attention_mask"]
    assert mask.shape[1] > 256 and len(set(mask.sum(1).tolist())) == 4  # four rows, four lengths
    assert "attention_mask" not in without_right_padding_mask(batch)
    trainer.model.train()
    grads = []
    for compute in (trainer.compute_loss, lambda model, inputs: Trainer.compute_loss(trainer, model, inputs)):
        loss = compute(trainer.model, {**batch, "use_cache": False})
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
        trainer.model.zero_grad()
    (dropped, g_dropped), (masked, g_masked) = grads
    assert abs(dropped.item() - masked.item()) <= 1e-6 and dropped.item() > 1.0
    for name, grad in g_masked.items():
        torch.testing.assert_close(g_dropped[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    left = {**batch, "attention_mask": mask.flip(1)}  # the same rows padded on the left
    assert without_right_padding_mask(left) is left
    labelled_pad = {**batch, "labels": torch.where(mask == 0, batch["input_ids"], batch["labels"])}
    assert without_right_padding_mask(labelled_pad) is labelled_pad


def test_lora_fast_path_trains_the_same_adapter(tiny_model_dir, instruct_txt, tmp_path):
    from tinystories.stages.lora import main

    outs = {}
    for fused in (True, False):
        out = tmp_path / f"lora-{fused}"
        argv = ["--base_model", str(tiny_model_dir), "--data", str(instruct_txt), "--output_dir", str(out)]
        argv += ["--max_steps", "3", "--per_device_train_batch_size", "4", "--max_length", "128"]
        argv += ["--learning_rate", "0.5", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
        argv += ["--save_strategy", "no", "--eval_strategy", "no", "--num_samples", "0", "--merge", "false"]
        argv += ["--report_to", "none", "--max_train_samples", "12", "--max_eval_samples", "4", "--seed", "1"]
        argv += ["--fused_cross_entropy", str(fused).lower(), "--use_cpu", "true", "--optim", "sgd"]
        assert main(argv) == 0
        outs[fused] = load_file(out / "adapter_model.safetensors")
    assert outs[True].keys() == outs[False].keys() and len(outs[True]) > 0
    moved = 0
    for key in outs[True]:
        torch.testing.assert_close(outs[True][key], outs[False][key], atol=2e-5, rtol=1e-4, msg=key)
        moved += int(outs[True][key].abs().sum() > 0)
    assert moved == len(outs[True])  # every adapter matrix trained (lora_B starts at zero)
