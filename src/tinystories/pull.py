"""`tinystories pull`: download a released checkpoint (e.g. `roneneldan/TinyStories-33M`) from the Hub.

    tinystories pull --model roneneldan/TinyStories-33M                 # into the HF cache
    tinystories pull --model roneneldan/TinyStories-33M --local_dir outputs/pulled/TinyStories-33M
    tinystories pull --model roneneldan/TinyStories-33M --revision <branch, tag or commit>

Only safetensors weights, configs and tokenizer files are downloaded: pickled weights (`*.bin`, `*.pt`,
`*.ckpt`, `*.h5`, `*.msgpack`) never are, and no repository code runs (no `trust_remote_code`). After a pull
into the cache, every stage accepts the Hub id (`--model roneneldan/TinyStories-33M`) and loads it from there,
also with `HF_HUB_OFFLINE=1`. A repo without safetensors on the requested revision is an error that names the
fix (a revision that has them, e.g. the Hub's conversion PR `refs/pr/<n>`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig

from tinystories.config import parse_args
from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.tokenizer import load_tokenizer

ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "adapter_config.json",
    "README.md",
    "*.jinja",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl", ".ot")


@dataclass
class PullArguments:
    model: str = field(default="roneneldan/TinyStories-33M", metadata={"help": "Hub model id"})
    revision: str | None = field(default=None, metadata={"help": "branch, tag, commit or refs/pr/<n>"})
    local_dir: str | None = field(
        default=None, metadata={"help": "copy the files here instead of only the HF cache"}
    )
    verify: bool = field(default=True, metadata={"help": "load the config and tokenizer after downloading"})


def _remote_files(repo_id: str, revision: str | None) -> list[str] | None:
    """The repo's file list, or None when offline (then the cache decides)."""
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError:
        raise ConfigError(
            f"model repo {repo_id!r} not found on the Hub (or private: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"revision {revision!r} not found in {repo_id!r}") from None
    except GatedRepoError:
        raise ConfigError(
            f"{repo_id!r} is gated: accept its terms on the Hub and log in with `hf auth login`"
        ) from None
    except OfflineModeIsEnabled:
        return None
    except Exception as err:  # no connection (httpx errors are not OSError): the cache may still have it
        print(
            f"warning: cannot reach the Hub ({type(err).__name__}: {err}); trying the local HF cache",
            file=sys.stderr,
        )
        return None


def pull(repo_id: str, revision: str | None = None, local_dir: str | None = None) -> Path:
    """Download the safetensors checkpoint of `repo_id`; returns the folder holding it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(
            f"--model must be a Hub id like roneneldan/TinyStories-33M, got {repo_id!r}: {e}"
        ) from None
    files = _remote_files(repo_id, revision)
    if files is not None and not any(f.endswith(".safetensors") for f in files):
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        raise ConfigError(
            f"{repo_id}@{revision or 'main'} has no safetensors weights (only {pickles or 'no weights'}); pickled "
            "weights are never loaded. Use a revision that has safetensors: the Hub's conversion bot opens a pull "
            f"request with them (see https://huggingface.co/{repo_id}/discussions), pass --revision refs/pr/<n>."
        )
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            local_dir=None if files is None else local_dir,
            repo_type="model",
        )
    except LocalEntryNotFoundError as e:
        raise ConfigError(
            f"{repo_id} is not in the local HF cache and the Hub is unreachable (HF_HUB_OFFLINE?): pull it once "
            f"with network access. ({e})"
        ) from None
    folder = Path(folder)
    if local_dir and files is None:  # offline: copy the cached snapshot (symlinks resolved) into local_dir

        def _ignore(directory, names):
            return [
                n
                for n in names
                if Path(directory, n).is_file() and not any(fnmatch(n, p) for p in ALLOW_PATTERNS)
            ]

        shutil.copytree(folder, local_dir, dirs_exist_ok=True, ignore=_ignore)
        folder = Path(local_dir)
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"no safetensors weights in the downloaded {repo_id}: pass a --revision that has them"
        )
    if local_dir:
        commit = None
        if not constants.HF_HUB_OFFLINE:
            try:
                commit = HfApi().model_info(repo_id, revision=revision).sha
            except Exception:  # the files are there; the commit is only provenance
                commit = None
        info = {"repo_id": repo_id, "revision": revision or "main", "commit": commit}
        (folder / "pull_info.json").write_text(json.dumps(info, indent=2) + "\n")
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
    if stored and stored > TRAINED_CONTEXT:
        line += (
            f"\nnote: config stores {stored} positions but the TinyStories models were trained at {TRAINED_CONTEXT}; "
            f"eval and generate stay within {TRAINED_CONTEXT}"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args([PullArguments], argv)
    folder = pull(args.model, args.revision, args.local_dir)
    print(f"pulled {args.model}{'@' + args.revision if args.revision else ''}: {describe(folder)}")
    if args.verify:
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
        tokenizer = load_tokenizer(str(folder))
        print(f"tokenizer: {len(tokenizer):,} tokens, eos {tokenizer.eos_token!r}")
    target = args.local_dir or args.model
    print(f"use it with: make eval MODEL={target}   |   tinystories generate --model {target}")
    print(folder)
    return 0
