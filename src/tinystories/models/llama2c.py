"""llama2.c checkpoints (github.com/karpathy/llama2.c) read without running code, as `LlamaForCausalLM` weights.

Formats read (all little-endian, float32 unless said):

- `.bin` legacy (version 0, `run.c`): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len; a negative vocab_size means the classifier is stored after the weights, else it is the embedding),
  then each weight type for all layers in turn (embedding, attention RMSNorm, wq, wk, wv, wo, FFN RMSNorm, w1,
  w2, w3, final RMSNorm), the legacy RoPE tables (2 x seq_len x head_dim/2, skipped) and the classifier if untied.
- `.bin` version 1: uint32 magic 0x616b3432 ("ak42"), int32 version, the 7 ints, a shared-classifier byte,
  zero padding to 256 bytes; then the norms (attention x L, FFN x L, final), the embedding, wq..w3 x L, classifier.
- `.bin` version 2 (`runq.c`): the same header plus int32 group_size; the norms in float32, then every matrix as
  int8 values followed by one float32 scale per `group_size` values (symmetric Q8_0), dequantized here.
- `.pt` (`train.py`'s checkpoint): a dict with `model_args` and `model` (the state dict), read with
  `torch.load(weights_only=True)`: plain tensors and numbers only, nothing in it runs.

`to_transformers` maps the weights onto `LlamaForCausalLM`: llama2.c rotates adjacent pairs (2j, 2j+1) of each
head's query/key dimensions, transformers' `rotate_half` rotates the halves (j, j + head_dim/2), so the rows of wq
and wk are permuted per head; everything else is copied. `save_llama2c` / `write_bin` are the reverse (any
version), so a Llama model this project trains runs in `run.c` and the readers are tested on every format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from tinystories.core import ConfigError, offline_hint

MAGIC = 0x616B3432  # "ak42"
HEADER_BYTES = 256  # versions 1 and 2
BOS_ID, EOS_ID = 1, 2  # llama2.c's sentencepiece ids: every story starts with BOS; EOS is never trained
NORM_EPS, ROPE_THETA = 1e-5, 10000.0
MATRICES = ("attention.wq", "attention.wk", "attention.wv", "attention.wo")
FFN = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
BIN_FIX = (
    "pass a llama2.c checkpoint: a model .bin written by llama2.c's export.py (version 0, 1 or 2) or a .pt"
)


@dataclass
class Llama2cArgs:
    """A llama2.c model's shape (`ModelArgs` plus what its export records)."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True
    version: int = 0
    group_size: int = 0  # version 2 only
    norm_eps: float = NORM_EPS

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's shape by its llama2.c name (a `torch.nn.Linear` weight is (out, in))."""
        kv, out = self.n_kv_heads * self.head_dim, {"tok_embeddings.weight": (self.vocab_size, self.dim)}
        per_layer = {
            "attention_norm.weight": (self.dim,),
            "attention.wq.weight": (self.dim, self.dim),
            "attention.wk.weight": (kv, self.dim),
            "attention.wv.weight": (kv, self.dim),
            "attention.wo.weight": (self.dim, self.dim),
            "ffn_norm.weight": (self.dim,),
            "feed_forward.w1.weight": (self.hidden_dim, self.dim),
            "feed_forward.w2.weight": (self.dim, self.hidden_dim),
            "feed_forward.w3.weight": (self.hidden_dim, self.dim),
        }
        for i in range(self.n_layers):
            out.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
        out["norm.weight"] = (self.dim,)
        if not self.shared_classifier:
            out["output.weight"] = (self.vocab_size, self.dim)
        return out

    def check(self, where: str) -> None:
        values = (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, self.vocab_size)
        if min(values) <= 0 or self.seq_len <= 0 or max(values) > 1 << 20:
            raise ConfigError(f"{where}: implausible llama2.c header {(*values, self.seq_len)}: {BIN_FIX}")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or self.head_dim % 2:
            raise ConfigError(
                f"{where}: dim {self.dim}, {self.n_heads} heads, {self.n_kv_heads} key/value heads do not fit "
                f"together: {BIN_FIX}"
            )


def bin_order(args: Llama2cArgs) -> list[str]:
    """Weight names in the order a `.bin` of `args.version` stores them (v2: norms first, then the matrices)."""
    per = lambda name: [f"layers.{i}.{name}.weight" for i in range(args.n_layers)]  # noqa: E731
    matrices = [n for m in (*MATRICES, *FFN) for n in per(m)]
    classifier = [] if args.shared_classifier else ["output.weight"]
    if args.version == 0:
        attention = [n for m in ("attention_norm", *MATRICES) for n in per(m)]
        ffn = [n for m in ("ffn_norm", *FFN) for n in per(m)]
        return ["tok_embeddings.weight", *attention, *ffn, "norm.weight", *classifier]
    norms = [*per("attention_norm"), *per("ffn_norm"), "norm.weight"]
    return [*norms, "tok_embeddings.weight", *matrices, *classifier]


# ------------------------------------------------------------------------------------------- reading
def read_header(data: bytes, where: str) -> tuple[Llama2cArgs, int]:
    """The model's shape and the offset its weights start at."""
    if len(data) < 28:
        raise ConfigError(
            f"{where} is {len(data)} bytes: too short for a llama2.c header (truncated?): {BIN_FIX}"
        )
    if struct.unpack_from("<I", data, 0)[0] == MAGIC:
        if len(data) < HEADER_BYTES:
            raise ConfigError(f"{where}: truncated llama2.c header ({len(data)} of {HEADER_BYTES} bytes)")
        version = struct.unpack_from("<i", data, 4)[0]
        if version not in (1, 2):
            raise ConfigError(f"{where}: llama2.c .bin version {version} is not one of 0, 1, 2: {BIN_FIX}")
        params = struct.unpack_from("<7i", data, 8)
        shared = bool(data[36])
        group_size = struct.unpack_from("<i", data, 37)[0] if version == 2 else 0
        args = Llama2cArgs(*params, shared_classifier=shared, version=version, group_size=group_size)
        offset = HEADER_BYTES
    else:
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", data, 0)
        args = Llama2cArgs(dim, hidden, layers, heads, kv, abs(vocab), seq, shared_classifier=vocab > 0)
        offset = 28
    args.check(where)
    if args.version == 2 and (args.group_size <= 0 or args.dim % args.group_size):
        raise ConfigError(f"{where}: version 2 group size {args.group_size} does not divide dim {args.dim}")
    return args, offset


def _expected_bytes(args: Llama2cArgs, names: list[str], shapes: dict, where: str) -> int:
    """The bytes after the header: float32 values (v2: int8 matrices plus a float32 scale per group)."""
    total = 4 * 2 * args.seq_len * (args.head_dim // 2) if args.version == 0 else 0  # v0: the RoPE tables
    for name in names:
        n = int(np.prod(shapes[name]))
        if args.version == 2 and len(shapes[name]) > 1:
            if n % args.group_size:
                raise ConfigError(
                    f"{where}: {name} ({n} values) is not a whole number of groups of {args.group_size}"
                )
            total += n + 4 * (n // args.group_size)
        else:
            total += 4 * n
    return total


def read_bin(path: str | Path) -> tuple[Llama2cArgs, dict[str, torch.Tensor]]:
    """A llama2.c `.bin` (version 0, 1 or 2) as its shape and float32 weights under llama2.c's names."""
    path = Path(path)
    data = path.read_bytes()
    args, offset = read_header(data, path.name)
    shapes, names = args.shapes(), bin_order(args)
    expected = offset + _expected_bytes(args, names, shapes, path.name)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise ConfigError(
            f"{path.name} is {len(data):,} bytes but a llama2.c v{args.version} model of this shape is "
            f"{expected:,} ({state}): re-download or re-export it. {BIN_FIX}"
        )
    weights = {}
    for name in names:
        shape = shapes[name]
        n = int(np.prod(shape))
        if args.version == 2 and len(shape) > 1:
            q = np.frombuffer(data, dtype="<i1", count=n, offset=offset).astype(np.float32)
            offset += n
            scales = np.frombuffer(data, dtype="<f4", count=n // args.group_size, offset=offset)
            offset += 4 * (n // args.group_size)
            values = (q.reshape(-1, args.group_size) * scales[:, None]).reshape(-1)
        else:
            values = np.frombuffer(data, dtype="<f4", count=n, offset=offset)
            offset += 4 * n
        weights[name] = torch.from_numpy(values.astype(np.float32).reshape(shape).copy())
        if args.version == 0 and name == "norm.weight":
            offset += 4 * 2 * args.seq_len * (args.head_dim // 2)  # the legacy RoPE tables: recomputed
    return args, weights


def read_pt(path: str | Path) -> tuple[Llama2cArgs, dict[str, torch.Tensor]]:
    """llama2.c's `train.py` checkpoint (`model_args`, `model`), read with `weights_only=True`."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"could not read {path.name} as a llama2.c .pt checkpoint with torch.load(weights_only=True) "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): {BIN_FIX}"
        ) from None
    if not isinstance(checkpoint, dict) or not {"model_args", "model"} <= set(checkpoint):
        raise ConfigError(
            f"{path.name} has no `model_args` and `model` (llama2.c train.py's checkpoint): {BIN_FIX}"
        )
    margs, state = checkpoint["model_args"], checkpoint["model"]
    weights = {
        k.removeprefix("_orig_mod."): v.float() for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    try:
        n_heads = int(margs["n_heads"])
        args = Llama2cArgs(
            dim=int(margs["dim"]),
            hidden_dim=int(weights["layers.0.feed_forward.w1.weight"].shape[0]),
            n_layers=int(margs["n_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(margs.get("n_kv_heads") or n_heads),
            vocab_size=int(weights["tok_embeddings.weight"].shape[0]),
            seq_len=int(margs["max_seq_len"]),
            norm_eps=float(margs.get("norm_eps", NORM_EPS)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path.name}: model_args or weights incomplete ({err!r}): {BIN_FIX}") from None
    args.check(path.name)
    output = weights.get("output.weight")
    args.shared_classifier = output is None or torch.equal(output, weights["tok_embeddings.weight"])
    if args.shared_classifier:
        weights.pop("output.weight", None)
    missing = set(args.shapes()) - set(weights)
    if missing:
        raise ConfigError(f"{path.name} lacks {sorted(missing)[:3]}: {BIN_FIX}")
    return args, {name: weights[name] for name in args.shapes()}


def read_checkpoint(path: str | Path) -> tuple[Llama2cArgs, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"llama2.c checkpoint {str(path)!r} does not exist: {BIN_FIX}")
    return read_pt(path) if path.suffix == ".pt" else read_bin(path)


# ------------------------------------------------------------------------------------ to transformers
def pairs_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from interleaved pairs (2j, 2j+1) to halves (j, j + head_dim/2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def llama_config(args: Llama2cArgs) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.seq_len,  # the context llama2.c trained at
        rms_norm_eps=args.norm_eps,
        rope_theta=ROPE_THETA,
        hidden_act="silu",
        tie_word_embeddings=args.shared_classifier,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        architectures=["LlamaForCausalLM"],
    )


HF_NAMES = {
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
}


def hf_name(name: str) -> str:
    if name == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, i, rest = name.split(".", 2)
    part = rest.removesuffix(".weight")
    return f"model.layers.{i}.{HF_NAMES[part]}.weight"


def to_transformers(args: Llama2cArgs, weights: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """The `LlamaForCausalLM` computing what llama2.c's forward computes on these weights."""
    state = {}
    for name, w in weights.items():
        if name.endswith("attention.wq.weight"):
            w = pairs_to_halves(w, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            w = pairs_to_halves(w, args.n_kv_heads)
        state[hf_name(name)] = w.contiguous()
    model = LlamaForCausalLM(llama_config(args))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (args.shared_classifier and m == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(
            f"llama2.c weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}"
        )
    if args.shared_classifier:
        model.tie_weights()
    model.generation_config = generation_config(args)
    return model.eval()


def generation_config(args: Llama2cArgs) -> GenerationConfig:
    """Stops where llama2.c's stories end: at the next BOS (as `run.c` does), or at EOS."""
    return GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=[BOS_ID, EOS_ID], pad_token_id=0, max_length=args.seq_len
    )


# ---------------------------------------------------------------------------------- back to llama2.c
def check_llama2c_compatible(config) -> None:
    """What `run.c` hard-codes: Llama blocks without biases, SiLU, head_dim = dim / heads, RoPE theta 10000
    unscaled, RMSNorm eps 1e-5. Anything else would run there and compute something else: refused."""
    rope = getattr(config, "rope_parameters", None) or {}
    found = {
        "model_type": getattr(config, "model_type", None),
        "hidden_act": getattr(config, "hidden_act", None),
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "rope_theta": rope.get("rope_theta", getattr(config, "rope_theta", ROPE_THETA)),
        "rope_type": rope.get("rope_type", "default"),
        "rms_norm_eps": getattr(config, "rms_norm_eps", None),
        "bias": bool(getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)),
    }
    want = {
        "model_type": "llama",
        "hidden_act": "silu",
        "head_dim": config.hidden_size // config.num_attention_heads,
    }
    want |= {"rope_theta": ROPE_THETA, "rope_type": "default", "rms_norm_eps": NORM_EPS, "bias": False}
    wrong = {k: v for k, v in found.items() if v != want[k]}
    if wrong:
        raise ConfigError(
            f"llama2.c's run.c cannot run this model: {wrong} (it needs {want}): only a plain Llama model "
            "(e.g. --architecture llama, or one pulled from llama2.c) can be written as a llama2.c checkpoint"
        )


def from_transformers(model: LlamaForCausalLM) -> tuple[Llama2cArgs, dict[str, torch.Tensor]]:
    """llama2.c's shape and weights of a `LlamaForCausalLM` (the inverse of `to_transformers`)."""
    c = model.config
    check_llama2c_compatible(c)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    tied = bool(getattr(c, "tie_word_embeddings", False)) or torch.equal(
        state["lm_head.weight"], state["model.embed_tokens.weight"]
    )
    args = Llama2cArgs(
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.max_position_embeddings,
        shared_classifier=tied,
        norm_eps=c.rms_norm_eps,
    )
    weights = {}
    for name in args.shapes():
        w = state[hf_name(name)]
        if name.endswith("attention.wq.weight"):
            w = halves_to_pairs(w, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            w = halves_to_pairs(w, args.n_kv_heads)
        weights[name] = w
    return args, weights


def _quantize_q80(w: torch.Tensor, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    groups = w.reshape(-1, group_size).float()
    scale = groups.abs().max(dim=1).values / 127.0
    q = torch.round(groups / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).to(torch.int8)
    return q.numpy().reshape(-1), scale.numpy().astype("<f4")


def write_bin(
    args: Llama2cArgs,
    weights: dict[str, torch.Tensor],
    path: str | Path,
    version: int = 0,
    group_size: int = 64,
) -> Path:
    """Write a llama2.c `.bin` of `version` 0, 1 or 2 (what `run.c` / `runq.c` read)."""
    args = Llama2cArgs(**{**args.__dict__, "version": version})
    shape = (args.dim, args.hidden_dim, args.n_layers, args.n_heads, args.n_kv_heads)
    if version == 0:
        vocab = args.vocab_size if args.shared_classifier else -args.vocab_size
        header = struct.pack("<7i", *shape, vocab, args.seq_len)
    else:
        while version == 2 and args.dim % group_size:
            group_size //= 2
        args.group_size = group_size if version == 2 else 0
        shared = int(args.shared_classifier)
        header = struct.pack("<Ii7iB", MAGIC, version, *shape, args.vocab_size, args.seq_len, shared)
        header += struct.pack("<i", group_size) if version == 2 else b""
        header += b"\0" * (HEADER_BYTES - len(header))
    parts = [header]
    for name in bin_order(args):
        w = weights[name].detach().float().contiguous()
        if version == 2 and w.dim() > 1:
            parts += [q.tobytes() for q in _quantize_q80(w, group_size)]
        else:
            parts.append(w.numpy().astype("<f4").tobytes())
        if version == 0 and name == "norm.weight":
            parts.append(_rope_tables(args))
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def save_llama2c(model: LlamaForCausalLM, path: str | Path, version: int = 0) -> Path:
    """A `LlamaForCausalLM` (tied or untied head, GQA) as the llama2.c `.bin` that `run.c` reads (version 0)."""
    return write_bin(*from_transformers(model), path, version=version)


def _rope_tables(args: Llama2cArgs) -> bytes:
    """The legacy freq_cis_real / freq_cis_imag tables a version-0 file carries (run.c skips them)."""
    half = args.head_dim // 2
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, args.head_dim, 2)[:half].float() / args.head_dim))
    angles = torch.outer(torch.arange(args.seq_len).float(), freqs)
    return (
        torch.cos(angles).numpy().astype("<f4").tobytes() + torch.sin(angles).numpy().astype("<f4").tobytes()
    )


# ------------------------------------------------------------------------------------------- the Hub
SUFFIXES = (".bin", ".pt")


def hub_parts(source: str) -> tuple[str, str] | None:
    """(repo id, path in the repo) of `owner/repo/<path>` that is no local file, e.g. karpathy/tinyllamas/stories260K."""
    parts = source.split("/")
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or len(parts) < 3:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def is_llama2c_source(source: str) -> bool:
    """A llama2.c checkpoint: a local `.bin`/`.pt` file, or a Hub `owner/repo/<folder or file>`."""
    return Path(source).suffix in SUFFIXES or hub_parts(source) is not None


def _hub_snapshot(repo_id: str, patterns: list[str]) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, repo_type="model"))
    except Exception as err:  # offline without a cached copy, a missing repo, no network
        raise ConfigError(
            f"could not get {patterns[0]} from the Hub repo {repo_id}{offline_hint()} ({type(err).__name__}: "
            f"{err}): pull it once with network access, or pass a local llama2.c .bin/.pt"
        ) from None


def _hub_model_file(repo_id: str, sub: str, want_tokenizer: bool) -> Path:
    """The cached model file of `repo_id/sub` (its `.bin`, else its `.pt`), with a `tok*` file beside it."""
    name = sub.rstrip("/").rsplit("/", 1)[-1]
    if Path(sub).suffix in SUFFIXES:
        groups = [[sub]]
    else:
        groups = [[f"{sub}/{name}{s}", f"{sub}{s}"] for s in SUFFIXES]  # the .pt only when there is no .bin
    for files in groups:
        folders = {str(Path(f).parent) for f in files}
        tokenizers = [f"{d}/tok*.{s}" if d != "." else f"tok*.{s}" for d in folders for s in ("bin", "model")]
        snapshot = _hub_snapshot(repo_id, files + (tokenizers if want_tokenizer else []))
        found = [snapshot / f for f in files if (snapshot / f).is_file()]
        if found:
            return found[0]
    tried = ", ".join(f for files in groups for f in files)
    raise ConfigError(f"{repo_id} has none of {tried}: name a model file, e.g. {repo_id}/{name}.bin")


def fetch_llama2c(source: str, tokenizer: str | None = None) -> tuple[Path, Path | None]:
    """The local model file and tokenizer file (None: not found) of `source`: a local path, or
    `owner/repo/<name>` on the Hub (the HF cache: `<name>/<name>.bin` or `<name>.bin`, else the `.pt`; a `tok*.bin`
    / `tok*.model` beside it), e.g. `karpathy/tinyllamas/stories260K` or `karpathy/tinyllamas/stories15M.pt`."""
    parts = hub_parts(source)
    if parts is None:
        model = Path(source).expanduser()
        if not model.is_file():
            raise ConfigError(f"llama2.c checkpoint {source!r} does not exist: {BIN_FIX}")
    else:
        model = _hub_model_file(*parts, want_tokenizer=not tokenizer)
    if tokenizer:
        hub = hub_parts(tokenizer)
        if hub is None:
            return model, Path(tokenizer).expanduser()
        return model, _hub_snapshot(hub[0], [hub[1]]) / hub[1]
    beside = sorted(model.parent.glob("tok*.bin")) + sorted(model.parent.glob("tok*.model"))
    return model, beside[0] if beside else None
