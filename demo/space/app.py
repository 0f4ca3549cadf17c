"""A Gradio demo of a TinyStories model: a plain story beginning or the TinyStories-Instruct fields, streamed.

Self-contained on purpose (transformers, torch and gradio only): a Hugging Face Space installs nothing but
`requirements.txt`, so this file does not import the `tinystories` package. It builds the same Instruct
prompt as `tinystories.data.instruct.build_prompt` (a test checks it) and samples as
`tinystories.evaluation.generation.generate_story` does: at most 512 tokens of prompt + story (the context
the released models were trained at), stop at the end-of-text token, temperature 0 = greedy.

    python demo/space/app.py --model roneneldan/TinyStories-Instruct-33M   # or a local model dir
    TINYSTORIES_MODEL=outputs/quickstart/sft python demo/space/app.py       # the same, from the environment

On a Space the model is `DEFAULT_MODEL` below (`make push ... ARGS="--space true"` writes it) unless the
Space sets the `TINYSTORIES_MODEL` variable.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
from collections.abc import Iterator, Sequence

import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextIteratorStreamer, set_seed

DEFAULT_MODEL = "roneneldan/TinyStories-33M"
MODEL_ENV = "TINYSTORIES_MODEL"
TRAINED_CONTEXT = 512  # the released configs store 2048 positions, but the models were trained at 512
FEATURES = ("Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict")
# the Instruct lines in the order `build_prompt` writes them; the prompt ends with the `Story: ` line
FIELDS = (
    ("features", "Features"),
    ("words", "Words"),
    ("summary", "Summary"),
    ("random_sentence", "Random sentence"),
)
PROMPT_END = "Story: \n"


def split_words(text: str | None) -> list[str]:
    """`dog, ball happy` -> ['dog', 'ball', 'happy'] (commas or spaces)."""
    return [w for w in re.split(r"[,\s]+", text or "") if w]


def build_prompt(
    words: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    summary: str | None = None,
    random_sentence: str | None = None,
) -> str:
    """The TinyStories-Instruct prompt: one line per given field, then `Story: ` and a newline."""
    values = {"features": list(features or []), "words": list(words or []), "summary": summary}
    values["random_sentence"] = random_sentence
    lines = []
    for name, label in FIELDS:
        value = values[name]
        text = ", ".join(value) if isinstance(value, list) else " ".join(str(value or "").split())
        if text:
            lines.append(f"{label}: {text}\n")
    return "".join(lines) + PROMPT_END


def full_prompt(
    words: str, features: Sequence[str], summary: str, random_sentence: str, beginning: str
) -> str:
    """The Instruct prompt when any field is set (else nothing), then the plain story beginning."""
    word_list = split_words(words)
    instruct = bool(word_list or features or (summary or "").strip() or (random_sentence or "").strip())
    prompt = build_prompt(word_list, features, summary, random_sentence) if instruct else ""
    return prompt + (beginning or "")


def load(model_id: str):
    """(model, tokenizer) from a Hub id or a local model dir, float32 on the CPU (or the first GPU)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    except Exception as err:
        raise SystemExit(
            f"could not load {model_id!r} ({type(err).__name__}: {err}): pass --model (or set {MODEL_ENV}) to a "
            "Hub id or a local folder with config.json, the weights and the tokenizer (a LoRA adapter: its merged/ dir)"
        ) from err
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def context_limit(model) -> int:
    return min(
        TRAINED_CONTEXT, int(getattr(model.config, "max_position_embeddings", None) or TRAINED_CONTEXT)
    )


def stream_story(
    model, tokenizer, prompt: str, temperature: float, top_p: float, max_new_tokens: int, seed: int
) -> Iterator[str]:
    """Yield the continuation of `prompt` as it grows (without the prompt and the end-of-text token)."""
    eos = tokenizer.eos_token_id
    ids = (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []) or [eos]
    room = context_limit(model) - len(ids)
    if room <= 0:
        raise gr.Error(
            f"the prompt is {len(ids)} tokens; the model reads at most {context_limit(model)}: shorten it"
        )
    sampling = temperature is not None and float(temperature) > 0
    config = GenerationConfig(
        max_length=len(ids) + max(1, min(int(max_new_tokens), room)),
        do_sample=sampling,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        **({"temperature": float(temperature), "top_p": float(top_p or 1.0), "top_k": 0} if sampling else {}),
    )
    input_ids = torch.tensor([ids], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    set_seed(int(seed))
    kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    kwargs |= {"generation_config": config, "streamer": streamer}
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()


def build_demo(model_id: str) -> gr.Blocks:
    model, tokenizer = load(model_id)

    def write(words, features, summary, random_sentence, beginning, temperature, top_p, max_new_tokens, seed):
        prompt = full_prompt(words, features or [], summary, random_sentence, beginning)
        for text in stream_story(model, tokenizer, prompt, temperature, top_p, max_new_tokens, seed):
            yield ((beginning or "") + text).strip()  # a plain beginning is part of the story

    with gr.Blocks(title="TinyStories") as demo:
        gr.Markdown(
            f"# TinyStories\nModel: `{model_id}`. Give a story beginning, or the Instruct fields "
            "(an Instruct model follows them), and the model writes the story."
        )
        with gr.Row():
            with gr.Column():
                beginning = gr.Textbox(label="Story beginning", value="Once upon a time", lines=2)
                words = gr.Textbox(label="Words (Instruct)", placeholder="dog, ball, happy")
                features = gr.CheckboxGroup(list(FEATURES), label="Features (Instruct)")
                summary = gr.Textbox(label="Summary (Instruct)")
                random_sentence = gr.Textbox(label="Random sentence (Instruct)")
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
                    max_new_tokens = gr.Slider(1, TRAINED_CONTEXT, value=300, step=1, label="Max new tokens")
                    seed = gr.Number(value=42, precision=0, label="Seed")
                button = gr.Button("Write a story", variant="primary")
            story = gr.Textbox(label="Story", lines=18)
        inputs = [
            words,
            features,
            summary,
            random_sentence,
            beginning,
            temperature,
            top_p,
            max_new_tokens,
            seed,
        ]
        button.click(write, inputs, story, api_name="generate")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=os.environ.get(MODEL_ENV) or DEFAULT_MODEL, help="Hub id or local dir"
    )
    parser.add_argument("--host", default=None, help="server address (default 127.0.0.1; on a Space 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="server port (default 7860)")
    args = parser.parse_args(argv)
    print(f"loading {args.model}", flush=True)
    build_demo(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
