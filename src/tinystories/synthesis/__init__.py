"""Story synthesis (`tinystories data`): TinyStories and TinyStories-Instruct with an LLM backend.

- `prompts`: the vocabulary, features and Jinja templates of `data_generation/`; seeded prompts.
- `backends`: OpenAI-compatible servers, local `transformers`, vLLM's offline engine, an offline template.
- `cleaning`: what is cut from a completion (chat preambles, title lines, labels).
- `from_stories`: Instruct records from an existing story corpus (`--source_data`; backend `stories`: no LLM).
- `arguments`: the command line of `tinystories data`.
- `records`: record / failure rows and the atomic parquet writer of a shard.
- `job`: resumable, shardable jobs writing parquet parts; merge into one `datasets` dataset; push.
"""

from tinystories.shards import collect_shards, is_synthesis_output, load_generated
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.backends import (
    Completion,
    GenerationFailure,
    OpenAIBackend,
    Request,
    SamplingConfig,
    TemplateBackend,
    TransformersBackend,
    VLLMBackend,
    build_backend,
)
from tinystories.synthesis.job import main, merge, run, run_shard
from tinystories.synthesis.prompts import PromptSpec, Vocabulary, random_sentence, record_id

__all__ = [
    "Completion",
    "GenerationFailure",
    "OpenAIBackend",
    "PromptSpec",
    "Request",
    "SamplingConfig",
    "SynthesisArguments",
    "TemplateBackend",
    "TransformersBackend",
    "VLLMBackend",
    "Vocabulary",
    "build_backend",
    "collect_shards",
    "is_synthesis_output",
    "load_generated",
    "main",
    "merge",
    "random_sentence",
    "record_id",
    "run",
    "run_shard",
]
