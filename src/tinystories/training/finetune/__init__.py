"""The one fine-tuning core under `tinystories sft` and `tinystories lora`.

Arguments (base model, data, card samples; TRL's `SFTConfig` with recipe defaults; TRL's `ModelConfig` for
attention, PEFT and quantization), data preparation (Instruct examples → `prompt`/`completion`, or plain
stories → `text`), base loading, the trainer (`SFTTrainer` + the pretraining Trainer's bits-per-byte
logging) and the label checks. SFT is this path without PEFT; LoRA/DoRA/QLoRA is the same path with the
PEFT and quantization configurations TRL builds from `ModelConfig` (`get_peft_config`,
`get_quantization_config`).

Data is TinyStories-Instruct text: instruction lines (`Features:`, `Words:`, `Summary:`,
`Random sentence:`) then `Story:` and the story (`tinystories.data.instruct`). Each example is split into a
`prompt` (the instructions up to and including the `Story: ` line) and a `completion` (the blank line and
the story); TRL then masks
the prompt tokens to -100 and appends EOS to the completion, so the loss is on the story and its end only,
and generation learns to stop. Packing uses TRL's `wrapped` strategy (its default `bfd` packs padding-free,
which needs per-sequence position ids that GPT-Neo's attention ignores).
"""
