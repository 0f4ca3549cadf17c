"""llama2.c's tokenizers as transformers fast tokenizers that encode and decode as llama2.c does.

A `tok*.bin` (llama2.c's `tokenizer.py export`) holds an int32 max token length, then per token a float32
score, an int32 byte length and the piece's bytes (sentencepiece's `▁` written as a space; ids 0/1/2 are
`<unk>`, `<s>` (BOS), `</s>` (EOS); byte-fallback tokens are `<0x00>`..`<0xFF>`). `run.c` encodes text by putting
a dummy-prefix space before it, looking up each UTF-8 character (else its bytes, as the byte tokens), then
merging, again and again, the adjacent pair whose concatenation is a token with the highest score.

`llama2c_tokenizer` builds the same thing as a `tokenizers` BPE: the vocabulary (spaces back to `▁`), byte
fallback, a normalizer that puts `▁` for the dummy prefix and every space, and the merges (a, b) for every
token a + b whose parts are tokens, ranked by the score of a + b: BPE applies the best-ranked adjacent pair
first, which is run.c's rule. (Where two different splits of one token are adjacent candidates at once, run.c
takes the leftmost and BPE the better-ranked split; `tests/test_models_llama2c.py` counts the stories on which
the two encoders agree.) Decoding drops the dummy prefix space, as run.c does after BOS; `add_special_tokens`
puts BOS first (llama2.c's stories each start with it). A sentencepiece `.model` (llama2.c's tok*.model, Llama 2's
tokenizer.model) is read with protobuf into the same pieces and scores and built the same way: on the 2,316 sample
stories this matches `sentencepiece` itself on all of them, where transformers' `LlamaTokenizer` conversion of
Llama 2's model differs on 15 (it merges a double space `▁▁` before `▁` + `▁Word`).

`write_tokenizer_bin` is the reverse: `run.c`'s tokenizer file of `runc_pieces(tokenizer)`. A llama2.c-style
tokenizer gives its pieces as llama2.c's export writes them (BOS `\n<s>\n`, EOS `\n</s>\n`, `▁` as a space, byte
tokens as `<0xHH>` text) with sentencepiece's scores, minus the rank of each piece after the specials and byte
tokens (tok512.bin comes back byte for byte); a byte-level BPE (GPT-Neo's) gives each token's decoded bytes, scored
minus the rank of the merge that makes it (0 for the 256 bytes and added tokens), so run.c's best-score-first merging
follows the merge order.
`runc_text` is what run.c prints for a token sequence (its `decode` and `safe_printf`), to compare its output
with another engine's tokens.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode, import_protobuf

from tinystories.core import ConfigError

SPACE = "▁"  # sentencepiece's whitespace symbol
SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}
RUNC_SPECIALS = {0: b"<unk>", 1: b"\n<s>\n", 2: b"\n</s>\n"}  # as llama2.c's tokenizer.py export writes them
BPE_TYPE = 2  # sentencepiece TrainerSpec.ModelType.BPE
TOKENIZER_FIX = (
    "pass TOKENIZER=<the model's llama2.c tokenizer>: a tok*.bin (llama2.c's tokenizer.py export, e.g. tok512.bin "
    "next to stories260K.bin, or llama2.c's tokenizer.bin for the 32,000-token Llama 2 vocabulary) or a "
    "sentencepiece .model"
)


def read_tokenizer_bin(path: str | Path, vocab_size: int | None = None) -> tuple[list[str], list[float]]:
    """The pieces (as text, `▁` for spaces, specials named) and scores of a llama2.c `tok*.bin`."""
    path = Path(path)
    data = path.read_bytes()
    pieces, scores, offset = [], [], 4
    if len(data) < 4:
        raise ConfigError(f"{path.name} is empty or truncated: {TOKENIZER_FIX}")
    max_len = struct.unpack_from("<i", data, 0)[0]
    while offset < len(data):
        if offset + 8 > len(data):
            raise ConfigError(f"{path.name} is truncated after {len(pieces)} tokens: {TOKENIZER_FIX}")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not 0 < length <= max_len or offset + length > len(data):
            raise ConfigError(
                f"{path.name}: token {len(pieces)} has length {length} (max {max_len}, {len(data) - offset} "
                f"bytes left): not a llama2.c tokenizer, or truncated. {TOKENIZER_FIX}"
            )
        raw = data[offset : offset + length]
        offset += length
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path.name}: token {len(pieces)} is not UTF-8: {TOKENIZER_FIX}") from None
        pieces.append(SPECIALS.get(len(pieces), text.replace(" ", SPACE)))
        scores.append(score)
    if vocab_size is not None and len(pieces) != vocab_size:
        raise ConfigError(
            f"{path.name} has {len(pieces):,} tokens but the model's vocabulary is {vocab_size:,}: {TOKENIZER_FIX}"
        )
    return pieces, scores


def score_ranked_merges(pieces: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """(a, b) for every token a + b whose two parts are tokens, the highest score of a + b first."""
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []
    for i, piece in enumerate(pieces):
        if i in SPECIALS or (piece.startswith("<0x") and len(piece) == 6):
            continue
        for k in range(1, len(piece)):
            if piece[:k] in vocab and piece[k:] in vocab:
                merges.append((-scores[i], i, k, piece[:k], piece[k:]))
    merges.sort()
    return [(a, b) for *_, a, b in merges]


def llama2c_tokenizer(
    pieces: list[str], scores: list[float], model_max_length: int
) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes as `run.c`'s `encode` (without BOS unless `add_special_tokens`)."""
    vocab = {p: i for i, p in enumerate(pieces)}
    bpe = models.BPE(
        vocab=vocab,
        merges=score_ranked_merges(pieces, scores),
        unk_token="<unk>",
        byte_fallback=True,
        fuse_unk=True,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(list(SPECIALS.values()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def read_sentencepiece_model(path: Path, vocab_size: int | None = None) -> tuple[list[str], list[float]]:
    """The pieces and scores of a sentencepiece BPE `.model` (read with protobuf; `sentencepiece` not needed)."""
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:
        raise ConfigError(
            f"{path.name} is not a sentencepiece model ({type(err).__name__}): {TOKENIZER_FIX}"
        ) from None
    pieces = [p.piece for p in proto.pieces]
    if proto.trainer_spec.model_type != BPE_TYPE or pieces[:3] != list(SPECIALS.values()):
        raise ConfigError(
            f"{path.name} is not a llama2.c-style sentencepiece BPE (model type {proto.trainer_spec.model_type}, "
            f"first pieces {pieces[:3]}; llama2.c needs BPE with <unk>, <s>, </s> as ids 0, 1, 2): {TOKENIZER_FIX}"
        )
    if vocab_size is not None and len(pieces) != vocab_size:
        raise ConfigError(
            f"{path.name} has {len(pieces):,} tokens but the model's vocabulary is {vocab_size:,}: {TOKENIZER_FIX}"
        )
    return pieces, [p.score for p in proto.pieces]


def load_llama2c_tokenizer(path: str | Path, vocab_size: int, model_max_length: int):
    """The transformers tokenizer of a llama2.c `tok*.bin` or sentencepiece `.model` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"tokenizer {str(path)!r} does not exist: {TOKENIZER_FIX}")
    read = read_sentencepiece_model if path.suffix == ".model" else read_tokenizer_bin
    return llama2c_tokenizer(*read(path, vocab_size), model_max_length)


def save_llama2c_tokenizer(tokenizer, output_dir: Path, source: str) -> None:
    tokenizer.save_pretrained(output_dir)
    config_file = output_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["llama2c_tokenizer"] = source  # where it came from; AutoTokenizer ignores the key
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    AutoTokenizer.from_pretrained(output_dir)  # it loads back as it will be used


# ------------------------------------------------------------------------------------------ back to run.c
def write_tokenizer_bin(pieces: list[bytes], scores: list[float], path: str | Path) -> Path:
    """run.c's `tokenizer.bin`: int32 max token length, then per token float32 score, int32 length, the bytes."""
    if len(pieces) != len(scores) or not pieces:
        raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores")
    empty = [i for i, piece in enumerate(pieces) if not piece]
    if empty:
        raise ConfigError(
            f"tokens {empty[:5]} are empty: run.c cannot read an empty token (it reads len bytes)"
        )
    parts = [struct.pack("<i", max(map(len, pieces)))]
    for piece, score in zip(pieces, scores, strict=True):
        parts += [struct.pack("<fi", score, len(piece)), piece]
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def runc_pieces(tokenizer) -> tuple[list[bytes], list[float]]:
    """The pieces (bytes, as run.c prints them) and scores of a transformers BPE tokenizer: a llama2.c-style one
    (`▁`, byte fallback, `<s>` as id 1) or a byte-level one (GPT-2/GPT-Neo). Ids beyond the vocabulary, added
    tokens included, come in id order."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec["model"], spec.get("decoder") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"run.c reads BPE tokenizers; this one is {model.get('type')!r}: {TOKENIZER_FIX}")
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {t["id"] for t in spec.get("added_tokens", [])}
    if decoder.get("type") == "ByteLevel":
        to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
        merged = {}
        for rank, merge in enumerate(model["merges"]):
            a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
            merged.setdefault(a + b, rank)
        pieces = [t.encode() if i in added else bytes(to_byte[c] for c in t) for i, t in enumerate(tokens)]
        scores = [-float(merged[t]) if t in merged and i not in added else 0.0 for i, t in enumerate(tokens)]
        return pieces, scores
    if tokens[: len(SPECIALS)] != list(SPECIALS.values()):
        raise ConfigError(
            f"a tokenizer that is neither byte-level nor llama2.c's (first tokens {tokens[:3]}): {TOKENIZER_FIX}"
        )
    base = [i in SPECIALS or (t.startswith("<0x") and len(t) == 6) for i, t in enumerate(tokens)]
    first = base.index(False)
    pieces = [RUNC_SPECIALS.get(i, t.replace(SPACE, " ").encode()) for i, t in enumerate(tokens)]
    return pieces, [0.0 if is_base else -float(i - first) for i, is_base in enumerate(base)]


BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{1,2})")  # what run.c's sscanf("<0x%02hhX>") accepts
PRINTABLE = set(range(0x20, 0x7F)) | set(b" \t\n\v\f\r")  # C's isprint or isspace


def runc_text(pieces: list[bytes], ids: list[int]) -> bytes:
    """What run.c prints while it steps through `ids` (the first is fed, not printed): each next token's piece,
    without its leading space after BOS, a `<0xHH>` piece as that byte, a lone unprintable byte skipped, and
    cut at a NUL (printf's "%s")."""
    out = []
    for prev, token in itertools.pairwise(ids):
        piece = pieces[token].split(b"\0", 1)[0]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        match = BYTE_PIECE.match(piece)
        if match:
            piece = bytes([int(match.group(1), 16)])
        if len(piece) == 1 and piece[0] not in PRINTABLE:
            continue
        out.append(piece)
    return b"".join(out)
