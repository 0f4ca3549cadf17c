"""`tinystories push`: upload a model or dataset folder to the Hub, or stage it (`--dry_run`).

`--space true`: publish the Gradio demo (`demo/space/`) as a Space that serves `--model`, a Hub model id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.core.arguments import ModelRef
from tinystories.core.config import parse_args
from tinystories.hub.staging import push_folder


@dataclass
class PushArguments(ModelRef):
    """--model: the folder to upload (a trained model dir or a dataset dir); --revision: the branch to push to
    (created if missing)."""

    repo: str = field(default=None, metadata={"help": "target Hub repo id, `user/name`"})
    repo_type: str = field(
        default="model", metadata={"help": "model, dataset, or space (an evaluate metric module)"}
    )
    private: bool = field(default=False, metadata={"help": "create the repo private"})
    commit_message: str | None = field(default=None, metadata={"help": "commit message"})
    dry_run: bool = field(
        default=False, metadata={"help": "only stage the exact upload folder and print its path"}
    )
    stage_dir: str | None = field(
        default=None, metadata={"help": "staging folder (default outputs/push/<user>__<name>)"}
    )
    space: bool = field(
        default=False,
        metadata={
            "help": "publish the Gradio demo (demo/space/) as Space --repo, serving --model (a Hub id)"
        },
    )


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (PushArguments,)


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv)
    if not args.model or not args.repo:
        raise ConfigError("push needs --model <folder> and --repo <user/name> (make push MODEL=... REPO=...)")
    result = push_folder(
        args.model,
        args.repo,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        stage_dir=args.stage_dir,
        repo_type=args.repo_type,
        space=args.space,
    )
    repo_type = "space" if args.space else args.repo_type
    if args.dry_run:
        files = sorted(p.relative_to(result).as_posix() for p in Path(result).rglob("*") if p.is_file())
        print(f"staged {len(files)} files for {repo_type} repo {args.repo}: {', '.join(files)}")
        print(result)  # last line: the staged folder
        return 0
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    print(f"pushed {args.model} (commit {result})")
    print(f"https://huggingface.co/{prefix}{args.repo}")
    return 0
