"""What no uploaded file may hold: local absolute paths (any root) and the machine's name.

`tinystories push` stages every upload, then passes each staged text file through `scrub_text`: an absolute
path under any root (`/lustre/...`, `/nfs/home/...`, `/fsx/...`, `/gpfs/...`, `C:\\...`, `file:///...`) becomes
its last component, and the host name (as `socket` reports it, full and short) becomes `HOST`.
"""

from __future__ import annotations

import re
import socket

# an absolute POSIX path of two or more components, not part of a URL (`https://host/a/b`) or a relative path
_POSIX_PATH = re.compile(r"(?<![\w.~:/\\-])(?:/[^\s/\\\"'`<>()\[\]{},;|*]+){2,}/?")
# a Windows path, also as JSON writes it (`C:\\Users\\me`)
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:(?:\\\\|\\|/)[^\s\"'`<>|]*")
_FILE_URL = re.compile(r"file://(?=/|[A-Za-z]:)")
_SEPARATORS = re.compile(r"[\\/]+")
HOST_PLACEHOLDER = "HOST"


def _last_part(match: re.Match) -> str:
    parts = [p for p in _SEPARATORS.split(match.group(0)) if p]
    return parts[-1] if parts else "."


def host_names() -> list[str]:
    """The names of this machine worth hiding (full and short; not `localhost`, not under 4 characters)."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        names.update({name, name.split(".")[0]})
    keep = {n for n in names if len(n) >= 4 and n.lower() not in ("localhost", "localhost.localdomain")}
    return sorted(keep, key=len, reverse=True)  # the full name before its short form


def scrub_text(text: str, hosts: list[str] | None = None) -> str:
    """`text` with every absolute local path reduced to its last component and the host name replaced."""
    text = _FILE_URL.sub("", text)
    text = _POSIX_PATH.sub(_last_part, text)
    text = _WINDOWS_PATH.sub(_last_part, text)
    for host in host_names() if hosts is None else hosts:
        text = re.sub(rf"(?<![\w-]){re.escape(host)}(?![\w-])", HOST_PLACEHOLDER, text)
    return text
