"""`tinystories pull`: download a released checkpoint (e.g. `roneneldan/TinyStories-33M`) from the Hub, or
convert a llama2.c checkpoint into a transformers Llama folder.

    tinystories pull --model roneneldan/TinyStories-33M                 # into the HF cache
    tinystories pull --model roneneldan/TinyStories-33M --output_dir outputs/pulled/TinyStories-33M
    tinystories pull --model roneneldan/TinyStories-33M --revision <branch, tag, commit or refs/pr/<n>>
    tinystories pull --model stories260K.bin --tokenizer tok512.bin --output_dir outputs/pulled/stories260K
    tinystories pull --model karpathy/tinyllamas/stories260K            # the Hub folder, through the HF cache

Weights, configs, tokenizer files and the card go into the HF cache; no repository code runs (no
`trust_remote_code`). Safetensors are used where the revision has them. The released repos keep only
`pytorch_model.bin` on `main`: it is read with `torch.load(weights_only=True)` (plain tensors only: a pickle
that names anything else is refused, and nothing in it runs) and converted once to `model.safetensors` in the
cache's snapshot folder of that commit (`tinystories.models.checkpoints`). A revision without tokenizer files (some of
the Hub's conversion PRs `refs/pr/<n>`) gets `main`'s. After a pull every stage accepts the Hub id
(`--model roneneldan/TinyStories-33M`, plus `--revision` when one was pulled), also with `HF_HUB_OFFLINE=1`.
`--output_dir` adds a plain copy (safetensors, config, tokenizer, card, `pull_info.json`; never a pickle) that
every stage accepts as a local model dir.

A llama2.c checkpoint (`--model` a `.bin` of any export version, a `train.py` `.pt`, or `owner/repo/<name>` such
as `karpathy/tinyllamas/stories260K` / `karpathy/tinyllamas/stories15M.pt`) becomes a `LlamaForCausalLM` folder
(`tinystories.models.llama2c`): safetensors, the head tied or not as stored, `max_position_embeddings` = the
context it was trained at, a `generation_config.json` that stops at BOS (llama2.c's stories end where the next
one's BOS is), and the tokenizer (`--tokenizer` a `tok*.bin` or sentencepiece `.model`; default the `tok*` file
beside the checkpoint) as a transformers fast tokenizer encoding exactly as llama2.c's `run.c`
(`tinystories.data.llama2c_tokenizer`). Default folder: `outputs/pulled/<name>`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import ClassVar

from transformers import AutoConfig

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.core.arguments import ModelSource, OutputArguments, check_exists
from tinystories.core.config import parse_args
from tinystories.core.paths import PULL_INFO_FILE
from tinystories.data.tokenizer import load_tokenizer
from tinystories.hub.conversion import convert_llama2c
from tinystories.models.checkpoints import ALLOW_PATTERNS, fetch_checkpoint
from tinystories.models.llama2c import is_llama2c_source


@dataclass
class PullArguments(ModelSource, OutputArguments):
    """--model: a Hub model id, or a llama2.c .bin/.pt (a path or owner/repo/<name> on the Hub); --revision:
    branch, tag, commit or refs/pr/<n>; --tokenizer: a llama2.c model's tokenizer, tok*.bin or sentencepiece
    .model (default: the one beside it); --output_dir: also copy the files here (safetensors, config,
    tokenizer), or the folder of a llama2.c conversion."""

    verify: bool = field(default=True, metadata={"help": "load the config and tokenizer after downloading"})

    HUB_FILES: ClassVar[bool] = True  # `karpathy/tinyllamas/stories260K` names a file on the Hub

    def check_paths(self):
        for flag in ("model", "tokenizer"):
            value = getattr(self, flag)
            if value and (value.startswith((".", "/", "~")) or "/" not in value.replace("\\", "/")):
                check_exists(flag, value, "pass a local file or folder, a Hub id or owner/repo/<file>")


def copy_snapshot(snapshot: Path, local_dir: Path) -> None:
    """The files a pull keeps, as plain files (the cache's symlinks resolved); pickles stay behind."""
    local_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(snapshot.rglob("*")):
        rel = src.relative_to(snapshot)
        if src.is_file() and any(fnmatch(rel.as_posix(), p) for p in ALLOW_PATTERNS):
            (local_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, local_dir / rel)


def pull(repo_id: str, revision: str | None = None, output_dir: str | None = None) -> Path:
    """Download `repo_id@revision` into the HF cache (pickled weights converted once to safetensors there).

    Returns the cache's snapshot folder, or `output_dir` holding a plain copy of it.
    """
    snapshot = fetch_checkpoint(repo_id, revision)
    if not output_dir:
        return snapshot
    folder = Path(output_dir)
    copy_snapshot(snapshot, folder)
    commit = snapshot.name if snapshot.parent.name == "snapshots" else None
    info = {"repo_id": repo_id, "revision": revision or "main", "commit": commit}
    (folder / PULL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def describe(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    parts = [
        f"{config.get('architectures', ['?'])[0]}",
        f"hidden {config.get('hidden_size', '?')}",
        f"layers {config.get('num_layers', config.get('num_hidden_layers', '?'))}",
        f"vocab {config.get('vocab_size', '?')}",
        f"{weights / 1e6:.1f} MB safetensors",
    ]
    stored = config.get("max_position_embeddings")
    line = ", ".join(parts)
    if stored and stored > TRAINED_CONTEXT and config.get("model_type") == "gpt_neo":
        line += (
            f"\nnote: config stores {stored} positions but the TinyStories models were trained at {TRAINED_CONTEXT}; "
            f"eval and generate stay within {TRAINED_CONTEXT}"
        )
    return line


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (PullArguments,)
DEFAULTS = {"model": "roneneldan/TinyStories-33M"}


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    llama2c = is_llama2c_source(args.model)
    if args.tokenizer and not llama2c:
        raise ConfigError("--tokenizer is for a llama2.c checkpoint (.bin/.pt); a Hub repo brings its own")
    if llama2c:
        folder = convert_llama2c(args.model, args.tokenizer, args.output_dir)
        args.output_dir = str(folder)
    else:
        folder = pull(args.model, args.revision, args.output_dir)
    print(f"pulled {args.model}{'@' + args.revision if args.revision else ''}: {describe(folder)}")
    if args.verify:
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
        tokenizer = load_tokenizer(str(folder))
        print(f"tokenizer: {len(tokenizer):,} tokens, eos {tokenizer.eos_token!r}")
    target = args.output_dir or args.model
    hint = f" --revision {args.revision}" if args.revision and not args.output_dir else ""
    make_args = f' ARGS="{hint.strip()}"' if hint else ""
    print(
        f"use it with: make eval MODEL={target}{make_args}   |   tinystories generate --model {target}{hint}"
    )
    print(folder)
    return 0
