"""`tinystories push`: publish a model (or dataset) folder on the Hub, or stage it with `--dry_run`.

Every push first stages the exact upload in a folder (`outputs/push/<user>__<name>/` unless `--stage_dir`):
training leftovers are left out (checkpoints, optimizer state, pickled `training_args.bin`), the model card is
re-rendered with the real repo id, a LoRA adapter's `base_model_name_or_path` is set to its Hub id, and every
text file is checked for local absolute paths and the token. A dry run stops there and prints the staged path
as its last line; a real push checks the token (`whoami`) and the repo (create or reuse, branch) before
uploading that staged folder with `HfApi.upload_folder`.

`space=True` stages the Gradio demo instead (`demo/space/` of the checkout: app.py, README.md with the Space
front matter, requirements.txt) with the model it loads, a Hub id, written into the app and the front matter.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
from pathlib import Path

from datasets import DatasetDict, load_from_disk
from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from tinystories.core import ConfigError
from tinystories.core.paths import check_output_dir, output_lock
from tinystories.hub import cards
from tinystories.hub.scrub import host_names, scrub_text

logger = logging.getLogger(__name__)

# Never uploaded: training state and pickles (training_args.bin records local paths), caches, VCS folders.
EXCLUDE = (
    "checkpoint-*",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "run_settings.json",  # the full argument set of a run, for its own reruns (`training.tail`)
    "global_step*",
    "latest",
    "zero_to_fp32.py",
    "__pycache__",
    "*.pyc",
    ".git",
    ".cache",
    "wandb",
    ".ipynb_checkpoints",
    "*.lock",
    "runs",  # TensorBoard events embed the training arguments, local paths included
    "events.out.tfevents*",
)


TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".csv", ".py", ".cfg", ".j2"}


MODEL_FILES = ("*.safetensors",)


LOGIN_HINT = "run `hf auth login` (formerly `huggingface-cli login`) or set the HF_TOKEN environment variable"


def _split_repo(repo_id: str) -> tuple[str, str]:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ConfigError(f"REPO must be `user/name` (or `org/name`), got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"invalid repo id {repo_id!r}: {e}") from None
    user, name = repo_id.split("/")
    return user, name


def default_stage_dir(repo_id: str) -> Path:
    user, name = _split_repo(repo_id)
    return Path("outputs") / "push" / f"{user}__{name}"


def _excluded(rel: Path, adapter: bool = False) -> bool:
    """`adapter`: a LoRA folder, whose `merged/` export is a separate model (`make push MODEL=.../merged`)."""
    if adapter and rel.parts and rel.parts[0] == "merged":
        return True
    return any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in EXCLUDE)


def _check_folder(folder: Path, repo_type: str) -> None:
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder: pass MODEL=<a trained model dir under outputs/>")
    if repo_type == "model":
        has_weights = any(folder.glob("*.safetensors"))
        if not has_weights:
            pickles = [p.name for p in folder.glob("*.bin") if p.name != "training_args.bin"]
            hint = f" (found pickled weights {pickles}: re-save with safetensors)" if pickles else ""
            raise ConfigError(
                f"no *.safetensors weights in {str(folder)!r}{hint}; point MODEL at a saved model dir"
            )
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise ConfigError(
                f"{str(folder)!r} has no config.json / adapter_config.json: not a saved model folder"
            )
        _check_adapter_base(folder)
    elif not any(p.is_file() for p in folder.rglob("*")):
        raise ConfigError(f"{str(folder)!r} is empty")


def _empty_folder(stage: Path) -> None:
    """An empty `stage` folder: what a previous staging left is removed."""
    stage.mkdir(parents=True, exist_ok=True)
    for child in stage.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _local_prefixes(folder: Path) -> list[str]:
    prefixes = {str(folder.resolve()), str(Path.cwd().resolve()), str(Path.home())}
    return sorted((p for p in prefixes if len(p) > 1), key=len, reverse=True)


def _clean_text_file(path: Path, rel: Path, folder: Path, token: str | None) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return
    if token and token in text:
        raise ConfigError(
            f"{rel} contains your Hub token: refusing to stage or upload it; remove it from the file"
        )
    original = text
    for prefix in _local_prefixes(folder):
        text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    text = scrub_text(text)  # any other absolute path (whatever its root) and the host name
    if text != original:
        path.write_text(text, encoding="utf-8")


def adapter_base_hub_id(folder: Path) -> str | None:
    """The Hub id of a LoRA adapter folder's base (from adapter_config.json or the card info), or None."""
    cfg = cards._read_json(folder / "adapter_config.json") or {}
    base = cfg.get("base_model_name_or_path")
    info = cards._read_json(folder / cards.CARD_INFO_FILE) or {}
    hub_id = cards.resolve_hub_id(base) or info.get("base_model")
    return hub_id if cards.is_hub_id(hub_id) else None


def _check_adapter_base(folder: Path) -> None:
    """An adapter is only usable on the Hub when its base is there too: say so before staging anything."""
    if not (folder / "adapter_config.json").is_file() or adapter_base_hub_id(folder):
        return
    base = (cards._read_json(folder / "adapter_config.json") or {}).get("base_model_name_or_path")
    raise ConfigError(
        f"the LoRA adapter in {str(folder)!r} was trained on {cards.public_name(str(base))!r}, which is not on the "
        "Hub, so nobody could load the pushed adapter: push the base first (make push MODEL=<base dir> "
        "REPO=<user>/<base>) and retrain with --adapter_base_name <user>/<base>, or push the merged model "
        f"instead (make push MODEL={Path(folder) / 'merged'} REPO=...)"
    )


def _fix_adapter_config(stage: Path) -> None:
    """Point the staged adapter at its base's Hub id (locally it records the base's path)."""
    cfg_path = stage / "adapter_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    hub_id = adapter_base_hub_id(stage)
    if hub_id and cfg.get("base_model_name_or_path") != hub_id:
        cfg["base_model_name_or_path"] = hub_id
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def stage_folder(
    folder: str | os.PathLike,
    repo_id: str,
    stage_dir: str | os.PathLike | None = None,
    repo_type: str = "model",
) -> Path:
    """Copy what would be uploaded into `stage_dir` (replacing it) and return that path."""
    folder = Path(folder)
    _check_folder(folder, repo_type)
    stage = Path(stage_dir) if stage_dir else default_stage_dir(repo_id)
    check_output_dir(stage, {"MODEL (--model)": str(folder)}, flag="STAGE_DIR (--stage_dir)")
    _empty_folder(stage)
    token = _get_token()
    dataset_source = _find_saved_dataset(folder) if repo_type == "dataset" else None
    adapter = (folder / "adapter_config.json").is_file()
    for src in sorted(folder.rglob("*")):
        rel = src.relative_to(folder)
        if dataset_source is not None and rel.parts[0] not in DATASET_SIDE_FILES:
            continue  # the dataset itself is exported to parquet below
        if _excluded(rel, adapter) or src.is_dir() or (src.is_symlink() and not src.exists()):
            continue
        dst = stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix in TEXT_SUFFIXES or src.name == "README.md":
            shutil.copy2(src, dst)  # copied, not linked: text may be rewritten below
        else:
            try:
                os.link(src.resolve(), dst)  # big weight files: a hard link costs no space
            except OSError:
                shutil.copy2(src, dst)
    if repo_type == "model":
        cards.update_model_card(stage, repo_id=repo_id)
        _fix_adapter_config(stage)
    elif repo_type == "dataset":
        info = cards._read_json(folder / cards.CARD_INFO_FILE) or {}
        if dataset_source is not None:
            info = {**_export_parquet(dataset_source, stage), **info}
        if dataset_source is not None or info or not (stage / "README.md").is_file():
            cards.write_dataset_card(stage, {**_synthesis_info(folder), **info}, repo_id=repo_id)
    for path in sorted(stage.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name == "README.md":
            _clean_text_file(path, path.relative_to(stage), folder, token)
        elif path.suffix != ".safetensors" and path.stat().st_size < 64 * 2**20:
            _check_binary_file(path, path.relative_to(stage), folder, token)
    return stage


DATASET_SIDE_FILES = ("dedup_stats.json", "stats.json", "data_report.json", "README.md", cards.CARD_INFO_FILE)


PARQUET_SHARD_BYTES = 256 * 2**20


def _find_saved_dataset(folder: Path) -> Path | None:
    """The `save_to_disk` dataset of a dedup (`data/`) or synthesis (`dataset/`) output, or the folder itself."""
    for candidate in (folder / "data", folder / "dataset", folder):
        if (candidate / "state.json").is_file() or (candidate / "dataset_dict.json").is_file():
            return candidate
    return None


def _export_parquet(source: Path, stage: Path) -> dict:
    """Write `data/<split>-NNNNN-of-NNNNN.parquet` (what `load_dataset(repo_id)` reads); returns card info."""
    loaded = load_from_disk(str(source))
    splits = loaded if isinstance(loaded, DatasetDict) else {"train": loaded}
    (stage / "data").mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for name, split in splits.items():
        n = max(1, -(-split.data.nbytes // PARQUET_SHARD_BYTES))
        for i in range(n):
            split.shard(n, i, contiguous=True).to_parquet(
                str(stage / "data" / f"{name}-{i:05d}-of-{n:05d}.parquet")
            )
        columns = columns or list(split.column_names)
    text_note = (
        "the story in the `text` column"
        if "text" in columns
        else f"columns {', '.join(f'`{c}`' for c in columns)}"
    )
    return {
        "splits": {name: len(split) for name, split in splits.items()},
        "num_stories": sum(len(split) for split in splits.values()),
        "format": f"Parquet shards under `data/`, one story per row: {text_note}.",
    }


def _synthesis_info(folder: Path) -> dict:
    """Generation settings recorded by `tinystories data` (stats.json `job`), for the dataset card."""
    stats = cards._read_json(folder / "stats.json") or {}
    job = stats.get("job") or {}
    info = {}
    if job:
        info = {
            "variant": "instruct" if job.get("mode") == "instruct" else "tinystories",
            "backend": job.get("backend"),
            "generator_model": job.get("model"),
            "seed": job.get("seed"),
        }
        if stats.get("generated") is not None:
            info["summary"] = (
                f"{stats['generated']:,} synthetic short stories for training tiny language models."
            )
    dedup = cards._read_json(folder / "dedup_stats.json")
    if dedup:
        info["dedup"] = dedup
    return {k: v for k, v in info.items() if v is not None}


def _check_binary_file(path: Path, rel: Path, folder: Path, token: str | None) -> None:
    """Binary files are not rewritten: one holding the token stops the push, one holding a local path is left out."""
    data = path.read_bytes()
    if token and token.encode() in data:
        raise ConfigError(f"{rel} contains your Hub token: refusing to stage or upload it; remove the file")
    if any(name.encode() in data for name in [*_local_prefixes(folder), *host_names()]):
        logger.warning("leaving %s out of the upload: it records local paths", rel)
        path.unlink()


def _get_token() -> str | None:
    return get_token()


def check_push_ready(repo_id: str | None, api=None) -> str:
    """Token present and valid, Hub reachable, namespace writable; returns the token. Creates nothing.

    Training scripts call this at start-up when `--push_to_hub` is set, so a missing token fails in seconds,
    not after hours of training.
    """
    if not repo_id:
        raise ConfigError("pushing needs a repo id: pass --hub_model_id <user/name> (make: REPO=user/name)")
    api = api or HfApi()
    _split_repo(repo_id)
    token = _get_token()
    if not token:
        raise ConfigError(f"no Hugging Face token found: {LOGIN_HINT}, then run the push again")
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "HF_HUB_OFFLINE=1 is set: unset it to push (or use DRY_RUN=1 to only stage the folder)"
        )
    user, _ = _split_repo(repo_id)
    try:
        me = api.whoami(token=token)
    except OfflineModeIsEnabled:
        raise ConfigError("HF_HUB_OFFLINE=1 is set: unset it to push (or use DRY_RUN=1)") from None
    except HfHubHTTPError as e:
        raise ConfigError(f"the Hub rejected your token ({e}); {LOGIN_HINT}") from None
    except Exception as e:  # connection errors (httpx's are not OSError)
        raise ConfigError(
            f"cannot reach the Hub to check your token ({type(e).__name__}: {e}); check your connection"
        ) from None
    orgs = {o.get("name") for o in me.get("orgs", []) if isinstance(o, dict)}
    if user != me.get("name") and user not in orgs:
        raise ConfigError(
            f"your token belongs to {me.get('name')!r} (orgs: {sorted(o for o in orgs if o)}), which cannot write to "
            f"{user!r}: use REPO={me.get('name')}/<name> or a token with access to {user!r}"
        )
    role = (me.get("auth") or {}).get("accessToken", {}).get("role")
    if role == "read":
        raise ConfigError(f"your token is read-only: create a write token and {LOGIN_HINT}")
    return token


def _check_token_and_repo(api, repo_id: str, private: bool, revision: str | None, repo_type: str) -> str:
    """Fail before any upload: token present and valid, namespace writable, repo (and branch) ready."""
    token = check_push_ready(repo_id, api)
    try:
        space = {"space_sdk": "gradio"} if repo_type == "space" else {}
        api.create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True, **space)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, token=token, repo_type=repo_type, exist_ok=True)
    except HfHubHTTPError as e:
        raise ConfigError(f"cannot create or access {repo_type} repo {repo_id!r}: {e}") from None
    except Exception as e:
        raise ConfigError(f"cannot reach the Hub to create {repo_id!r} ({type(e).__name__}: {e})") from None
    return token


SPACE_FILES = ("app.py", "README.md", "requirements.txt")
_APP_MODEL = re.compile(r'^DEFAULT_MODEL = "([^"]*)"$', re.M)


def space_app_dir() -> Path:
    """`demo/space/` of the repository checkout: the Space's files (they are not part of the package)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if all((root / "demo" / "space" / name).is_file() for name in SPACE_FILES):
            return root / "demo" / "space"
    raise ConfigError("the Space app is demo/space/ of the repository: run the push from a checkout")


def _check_space_source(model_id: str) -> Path:
    """The Space's app folder, once `model_id` is known to be a Hub id (a Space cannot load a local folder)."""
    if not cards.is_hub_id(model_id):
        raise ConfigError(
            f"a Space loads its model from the Hub, and {model_id!r} is not a Hub id: push the model first "
            "(make push MODEL=<model dir> REPO=<user>/<model>), then MODEL=<user>/<model> ARGS='--space true'"
        )
    return space_app_dir()


def stage_space(model_id: str, repo_id: str, stage_dir: str | os.PathLike | None = None) -> Path:
    """Stage the Gradio Space that serves `model_id` (a Hub id): its app, card and requirements."""
    _split_repo(repo_id)
    source = _check_space_source(model_id)
    stage = Path(stage_dir) if stage_dir else default_stage_dir(repo_id)
    _empty_folder(stage)
    app = (source / "app.py").read_text(encoding="utf-8")
    default = _APP_MODEL.search(app).group(1)
    (stage / "app.py").write_text(_APP_MODEL.sub(f'DEFAULT_MODEL = "{model_id}"', app), encoding="utf-8")
    card = (source / "README.md").read_text(encoding="utf-8")
    (stage / "README.md").write_text(card.replace(default, model_id), encoding="utf-8")
    shutil.copy2(source / "requirements.txt", stage / "requirements.txt")
    return stage


def _check_space_model(api, model_id: str) -> None:
    try:
        api.model_info(model_id, token=_get_token())
    except Exception as e:
        raise ConfigError(
            f"the Space would load {model_id!r}, which the Hub does not serve ({type(e).__name__}): push it first "
            "(make push MODEL=<model dir> REPO=<user>/<model>) or check the id"
        ) from None


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    stage_dir: str | os.PathLike | None = None,
    repo_type: str = "model",
    space: bool = False,
) -> str:
    """Stage `folder` and upload it to `repo_id`; returns the staged path (dry run) or the commit URL.

    `space`: `folder` is the Hub id of a model and `repo_id` a Gradio Space that serves it (`stage_space`).
    """
    if repo_type not in ("model", "dataset", "space"):
        raise ConfigError(
            f"repo_type must be 'model', 'dataset' or 'space' (metric modules), got {repo_type!r}"
        )
    _split_repo(repo_id)
    stage = Path(stage_dir) if stage_dir else default_stage_dir(repo_id)
    if not space:
        _check_folder(Path(folder), repo_type)
        check_output_dir(stage, {"MODEL (--model)": str(folder)}, flag="STAGE_DIR (--stage_dir)")
    with output_lock(stage, flag="STAGE_DIR (--stage_dir)", beside=True):  # one push stages and uploads it
        return _stage_and_upload(
            folder, repo_id, private, revision, commit_message, dry_run, stage, repo_type, space
        )


def _stage_and_upload(
    folder, repo_id, private, revision, commit_message, dry_run, stage_dir, repo_type, space
) -> str:
    if space:
        repo_type = "space"
        _check_space_source(str(folder))
        if dry_run:
            return str(stage_space(str(folder), repo_id, stage_dir))
        api = HfApi()
        check_push_ready(repo_id, api)  # token and Hub first, then the model, then the Space is created
        _check_space_model(api, str(folder))
        token = _check_token_and_repo(api, repo_id, private, revision, repo_type)
        stage = stage_space(str(folder), repo_id, stage_dir)
    else:
        if dry_run:
            return str(stage_folder(folder, repo_id, stage_dir, repo_type))
        api = HfApi()
        token = _check_token_and_repo(api, repo_id, private, revision, repo_type)
        stage = stage_folder(folder, repo_id, stage_dir, repo_type)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=stage,
        repo_type=repo_type,
        revision=revision,
        token=token,
        commit_message=commit_message or f"Upload {Path(folder).name} with the tinystories recipes",
    )
    return str(getattr(commit, "commit_url", commit))
