"""Story synthesis (`tinystories data`): TinyStories and TinyStories-Instruct with an LLM backend.

- `prompts`: the vocabulary, features and Jinja templates of `data_generation/`; seeded prompts.
- `backends`: OpenAI-compatible servers, local `transformers`, vLLM's offline engine, an offline template.
- `job`: resumable, shardable jobs writing parquet parts; merge into one `datasets` dataset; push.
"""

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
from tinystories.synthesis.job import (
    SynthesisArguments,
    collect_shards,
    is_synthesis_output,
    load_generated,
    main,
    merge,
    run,
    run_shard,
)
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
