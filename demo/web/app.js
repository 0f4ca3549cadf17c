// TinyStories in the browser: transformers.js on the exported ONNX model, served from this folder only.
//
// `build.py` copies transformers.js (its self-contained browser bundle), the ONNX Runtime Web WebAssembly files
// and the model into the served folder and writes manifest.json; nothing is fetched from a CDN or the Hub.
// The prompt is the TinyStories-Instruct format of `tinystories.data.instruct.build_prompt` (a test checks it),
// sampling stays within the 512-token context the models were trained at and stops at the end-of-text token,
// temperature 0 decodes greedily (the test compares that with PyTorch's greedy story).
// `window.tinystories.benchmark` times greedy generation for `python -m demo.web.bench`; `?threads=N` in the URL
// sets ONNX Runtime Web's thread count (its default: half the logical cores, at most 4).
import { AutoModelForCausalLM, AutoTokenizer, env, Tensor, TextStreamer } from "./vendor/transformers.min.js";

const TRAINED_CONTEXT = 512;
const FEATURES = ["Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict"];
const FIELDS = [
  ["features", "Features"],
  ["words", "Words"],
  ["summary", "Summary"],
  ["random_sentence", "Random sentence"],
];
const PROMPT_END = "Story: \n";

const here = new URL(".", import.meta.url);
env.allowRemoteModels = false; // the Hub is never asked
env.allowLocalModels = true;
env.localModelPath = new URL("models/", here).pathname;
env.useBrowserCache = false; // the files are local already; a cache would keep a stale export
env.backends.onnx.wasm.wasmPaths = {
  mjs: new URL("vendor/ort-wasm-simd-threaded.asyncify.mjs", here).href,
  wasm: new URL("vendor/ort-wasm-simd-threaded.asyncify.wasm", here).href,
};
const threads = Number(new URLSearchParams(location.search).get("threads"));
if (Number.isInteger(threads) && threads > 0) env.backends.onnx.wasm.numThreads = threads;

/** `dog, ball happy` -> ["dog", "ball", "happy"] (commas or spaces). */
export function splitWords(text) {
  return (text || "").split(/[,\s]+/).filter(Boolean);
}

function oneLine(text) {
  return String(text || "").trim().split(/\s+/).filter(Boolean).join(" ");
}

/** The TinyStories-Instruct prompt: one line per given field (canonical order), then `Story: ` and a newline. */
export function buildPrompt({ words = [], features = [], summary = null, random_sentence = null } = {}) {
  const values = { features, words, summary, random_sentence };
  let prompt = "";
  for (const [name, label] of FIELDS) {
    const value = values[name];
    const text = Array.isArray(value) ? value.join(", ") : oneLine(value);
    if (text) prompt += `${label}: ${text}\n`;
  }
  return prompt + PROMPT_END;
}

/** The Instruct prompt when any field is set (else nothing), then the plain story beginning. */
export function fullPrompt({ words = "", features = [], summary = "", random_sentence = "", beginning = "" }) {
  const wordList = splitWords(words);
  const instruct = wordList.length || features.length || oneLine(summary) || oneLine(random_sentence);
  const prompt = instruct ? buildPrompt({ words: wordList, features, summary, random_sentence }) : "";
  return prompt + (beginning || "");
}

const $ = (id) => document.getElementById(id);
const state = { manifest: null, tokenizer: null, model: null, dtype: null, last: null };

function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message;
}

async function loadModel(dtype) {
  setState("loading", `Loading the model (${dtype})…`);
  $("generate").disabled = true;
  const name = state.manifest.model;
  state.tokenizer ??= await AutoTokenizer.from_pretrained(name);
  state.model = await AutoModelForCausalLM.from_pretrained(name, { dtype, device: "wasm" });
  state.dtype = dtype;
  $("generate").disabled = false;
  setState("ready", `Ready (${dtype} weights).`);
}

function formFields() {
  return {
    words: $("words").value,
    features: [...document.querySelectorAll("#features input:checked")].map((box) => box.value),
    summary: $("summary").value,
    random_sentence: $("random-sentence").value,
    beginning: $("beginning").value,
  };
}

/** Stream a story for the form's fields into #story; resolves to {prompt, tokens, text, chunks}. */
export async function writeStory() {
  const { tokenizer, model } = state;
  const fields = formFields();
  const prompt = fullPrompt(fields);
  const eos = tokenizer.eos_token_id;
  let ids = prompt ? tokenizer.encode(prompt, { add_special_tokens: false }) : [];
  if (!ids.length) ids = [eos]; // unconditional: the separator the model saw before each story
  const limit = Math.min(TRAINED_CONTEXT, model.config.max_position_embeddings || TRAINED_CONTEXT);
  if (ids.length >= limit) throw new Error(`the prompt is ${ids.length} tokens; the model reads ${limit}: shorten it`);
  const maxNew = Math.max(1, Math.min(Number($("max-new-tokens").value) || 1, limit - ids.length));
  const temperature = Number($("temperature").value) || 0;
  const topP = Number($("top-p").value) || 1;

  const record = { prompt, tokens: [], text: "", chunks: 0 };
  state.last = record;
  const show = () => ($("story").textContent = (fields.beginning + record.text).trim());
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    callback_function: (text) => {
      record.text += text;
      record.chunks += 1;
      show();
    },
    token_callback_function: (tokens) => record.tokens.push(...tokens.map(Number)),
  });
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  const sampling = temperature > 0 ? { do_sample: true, temperature, top_p: topP, top_k: 0 } : { do_sample: false };
  await model.generate({ input_ids, attention_mask, max_new_tokens: maxNew, eos_token_id: eos, streamer, ...sampling });
  if (record.tokens.at(-1) === eos) record.tokens.pop(); // the end of the story, not part of it
  show();
  return record;
}

/** A streamer that only notes when `generate` calls it: with the prompt first, then after each new token. */
class Clock {
  times = [];
  put() {
    this.times.push(performance.now());
  }
  end() {}
}

/**
 * Batch-1 greedy generation of exactly `newTokens` tokens after the token ids `ids` (the end-of-text token does
 * not stop it), timed: full warm-up calls until two in a row take within 10% of each other (at most `maxWarmup`:
 * WebAssembly's optimizing compiler replaces the first calls' baseline code, on a busy machine for several calls),
 * then `repeats` calls. The `dtype` weights are loaded into a model of their own: the page's model and form are
 * untouched. Resolves to the tokens of the first timed call and, per call, its milliseconds and the milliseconds
 * to its first token (the prompt's forward pass included).
 */
export async function benchmark({ dtype, ids, newTokens, repeats = 3, maxWarmup = 8 }) {
  const model = await AutoModelForCausalLM.from_pretrained(state.manifest.model, { dtype, device: "wasm" });
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  const run = async (count) => {
    const clock = new Clock();
    const started = performance.now();
    const options = { max_new_tokens: count, do_sample: false, eos_token_id: null, streamer: clock };
    const sequences = await model.generate({ input_ids, attention_mask, ...options });
    const ms = performance.now() - started;
    const tokens = Array.from(sequences.data.slice(ids.length), Number);
    return { tokens, ms, first_token_ms: clock.times[1] - started };
  };
  try {
    const warmup = [];
    while (warmup.length < maxWarmup) {
      warmup.push((await run(newTokens)).ms);
      const [before, last] = warmup.slice(-2);
      if (warmup.length > 1 && Math.abs(last - before) <= 0.1 * Math.min(last, before)) break;
    }
    const runs = [];
    for (let i = 0; i < repeats; i++) runs.push(await run(newTokens));
    return {
      dtype,
      tokens: runs[0].tokens,
      ms: runs.map((r) => r.ms),
      warmup_ms: warmup,
      first_token_ms: runs.map((r) => r.first_token_ms),
      same_tokens_every_run: runs.every((r) => r.tokens.join() === runs[0].tokens.join()),
      threads: env.backends.onnx.wasm.numThreads,
      cross_origin_isolated: self.crossOriginIsolated,
      user_agent: navigator.userAgent,
    };
  } finally {
    await model.dispose();
  }
}

async function main() {
  const features = $("features");
  for (const feature of FEATURES) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" value="${feature}" /> ${feature}`;
    features.append(label);
  }
  state.manifest = await (await fetch(new URL("manifest.json", here))).json();
  $("model-name").textContent = state.manifest.source;
  for (const dtype of state.manifest.dtypes) $("dtype").append(new Option(dtype, dtype));
  $("dtype").addEventListener("change", (event) => loadModel(event.target.value).catch(fail));
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("generate").disabled = true;
    setState("generating", "Writing…");
    try {
      const started = performance.now();
      const record = await writeStory();
      const seconds = (performance.now() - started) / 1000;
      setState("done", `${record.tokens.length} tokens in ${seconds.toFixed(1)} s.`);
    } catch (error) {
      fail(error);
    } finally {
      $("generate").disabled = false;
    }
  });
  await loadModel(state.manifest.dtypes[0]);
}

function fail(error) {
  console.error(error);
  setState("error", `Error: ${error.message || error}`);
}

window.tinystories = { benchmark, buildPrompt, fullPrompt, splitWords, state };
main().catch(fail);
