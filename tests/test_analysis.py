"""`tinystories analyze` on tiny models: head statistics and neuron top tokens against a direct computation,
a window-constrained layer labelled local, the word categories, and a model loaded by Hub id offline."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from tiny import make_tiny_model_dir, train_tiny_tokenizer
from tinystories.analysis.heads import copying_score
from tinystories.analysis.inputs import WordCategories
from tinystories.hub.cards import write_model_card
from tinystories.models.loading import load_model
from tinystories.stages import analyze as analysis

NUM_STORIES = 6
CONTEXT = 96


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, stories):
    """A tiny 2-layer model (layer 0 global, layer 1 local with a 4-token window) and its analysis."""
    root = tmp_path_factory.mktemp("analysis")
    tokenizer = train_tiny_tokenizer(stories[:200])
    model_dir = make_tiny_model_dir(root / "model", tokenizer, window_size=4)
    write_model_card(model_dir, {"stage": "pretrain", "model_name": "tiny"})  # a folder our recipes wrote
    data = root / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:NUM_STORIES]) + "\n", encoding="utf-8")
    argv = ["--model", str(model_dir), "--data", str(data), "--max_samples", str(NUM_STORIES)]
    argv += ["--max_length", str(CONTEXT), "--batch_size", "4", "--device", "cpu", "--top_neurons", "4"]
    assert analysis.main(argv) == 0
    result = json.loads((model_dir / "analysis" / "analysis.json").read_text())
    return model_dir, tokenizer, stories[:NUM_STORIES], result


def _direct(model_dir, tokenizer, texts):
    """Per story (unbatched): attention probabilities and MLP activations, by the definition."""
    model = load_model(str(model_dir), attn_implementation="eager")
    captured = []
    hooks = [
        b.mlp.c_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0][0]))
        for b in model.transformer.h
    ]
    runs = []
    for text in texts:
        ids = [tokenizer.eos_token_id, *tokenizer(text).input_ids][:CONTEXT]
        captured.clear()
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
        runs.append((ids, [a[0] for a in out.attentions], list(captured)))
    for h in hooks:
        h.remove()
    return runs


def test_head_statistics_and_top_tokens_equal_a_direct_computation(analysed):
    model_dir, tokenizer, texts, result = analysed
    runs = _direct(model_dir, tokenizer, texts)
    assert result["num_stories"] == NUM_STORIES and result["context"] == CONTEXT
    assert len(result["heads"]) == 2 * 4
    for head in result["heads"]:
        layer, h = head["layer"], head["head"]
        distance = local = queries = uniform = 0.0
        received: dict[int, float] = {}
        for ids, attentions, _ in runs:
            a = attentions[layer][h].double()
            for i in range(len(ids)):
                distance += sum(float(a[i, j]) * (i - j) for j in range(i + 1))
                local += float(a[i, max(0, i - 8) : i + 1].sum())
                queries += 1
                uniform += i / 2
                for j in range(1, i):
                    received[ids[j]] = received.get(ids[j], 0.0) + float(a[i, j])
        assert head["mean_attention_distance"] == pytest.approx(distance / queries, rel=1e-4, abs=1e-4)
        assert head["local_attention_share"] == pytest.approx(local / queries, abs=1e-4)
        assert head["distance_vs_uniform"] == pytest.approx(distance / uniform, rel=1e-3)
        if head["kind"] == "global":
            expected = max(received, key=received.get)
            assert head["top_attended"][0]["token_id"] == expected

    neurons = result["neurons"]
    assert {n["layer"] for n in neurons} == {0, 1} and all(n["top_tokens"] for n in neurons)
    for n in neurons:
        acts = [
            (float(act[pos, n["neuron"]]), ids[pos])
            for ids, _, caps in runs
            for act in [caps[n["layer"]]]
            for pos in range(1, len(ids))
        ]
        value, token = max(acts)
        assert n["top_tokens"][0]["token"] == tokenizer.decode([token])
        assert n["top_tokens"][0]["activation"] == pytest.approx(value, abs=1e-3)


def test_a_window_constrained_layer_is_local_and_the_rest_is_not(analysed):
    *_, result = analysed
    kinds = {(h["layer"], h["head"]): h["kind"] for h in result["heads"]}
    assert all(kinds[(1, h)] == "local" for h in range(4))  # 4-token window: every query looks ≤ 3 back
    assert all(kinds[(0, h)] != "local" for h in range(4))  # random global attention spreads over the story
    assert {h["layer_attention"] for h in result["heads"]} == {"global", "local"}
    assert all(h["mean_attention_distance"] <= 3 for h in result["heads"] if h["layer"] == 1)


def test_card_links_the_figures(analysed):
    model_dir, _, _, result = analysed
    card = (model_dir / "README.md").read_text()
    assert "## Figures" in card
    for name in result["figures"]:
        assert f"](analysis/{name})" in card and (model_dir / "analysis" / name).is_file()


def test_outputs_and_random_control(analysed):
    model_dir, *_, result = analysed
    out = model_dir / "analysis"
    for name in ("analysis.md", "head_distances.png", "attention_patterns.png", "neuron_roles.png"):
        assert (out / name).is_file(), name
    control = result["neuron_summary_random_init"]
    assert control["num_neurons"] == result["neuron_summary"]["num_neurons"] == 2 * 128
    assert 0 <= control["clear_role_share"] <= 1
    assert "| layer | head |" in (out / "analysis.md").read_text()


def test_word_categories():
    texts = ["Once upon a time, a girl named Lily played with her big red ball. Lily was happy!"]
    cats = WordCategories(texts)
    assert cats.names == {"Lily"}
    assert [cats.of_word(w) for w in ("Lily", "played", "ball", "happy", "with", "Once")] == [
        "name", "verb", "noun", "adjective", "function_word", "function_word",
    ]  # fmt: skip
    assert cats.of_token(texts[0], (len(texts[0]) - 1, len(texts[0]))) == "punctuation"
    assert cats.of_token(texts[0], None) == "other"


def test_analysis_of_a_model_loaded_by_hub_id(hub_cache, tmp_path, stories, monkeypatch):
    tokenizer = train_tiny_tokenizer(stories[:200])
    folder = make_tiny_model_dir(tmp_path / "src", tokenizer, layers=1)
    hub_cache.add("roneneldan/TinyStories-1Layer-21M", folder)
    shutil.rmtree(folder)  # only the cache copy: the model and tokenizer must come through the Hub id
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:3]) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    argv = ["--data", str(data), "--max_samples", "3", "--max_length", "64", "--random_control", "false"]
    assert analysis.main(argv) == 0  # the default model: the paper's interpretability subject
    result = json.loads(
        (tmp_path / "outputs/analysis/roneneldan__TinyStories-1Layer-21M/analysis.json").read_text()
    )
    assert result["model"] == "roneneldan/TinyStories-1Layer-21M"
    assert len(result["heads"]) == 4 and result["neuron_summary_random_init"] is None
    assert {h["kind"] for h in result["heads"]} <= {"local", "global", "mixed"}


class _Repeater(torch.nn.Module):
    """Predicts the token `period` positions back: a perfect induction model for sequences shown twice."""

    def __init__(self, vocab: int, period: int):
        super().__init__()
        self.vocab, self.period = vocab, period
        self.config = SimpleNamespace(eos_token_id=0)
        self.device = torch.device("cpu")

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        nxt = ids[:, : ids.shape[1] - self.period]  # at position t: the token at t + 1 - period
        logits[:, self.period - 1 : ids.shape[1] - 1].scatter_(-1, nxt[..., None], 50.0)
        return SimpleNamespace(logits=logits)


def test_copying_score_separates_a_copying_model_from_one_that_cannot(analysed):
    pool = torch.arange(1, 200)
    perfect = copying_score(_Repeater(200, 10), pool, length=10, sequences=4)
    assert perfect["first_copy_loss"] > 4.5  # ≈ ln(200): the first copy is unpredictable
    assert perfect["second_copy_loss"] < 1e-3 and perfect["copying_score"] > 4.5
    copying = analysed[3]["in_context_copying"]  # the untrained tiny model: the repeat is no easier
    assert abs(copying["copying_score"]) < 0.5 and copying["first_copy_loss"] > 3


def test_analysis_of_a_tiny_llama(tmp_path, stories):
    """Llama blocks (issue 22): one neuron per SwiGLU unit (the input of `mlp.down_proj`), every head of
    every layer, and the top activation of a neuron equal to a direct computation."""
    from tinystories.analysis.neurons import mlp_outputs

    tokenizer = train_tiny_tokenizer(stories[:200])
    model_dir = make_tiny_model_dir(tmp_path / "llama", tokenizer, architecture="llama")
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:4]) + "\n", encoding="utf-8")
    argv = ["--model", str(model_dir), "--data", str(data), "--max_samples", "4", "--max_length", "64"]
    argv += ["--batch_size", "2", "--device", "cpu", "--top_neurons", "3"]
    assert analysis.main(argv) == 0
    result = json.loads((model_dir / "analysis" / "analysis.json").read_text())

    model = load_model(str(model_dir), attn_implementation="eager")
    inner = model.config.intermediate_size
    assert mlp_outputs(model) == [layer.mlp.down_proj for layer in model.model.layers]
    assert result["neuron_summary"]["num_neurons"] == 2 * inner
    assert result["neuron_summary_random_init"]["num_neurons"] == 2 * inner
    assert len(result["heads"]) == 2 * 4 and {(h["layer"], h["head"]) for h in result["heads"]} == {
        (layer, head) for layer in range(2) for head in range(4)
    }
    assert all(h["kind"] in {"local", "global", "mixed"} for h in result["heads"])
    assert all(0 <= h["local_attention_share"] <= 1 + 1e-6 for h in result["heads"])
    neurons = result["neurons"]
    assert {n["layer"] for n in neurons} == {0, 1} and all(0 <= n["neuron"] < inner for n in neurons)

    captured = []
    hooks = [m.register_forward_pre_hook(lambda m, a: captured.append(a[0][0])) for m in mlp_outputs(model)]
    acts = {0: [], 1: []}
    for text in stories[:4]:
        ids = [tokenizer.eos_token_id, *tokenizer(text).input_ids][:64]
        captured.clear()
        with torch.no_grad():
            model(torch.tensor([ids]))
        for layer in (0, 1):
            acts[layer] += [(captured[layer][pos], ids[pos]) for pos in range(1, len(ids))]
    for h in hooks:
        h.remove()
    for n in neurons:
        value, token = max((float(a[n["neuron"]]), t) for a, t in acts[n["layer"]])
        assert n["top_tokens"][0]["activation"] == pytest.approx(value, abs=1e-3)
        assert n["top_tokens"][0]["token"] == tokenizer.decode([token])
