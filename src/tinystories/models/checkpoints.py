"""Checkpoints as they really are on the Hub, read without running any pickle.

The released TinyStories repos keep `pytorch_model.bin` on `main`; safetensors exist only on the Hub's
conversion pull requests (`refs/pr/<n>`), some of them without tokenizer files. `fetch_checkpoint` downloads one
revision into the HF cache: its safetensors where it has them, else its `pytorch_model.bin`, which
`ensure_safetensors` reads with `torch.load(weights_only=True)` (plain tensors only: a pickle that names any
other object is refused before anything in it runs) and converts once to `model.safetensors` in the snapshot
folder of that commit. A revision without tokenizer files gets `main`'s. Offline, `from_pretrained(repo_id,
use_safetensors=True)` then finds the converted file; `modeling.load_model` loads the snapshot folder itself.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors.torch import save_file

from tinystories.core import ConfigError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
PICKLED_WEIGHTS = "pytorch_model.bin"
PICKLED_INDEX = "pytorch_model.bin.index.json"
PICKLED_PATTERNS = [PICKLED_WEIGHTS, "pytorch_model-*.bin", PICKLED_INDEX]
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "*.jinja",
]
# what a pull keeps (and copies into --output_dir): never a pickle, never repository code
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "adapter_config.json",
    "README.md",
]
SAFE_FIX = (
    "use a revision with safetensors (the Hub's conversion pull request: --revision refs/pr/<n>, see the repo's "
    "discussions) or convert the weights yourself where you trust the file"
)


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(
            f"--model must be a Hub id like roneneldan/TinyStories-33M, got {repo_id!r}: {e}"
        ) from None


def remote_files(repo_id: str, revision: str | None) -> list[str] | None:
    """The repo's file list at `revision`, or None when offline (then the cache decides)."""
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


# ------------------------------------------------------------------------------ pickled -> safetensors
def pickled_weight_files(folder: Path) -> list[Path]:
    """`pytorch_model.bin`, or the shards a `pytorch_model.bin.index.json` names (inside `folder` only)."""
    index = folder / PICKLED_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [folder / Path(name).name for name in shards]
    return [folder / PICKLED_WEIGHTS] if (folder / PICKLED_WEIGHTS).is_file() else []


def _unpickling_reason(err: Exception) -> str:
    """The line of torch's weights_only error that says what was refused (e.g. `GLOBAL posix.system`)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(boilerplate)), type(err).__name__)


def read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a pickled checkpoint, read with `weights_only=True`: tensors only, nothing executed."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"refused {path.name}: torch.load(weights_only=True), which reads plain tensors only, stopped before "
            f"running anything in it ({_unpickling_reason(err)}). Pickled weights are never fully unpickled: "
            f"{SAFE_FIX}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ConfigError(
            f"could not read {path.name} as a PyTorch checkpoint ({type(err).__name__}: {err}): {SAFE_FIX}"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ConfigError(
            f"{path.name} holds no plain state dict (parameter name -> tensor), so it cannot be loaded as "
            f"model weights: {SAFE_FIX}"
        )
    return data


def _unshare(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Tensors safetensors can store: a tied alias (lm_head = wte) dropped when the config ties, else copied."""
    exact, storages, out = set(), set(), {}
    for name, tensor in state_dict.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if ptr is not None and key in exact and tied:
            continue  # from_pretrained ties it again from the kept name
        out[name] = tensor.clone() if ptr is not None and ptr in storages else tensor.contiguous()
        exact.add(key)
        storages.add(ptr)
    return out


def ensure_safetensors(folder: Path, label: str | None = None) -> Path:
    """`folder` with safetensors weights: those it has, or `model.safetensors` converted once from its pickle."""
    folder = Path(folder)
    label = label or str(folder)
    if any(folder.glob("*.safetensors")):
        return folder
    pickled = pickled_weight_files(folder)
    if not pickled or not all(p.is_file() for p in pickled):
        raise ConfigError(
            f"{label} has no model weights here (neither {WEIGHTS_NAME} nor {PICKLED_WEIGHTS}); if it is a Hub "
            "id, pull it once with network access: tinystories pull --model <id> [--revision ...]"
        )
    state_dict: dict[str, torch.Tensor] = {}
    for path in pickled:
        state_dict.update(read_pickled_weights(path))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    tensors = _unshare(state_dict, tied=config.get("tie_word_embeddings", True) is not False)
    target, tmp = folder / WEIGHTS_NAME, folder / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", "converted_from": pickled[0].name})
        os.replace(tmp, target)  # atomic: concurrent ranks converting the same folder never see half a file
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"could not write {target} (converted from {pickled[0].name}): {err}. Copy the model to a writable "
            "folder, or point HF_HUB_CACHE at one"
        ) from None
    logger.info(
        "%s: converted %s to %s (tensors only, read with weights_only=True)", label, pickled[0].name, target
    )
    return folder


# ------------------------------------------------------------------------------------------- the Hub
def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, repo_type="model"))
    except LocalEntryNotFoundError as e:
        raise ConfigError(
            f"{repo_id}@{revision or 'main'} is not in the local HF cache and the Hub is unreachable "
            f"(HF_HUB_OFFLINE?): pull it once with network access: tinystories pull --model {repo_id}"
            f"{' --revision ' + revision if revision else ''}. ({e})"
        ) from None


def _has_tokenizer(folder: Path) -> bool:
    return any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )


def _complete_tokenizer(folder: Path, repo_id: str, revision: str | None) -> None:
    """A revision without tokenizer files (some conversion PRs) gets `main`'s, copied into its snapshot."""
    if revision in (None, "main") or _has_tokenizer(folder):
        return
    try:
        main = Path(snapshot_download(repo_id, allow_patterns=TOKENIZER_FILES, repo_type="model"))
    except (
        Exception
    ) as err:  # the model still loads; a stage that needs the tokenizer says so (or --tokenizer)
        logger.warning("%s@%s has no tokenizer files and main's are out of reach: %s", repo_id, revision, err)
        return
    copied = []
    for src in sorted(main.iterdir()):
        if src.is_file() and any(fnmatch(src.name, p) for p in TOKENIZER_FILES):
            shutil.copyfile(src, folder / src.name)  # follows the cache's symlink: a plain file here
            copied.append(src.name)
    logger.info("%s@%s has no tokenizer: took %s from main", repo_id, revision, ", ".join(copied))


def fetch_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """The HF-cache snapshot folder of `repo_id@revision`, with safetensors weights and tokenizer files."""
    check_repo_id(repo_id)
    label = f"{repo_id}@{revision or 'main'}"
    files = remote_files(repo_id, revision)
    patterns = list(ALLOW_PATTERNS)
    if files is not None and not any(f.endswith(".safetensors") for f in files):
        if not any(fnmatch(f, p) for f in files for p in PICKLED_PATTERNS):
            raise ConfigError(
                f"{label} has no model weights (neither safetensors nor {PICKLED_WEIGHTS}): pass a --revision "
                "(branch, tag, commit or refs/pr/<n>) that has them"
            )
        patterns += PICKLED_PATTERNS  # downloaded as data; read with weights_only=True, converted once
    folder = _snapshot(repo_id, revision, patterns)
    ensure_safetensors(folder, label)
    _complete_tokenizer(folder, repo_id, revision)
    return folder
