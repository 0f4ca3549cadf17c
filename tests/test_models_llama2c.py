"""llama2.c checkpoints in: the real `stories260K` (`../shared/data/llama2c-stories260K/`) converted by `tinystories
pull`, checked against llama2.c itself: run.c's published greedy story, a direct implementation of run.c's forward
over the `.bin` (parsed here, not by the library), and run.c's `encode` on real stories."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPTNeoForCausalLM, LlamaForCausalLM

from conftest import SHARED_DATA, read_sample_stories
from tinystories.core import ConfigError
from tinystories.data.llama2c_tokenizer import runc_pieces, runc_text, write_tokenizer_bin
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation.generation import generate_story
from tinystories.models import llama2c
from tinystories.models.loading import load_model
from tinystories.models.sizes import build_config
from tinystories.stages import pull

L2C = SHARED_DATA / "llama2c-stories260K"
BIN, TOK = L2C / "stories260K.bin", L2C / "tok512.bin"
# llama2.c doc/stories260K.md: `./run stories260K.bin -z tok512.bin -t 0.0` (256 tokens after BOS, run.c's default)
RUNC_STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
    "a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to "
    "play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her mom said, "
    "\"Don't worry, Lily. We can help you."
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    if not BIN.is_file():
        pytest.skip("../shared/data/llama2c-stories260K is not present")
    return pull.convert_llama2c(str(BIN), str(TOK), str(tmp_path_factory.mktemp("l2c") / "stories260K"))


# ------------------------------------------------------------------------------- llama2.c, independently
def runc_weights(path: Path) -> tuple[dict, dict]:
    """run.c's `memory_map_weights` over a legacy `.bin`: the config and float32 arrays (layer-major)."""
    data = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack_from("<7i", data)
    p = {"dim": dim, "hidden": hidden, "layers": layers, "heads": heads, "kv": kv_heads, "vocab": abs(vocab)}
    hs = dim // heads
    f = np.frombuffer(data, dtype="<f4", offset=28)
    sizes = [
        ("emb", abs(vocab) * dim),
        ("rms_att", layers * dim),
        ("wq", layers * dim * dim),
        ("wk", layers * dim * kv_heads * hs),
        ("wv", layers * dim * kv_heads * hs),
        ("wo", layers * dim * dim),
        ("rms_ffn", layers * dim),
        ("w1", layers * dim * hidden),
        ("w2", layers * hidden * dim),
        ("w3", layers * dim * hidden),
        ("rms_final", dim),
        ("freqs", seq * hs),
    ]
    w, pos = {}, 0
    for name, n in sizes:
        w[name] = torch.from_numpy(f[pos : pos + n].copy())
        pos += n
    w["cls"] = w["emb"] if vocab > 0 else torch.from_numpy(f[pos : pos + abs(vocab) * dim].copy())
    return p, w


def runc_logits(path: Path, tokens: list[int], dtype=torch.float64) -> torch.Tensor:
    """run.c's `forward` for every position (RMSNorm eps 1e-5, RoPE on adjacent pairs, GQA, SwiGLU)."""
    p, w = runc_weights(path)
    w = {k: v.to(dtype) for k, v in w.items()}
    d, hid, n_h, n_kv, L = p["dim"], p["hidden"], p["heads"], p["kv"], p["layers"]
    hs, T = d // n_h, len(tokens)
    rms = lambda x, g: g * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5))  # noqa: E731
    x = w["emb"].view(-1, d)[tokens]
    pos = torch.arange(T, dtype=dtype)[:, None]
    freq = (1.0 / 10000.0 ** ((torch.arange(0, d, 2) % hs).float() / hs)).to(
        dtype
    )  # float32, as run.c's powf
    cos, sin = torch.cos(pos * freq), torch.sin(pos * freq)  # (T, d/2): one angle per adjacent pair

    def rope(v):  # (T, n * hs): rotate (v[2i], v[2i+1]) by the angle of pair i
        a, b = v[:, 0::2], v[:, 1::2]
        c, s = cos[:, : a.shape[1]], sin[:, : a.shape[1]]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(v.shape)

    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
    for layer in range(L):
        m = lambda name, rows, cols, layer=layer: w[name].view(L, rows, cols)[layer]  # noqa: E731
        h = rms(x, w["rms_att"].view(L, d)[layer])
        q, k = rope(h @ m("wq", d, d).T), rope(h @ m("wk", n_kv * hs, d).T)
        v = h @ m("wv", n_kv * hs, d).T
        q, k, v = q.view(T, n_h, hs), k.view(T, n_kv, hs), v.view(T, n_kv, hs)
        k, v = k.repeat_interleave(n_h // n_kv, dim=1), v.repeat_interleave(n_h // n_kv, dim=1)
        att = torch.softmax(torch.einsum("thd,shd->hts", q, k) / hs**0.5 + mask, dim=-1)
        x = x + torch.einsum("hts,shd->thd", att, v).reshape(T, d) @ m("wo", d, d).T
        h = rms(x, w["rms_ffn"].view(L, d)[layer])
        gate, up = h @ m("w1", hid, d).T, h @ m("w3", hid, d).T
        x = x + (torch.nn.functional.silu(gate) * up) @ m("w2", d, hid).T
    return rms(x, w["rms_final"]) @ w["cls"].view(-1, d).T


def runc_encode(text: str, pieces: list[bytes], scores: list[float], lookup: dict) -> list[int]:
    """run.c's `encode` (no BOS/EOS): dummy prefix, code points (else bytes + 3), best-score pair merges, leftmost
    on ties. Pair scores are kept in an array and updated next to each merge (same result, run in seconds)."""
    tokens = [lookup[b" "]] if text else []
    for ch in text:
        b = ch.encode("utf-8")
        tokens += [lookup[b]] if b in lookup else [x + 3 for x in b]

    def pair(i):
        t = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
        return (-np.inf, -1) if t is None else (scores[t], t)

    best = [pair(i) for i in range(len(tokens) - 1)]
    score, ids = np.array([b[0] for b in best]), [b[1] for b in best]
    while len(tokens) > 1:
        i = int(np.argmax(score))  # the first maximum: run.c's strict `>` scan keeps the leftmost
        if score[i] == -np.inf:
            break
        tokens[i : i + 2] = [ids[i]]
        score, _ = np.delete(score, i), ids.pop(i)
        for j in (i, i - 1):
            if 0 <= j < len(tokens) - 1:
                score[j], ids[j] = pair(j)
    return tokens


def tok_bin(path: Path) -> tuple[list[bytes], list[float]]:
    data, off, pieces, scores = path.read_bytes(), 4, [], []
    while off < len(data):
        s, n = struct.unpack_from("<fi", data, off)
        pieces.append(data[off + 8 : off + 8 + n])
        scores.append(s)
        off += 8 + n
    return pieces, scores


# ------------------------------------------------------------------------------------------- the tests
def test_greedy_from_bos_reproduces_runc_story(converted):
    model, tokenizer = load_model(str(converted)), load_tokenizer(str(converted))
    assert model.config.max_position_embeddings == 512 and model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id == [1, 2]  # stops at the next story's BOS, as run.c does
    story = generate_story(
        model, tokenizer, "", max_new_tokens=256, temperature=0
    )  # run.c: 256 steps after BOS
    assert story == RUNC_STORY


def test_logits_equal_llama2c_forward(converted, stories):
    """Float32 on both sides, as run.c computes: the same argmax everywhere and max |diff| < 5e-5 on logits up to
    ~16 (2.3e-5 measured over 96 positions, 1.5e-6 of the logit scale: the two sum in different orders; transformers
    also keeps RMSNorm and RoPE angles in float32 whatever the dtype, so float64 does not get closer). Without the
    pair-to-half permutation of wq/wk the logits are off by whole units: the check sees the RoPE layout."""
    tokens = [1, *load_tokenizer(str(converted))(stories[0], add_special_tokens=False)["input_ids"][:95]]
    theirs = runc_logits(BIN, tokens, torch.float32)
    model = load_model(str(converted), attn_implementation="eager")
    with torch.no_grad():
        ours = model(torch.tensor([tokens])).logits[0]
    assert ours.shape == (96, 512)
    assert (ours - theirs).abs().max().item() < 5e-5
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    args, weights = llama2c.read_bin(BIN)
    back_args, back = llama2c.from_transformers(model)
    assert back_args == args and all(torch.equal(back[k], weights[k]) for k in weights)  # bit-exact both ways
    for layer in model.model.layers:  # undo the permutation: now it is llama2.c's layout under rotate_half
        for proj, heads in ((layer.self_attn.q_proj, 8), (layer.self_attn.k_proj, 4)):
            proj.weight.data = llama2c.halves_to_pairs(proj.weight.data, heads)
    with torch.no_grad():
        assert (model(torch.tensor([tokens])).logits[0] - theirs).abs().max().item() > 1.0


def test_tokenizer_matches_runc_encode_on_real_stories(converted, stories):
    """All 2,316 stories match run.c's encode (measured, 13 s); the first 400 run here. Decoding gives back
    every story exactly; BOS first with add_special_tokens, as in llama2.c's data."""
    tokenizer = load_tokenizer(str(converted))
    pieces, scores = tok_bin(TOK)
    lookup = {p: i for i, p in enumerate(pieces)}
    ids = tokenizer(stories, add_special_tokens=False)["input_ids"]
    assert [runc_encode(s, pieces, scores, lookup) for s in stories[:400]] == ids[:400]
    assert [tokenizer.decode(i) for i in ids] == stories
    assert tokenizer("Once upon a time")["input_ids"] == [1, 403, 407, 261, 378]
    assert tokenizer("héllo 世界\n", add_special_tokens=False)["input_ids"] == runc_encode(
        "héllo 世界\n", pieces, scores, lookup
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)


def test_every_export_version_and_an_untied_head(converted, tmp_path):
    args, weights = llama2c.read_bin(BIN)
    v1 = llama2c.write_bin(args, weights, tmp_path / "v1.bin", version=1)
    args1, weights1 = llama2c.read_bin(v1)
    assert args1.version == 1 and all(torch.equal(weights[k], weights1[k]) for k in weights)
    args2, weights2 = llama2c.read_bin(llama2c.write_bin(args, weights, tmp_path / "v2.bin", version=2))
    assert (args2.version, args2.group_size) == (2, 64)
    for name, w in weights.items():  # Q8_0: every value within half a step of its group's scale
        step = w.reshape(-1, 64).abs().max(dim=1).values / 127 if w.dim() > 1 else torch.zeros(1)
        err = (weights2[name] - w).reshape(step.numel(), -1).abs().max(dim=1).values
        assert torch.all(err <= step / 2 + 1e-7), name
    untied = {**weights, "output.weight": weights["tok_embeddings.weight"] * 0.5}
    args.shared_classifier = False
    llama2c.write_bin(args, untied, tmp_path / "untied.bin", version=0)
    assert struct.unpack_from("<7i", (tmp_path / "untied.bin").read_bytes())[5] == -512
    folder = pull.convert_llama2c(str(tmp_path / "untied.bin"), str(TOK), str(tmp_path / "untied"))
    model = load_model(str(folder))
    assert model.config.tie_word_embeddings is False
    assert torch.equal(model.lm_head.weight, untied["output.weight"])
    assert torch.equal(model.model.embed_tokens.weight, weights["tok_embeddings.weight"])


def test_pt_checkpoint_converts_like_the_bin(converted, tmp_path):
    _, weights = llama2c.read_bin(BIN)
    state = {f"_orig_mod.{k}": v for k, v in weights.items()}  # a torch.compile'd train.py run
    state["_orig_mod.output.weight"] = state["_orig_mod.tok_embeddings.weight"]  # model.py ties them
    model_args = {
        "dim": 64,
        "n_layers": 5,
        "n_heads": 8,
        "n_kv_heads": 4,
        "vocab_size": 512,
        "multiple_of": 4,
        "max_seq_len": 512,
        "dropout": 0.0,
    }
    checkpoint = {
        "model": state,
        "model_args": model_args,
        "iter_num": 5,
        "best_val_loss": 1.2968,
        "config": {"dataset": "tinystories", "compile": True},
    }
    torch.save(checkpoint, tmp_path / "stories260K.pt")
    shutil.copy(TOK, tmp_path / "tok512.bin")  # found beside the checkpoint
    folder = pull.convert_llama2c(str(tmp_path / "stories260K.pt"), None, str(tmp_path / "from_pt"))
    assert json.loads((folder / "pull_info.json").read_text())["format"] == "llama2.c .pt"
    a, b = load_model(str(folder)), load_model(str(converted))
    ids = torch.tensor([[1, 403, 407, 261, 378, 6]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


class Hostile:
    def __reduce__(self):
        return (print, ("ran",))


def test_bad_input_names_the_problem_and_fix(tmp_path):
    data = BIN.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:100_000])
    with pytest.raises(ConfigError, match="truncated"):
        pull.convert_llama2c(str(tmp_path / "short.bin"), str(TOK), str(tmp_path / "o"))
    (tmp_path / "junk.bin").write_bytes(b"not a model at all, just some text bytes" * 10)
    with pytest.raises(ConfigError, match="llama2.c"):
        llama2c.read_bin(tmp_path / "junk.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<Ii", llama2c.MAGIC, 9) + bytes(300))
    with pytest.raises(ConfigError, match="version 9"):
        llama2c.read_bin(tmp_path / "v9.bin")
    shutil.copy(BIN, tmp_path / "alone.bin")
    with pytest.raises(ConfigError, match="TOKENIZER="):
        pull.convert_llama2c(str(tmp_path / "alone.bin"), None, str(tmp_path / "o"))
    (tmp_path / "tok_short.bin").write_bytes(TOK.read_bytes()[:3000])
    with pytest.raises(ConfigError, match="tok_short.bin"):
        pull.convert_llama2c(str(BIN), str(tmp_path / "tok_short.bin"), str(tmp_path / "o"))
    torch.save({"model": Hostile(), "model_args": {}}, tmp_path / "hostile.pt")
    with pytest.raises(ConfigError, match="weights_only"):
        llama2c.read_pt(tmp_path / "hostile.pt")
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_hub_folder_pulls_through_the_cache_and_stages_take_the_folder(hub_cache, tmp_path, stories, capsys):
    repo = tmp_path / "tinyllamas"
    (repo / "stories260K").mkdir(parents=True)
    shutil.copy(BIN, repo / "stories260K" / "stories260K.bin")
    shutil.copy(TOK, repo / "stories260K" / "tok512.bin")
    (repo / "README.md").write_text("llama2.c TinyStories models\n")
    hub_cache.add("karpathy/tinyllamas", repo)
    out = tmp_path / "pulled"
    assert pull.main(["--model", "karpathy/tinyllamas/stories260K", "--output_dir", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    assert json.loads((out / "pull_info.json").read_text())["source"] == "karpathy/tinyllamas/stories260K"
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:12]) + "\n", encoding="utf-8")
    from tinystories.stages import eval as eval_stage

    argv = [
        "--model",
        str(out),
        "--data",
        str(data),
        "--generate",
        "false",
        "--output_dir",
        str(tmp_path / "ev"),
    ]
    assert eval_stage.main(argv) == 0
    result = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert result["num_stories"] == 12 and result["num_bytes"] == sum(len(s.encode()) for s in stories[:12])
    assert 0.5 < result["bits_per_byte"] < 2.0


def test_sample_stories_are_what_the_tests_read():
    assert len(read_sample_stories()) == 2316


# ---------------------------------------------------------------------------------- back to llama2.c
RUNC = os.environ.get("LLAMA2C_RUN")  # a built llama2.c `run` (cc -O3 -o run run.c -lm); none in CI
needs_runc = pytest.mark.skipif(not RUNC, reason="set LLAMA2C_RUN to a built llama2.c run.c binary")


def test_written_checkpoint_and_tokenizer_are_llama2cs_own(converted, tmp_path):
    """stories260K.bin -> transformers -> .bin is the original file byte for byte (header, weights in run.c's
    order, wq/wk back to interleaved pairs, the legacy RoPE tables); so is tok512.bin from the transformers
    tokenizer (pieces, llama2.c's BOS/EOS text, sentencepiece's scores)."""
    model, tokenizer = load_model(str(converted)), load_tokenizer(str(converted))
    written = llama2c.save_llama2c(model, tmp_path / "stories260K.bin")
    assert written.read_bytes() == BIN.read_bytes()
    pieces, scores = runc_pieces(tokenizer)
    assert (pieces, scores) == tok_bin(TOK)
    assert write_tokenizer_bin(pieces, scores, tmp_path / "tok512.bin").read_bytes() == TOK.read_bytes()


def test_byte_level_tokenizer_pieces_are_decoded_bytes(gpt_neo_tokenizer_dir, stories, tmp_path):
    tokenizer = load_tokenizer(str(gpt_neo_tokenizer_dir))
    pieces, scores = runc_pieces(tokenizer)
    assert len(pieces) == 50257 and pieces[220] == b" " and pieces[50256] == b"<|endoftext|>"
    assert (pieces[256], scores[256], pieces[258], scores[258], scores[0]) == (b" t", -0.0, b"he", -2.0, 0.0)
    for story in [*stories[:50], "héllo 世界 ☃\n"]:
        ids = tokenizer(story, add_special_tokens=False)["input_ids"]
        assert b"".join(pieces[i] for i in ids) == story.encode()
    path = write_tokenizer_bin(pieces, scores, tmp_path / "tokenizer.bin")
    assert path.stat().st_size == 4 + 8 * 50257 + sum(map(len, pieces))
    assert tok_bin(path) == (pieces, [struct.unpack("<f", struct.pack("<f", s))[0] for s in scores])


def llama_twin(tied: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LlamaForCausalLM(build_config(size="1M", architecture="llama", vocab_size=512))
    if not tied:  # an untied classifier with its own values
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn(512, 64) * 0.02)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_llama_twin_round_trips_through_the_written_bin(tied, tmp_path):
    """The 1M Llama twin (16 heads, 4 key/value heads) written and read back by the project's reader computes the
    same logits: max |diff| <= 1e-5 (0 measured: the same float32 values, the same layout)."""
    model = llama_twin(tied)
    path = llama2c.save_llama2c(model, tmp_path / "twin.bin")
    header = struct.unpack_from("<7i", path.read_bytes())
    assert header == (64, model.config.intermediate_size, 8, 16, 4, 512 if tied else -512, 512)
    back = llama2c.to_transformers(*llama2c.read_bin(path))
    ids = torch.randint(0, 512, (1, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (back(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    assert back.config.tie_word_embeddings is tied


def test_a_model_runc_cannot_run_is_refused(tmp_path, gpt_neo_tokenizer_dir):
    model = llama_twin(True)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    with pytest.raises(ConfigError, match="rope_theta"):
        llama2c.save_llama2c(model, tmp_path / "x.bin")
    neo = GPTNeoForCausalLM(build_config(size="1M", vocab_size=512))
    with pytest.raises(ConfigError, match="model_type"):
        llama2c.save_llama2c(neo, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


@needs_runc
def test_runc_runs_what_was_written(converted, tmp_path, gpt_neo_tokenizer_dir):
    """run.c itself on the written files: stories260K prints its published story; the 1M Llama twin (GPT-Neo's
    vocabulary, random weights) prints exactly what run.c's decode makes of torch's greedy tokens from BOS."""
    model, tokenizer = load_model(str(converted)), load_tokenizer(str(converted))
    llama2c.save_llama2c(model, tmp_path / "m.bin")
    write_tokenizer_bin(*runc_pieces(tokenizer), tmp_path / "t.bin")
    done = subprocess.run(
        [RUNC, tmp_path / "m.bin", "-z", tmp_path / "t.bin", "-t", "0"], capture_output=True
    )
    assert done.stdout.decode() == RUNC_STORY + "\n" and b"achieved tok/s" in done.stderr
    tokenizer = load_tokenizer(str(gpt_neo_tokenizer_dir))
    torch.manual_seed(0)
    twin = LlamaForCausalLM(build_config(size="1M", architecture="llama")).eval()
    llama2c.save_llama2c(twin, tmp_path / "twin.bin")
    pieces, scores = runc_pieces(tokenizer)
    write_tokenizer_bin(pieces, scores, tmp_path / "gpt.bin")
    with torch.no_grad():
        ids = twin.generate(torch.tensor([[1]]), max_new_tokens=40, do_sample=False, eos_token_id=None)[
            0
        ].tolist()
    assert 1 not in ids[1:]  # run.c stops at a generated BOS
    done = subprocess.run(
        [RUNC, tmp_path / "twin.bin", "-z", tmp_path / "gpt.bin", "-t", "0", "-n", "40"], capture_output=True
    )
    assert done.stdout == runc_text(pieces, ids) + b"\n" and len(done.stdout) > 40


def test_runc_text_prints_as_runc_decodes():
    """run.c's decode + safe_printf: no leading space after BOS, `<0xHH>` as its byte, a lone unprintable byte
    dropped (a raw one or a byte token), printf stopping at a NUL; the first id is fed, never printed."""
    pieces = [
        b"<unk>",
        b"\n<s>\n",
        b" Once",
        b" upon",
        b"<0x41>",
        b"<0x07>",
        b"\x07",
        b"\xe4",
        b"ab\x00cd",
        b"\t",
    ]
    assert runc_text(pieces, [1, 2, 3]) == b"Once upon"
    assert runc_text(pieces, [3, 2, 4, 5, 6, 7, 8, 9, 1, 3]) == b" OnceAab\t\n<s>\nupon"
    assert runc_text(pieces, [2]) == b""
