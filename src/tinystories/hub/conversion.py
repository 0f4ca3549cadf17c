"""A llama2.c checkpoint as a transformers Llama folder (`tinystories pull`, `tinystories leaderboard`).

The weights come from `models.llama2c` (read without running code, mapped onto `LlamaForCausalLM`), the tokenizer
from `data.llama2c_tokenizer` (a fast tokenizer that encodes as llama2.c's `run.c`); `pull_info.json` records the
source, its format and the SHA-256 of both files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.core.paths import PULL_INFO_FILE
from tinystories.data.llama2c_tokenizer import TOKENIZER_FIX, load_llama2c_tokenizer, save_llama2c_tokenizer
from tinystories.models.llama2c import fetch_llama2c, read_checkpoint, to_transformers


def convert_llama2c(source: str, tokenizer: str | None = None, output_dir: str | None = None) -> Path:
    """A llama2.c checkpoint (+ its tokenizer) as a transformers Llama folder; returns the folder."""
    model_file, tokenizer_file = fetch_llama2c(source, tokenizer)
    if tokenizer_file is None:
        raise ConfigError(f"no tok*.bin / tok*.model beside {model_file.name} ({source}): {TOKENIZER_FIX}")
    args, weights = read_checkpoint(model_file)
    tok = load_llama2c_tokenizer(
        tokenizer_file, args.vocab_size, args.seq_len
    )  # checked before anything is written
    model = to_transformers(args, weights)
    folder = Path(output_dir or Path("outputs") / "pulled" / model_file.stem)
    model.save_pretrained(folder)  # model.safetensors, config.json, generation_config.json
    save_llama2c_tokenizer(tok, folder, tokenizer_file.name)
    info = {
        "source": source,
        "format": f"llama2.c {'.pt' if model_file.suffix == '.pt' else f'.bin version {args.version}'}",
        "checkpoint_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "tokenizer": str(tokenizer or tokenizer_file.name),
        "tokenizer_sha256": hashlib.sha256(tokenizer_file.read_bytes()).hexdigest(),
    }
    (folder / PULL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder
