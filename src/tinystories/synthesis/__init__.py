"""Story synthesis (`tinystories data`): TinyStories and TinyStories-Instruct with an LLM backend.

- `prompts`: the vocabulary, features and Jinja templates of `data_generation/`; seeded prompts.
- `backends`: OpenAI-compatible servers, local `transformers`, vLLM's offline engine, an offline template.
- `cleaning`: what is cut from a completion (chat preambles, title lines, labels).
- `from_stories`: Instruct records from an existing story corpus (`--data`; backend `stories`: no LLM).
- `arguments`: the command line of `tinystories data`.
- `records`: record / failure rows and the atomic parquet writer of a shard.
- `job`: resumable, shardable jobs writing parquet parts; merge into one `datasets` dataset; push
  (`tinystories data` is `tinystories.stages.data`).
"""
