"""Build the offline browser demo and serve it on 127.0.0.1: `make web-demo MODEL=<export dir or model dir>`.

    python demo/web/build.py --model outputs/tinystories-8M/onnx-export   # a `tinystories export` folder
    python demo/web/build.py --model outputs/quickstart/pretrain          # a model: exported first (onnx-export/)
    python demo/web/build.py --model roneneldan/TinyStories-33M --quantize int8 --port 8000

The served folder (`--out`, default demo/web/dist/) holds everything the page loads, so it needs no CDN and no
Hub: index.html and app.js; transformers.js's self-contained browser bundle and ONNX Runtime Web's WebAssembly
files, copied from demo/web/node_modules (`npm ci` there when it is missing; versions pinned by package.json and
package-lock.json); the model under models/tinystories/ (config, generation config, tokenizer, onnx/model.onnx
and onnx/model_quantized.onnx when exported with int8); manifest.json (the model's name and weight files).
The server sends the cross-origin isolation headers, so ONNX Runtime Web can run on several threads.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
MODEL_NAME = "tinystories"  # the model's folder under models/ (transformers.js's `env.localModelPath`)
PAGE_FILES = ("index.html", "app.js")
VENDOR_FILES = {
    "transformers.min.js": "node_modules/@huggingface/transformers/dist/transformers.min.js",
    "ort-wasm-simd-threaded.asyncify.mjs": "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm": "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm",
}
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
OPTIONAL_MODEL_FILES = ("special_tokens_map.json", "export_info.json")
WEIGHTS = {"fp32": "onnx/model.onnx", "q8": "onnx/model_quantized.onnx"}  # transformers.js dtype -> file
EXPORT_SUBDIR = "onnx-export"  # where `tinystories export` writes for a local model dir


def ensure_node_modules(folder: Path = HERE) -> None:
    """`npm ci` in demo/web when the pinned packages are not installed yet."""
    if all((folder / source).is_file() for source in VENDOR_FILES.values()):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: install Node.js 18+ (with npm), then run `make web-demo` again")
    print(f"[web-demo] npm ci in {folder}", flush=True)
    subprocess.run([npm, "ci"], cwd=folder, check=True)


def export_dir(model: str) -> Path:
    """The folder `tinystories export` writes for `model` (a local model dir or a Hub id)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path / EXPORT_SUBDIR
    return Path("outputs") / "export" / model.strip("/").replace("/", "__")


def _is_export(folder: Path) -> bool:
    return (folder / WEIGHTS["fp32"]).is_file() and (folder / "tokenizer.json").is_file()


def _stale(export: Path, model: Path) -> bool:
    weights = [p.stat().st_mtime for p in model.glob("*.safetensors")]
    return bool(weights) and max(weights) > (export / WEIGHTS["fp32"]).stat().st_mtime


def resolve_export(model: str, quantize: str = "none") -> Path:
    """`model` itself when it is an export; else its export, written first by `tinystories export` if needed."""
    path = Path(model).expanduser()
    if _is_export(path):
        return path
    target = export_dir(model)
    if _is_export(target) and not (path.is_dir() and _stale(target, path)):
        print(f"[web-demo] using the export in {target} (delete it to export again)", flush=True)
        return target
    cmd = [sys.executable, "-m", "tinystories.cli", "export", "--model", model, "--output_dir", str(target)]
    print(f"[web-demo] {model} has no onnx/: {' '.join(cmd[1:])}", flush=True)
    subprocess.run([*cmd, "--quantize", quantize], check=True)
    return target


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # a model file can be large: a hard link costs no space
    except OSError:
        shutil.copy2(src, dst)


def copy_model(export: Path, destination: Path) -> list[str]:
    """The files transformers.js loads, into `destination`; returns the dtypes whose weights are there."""
    missing = [name for name in (*MODEL_FILES, WEIGHTS["fp32"]) if not (export / name).is_file()]
    if missing:
        raise SystemExit(
            f"{export} lacks {', '.join(missing)}: export it again with `make export MODEL=<model>`"
        )
    if destination.exists():
        shutil.rmtree(destination)
    names = [*MODEL_FILES, *(n for n in OPTIONAL_MODEL_FILES if (export / n).is_file())]
    dtypes = [dtype for dtype, name in WEIGHTS.items() if (export / name).is_file()]
    for name in [*names, *(WEIGHTS[d] for d in dtypes)]:
        _place(export / name, destination / name)
    return dtypes


def _source_name(model: str, export: Path) -> str:
    info = export / "export_info.json"
    source = json.loads(info.read_text()).get("source") if info.is_file() else None
    return source or (Path(model).name if Path(model).expanduser().exists() else model)


def build(model: str, out: Path, quantize: str = "none") -> Path:
    """Write the served folder `out` for `model` and return it."""
    ensure_node_modules()
    export = resolve_export(model, quantize)
    out.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copy2(HERE / name, out / name)
    for name, source in VENDOR_FILES.items():
        _place(HERE / source, out / "vendor" / name)
    dtypes = copy_model(export, out / "models" / MODEL_NAME)
    package = json.loads((HERE / "node_modules/@huggingface/transformers/package.json").read_text())
    manifest = {
        "model": MODEL_NAME,
        "source": _source_name(model, export),
        "dtypes": dtypes,
        "transformers_js": package["version"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


class Handler(SimpleHTTPRequestHandler):
    """Static files with cross-origin isolation (threads for ONNX Runtime Web) and no caching."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):  # one line per request is noise here
        return


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    server = ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(folder)))
    print(
        f"[web-demo] serving {folder} at http://{host}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a `tinystories export` folder, a model dir or a Hub id"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "dist", help="the served folder (default demo/web/dist)"
    )
    parser.add_argument(
        "--quantize", default="none", help="when exporting first: none, or int8 (q8 weights too)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--no_serve", action="store_true", help="only build the folder")
    args = parser.parse_args(argv)
    out = build(args.model, args.out, args.quantize)
    print(f"[web-demo] built {out}", flush=True)
    if not args.no_serve:
        serve(out, args.host, args.port)


if __name__ == "__main__":
    main()
