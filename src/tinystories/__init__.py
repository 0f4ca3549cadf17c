"""TinyStories recipes: synthesis, deduplication, GPT-Neo pretraining, SFT/LoRA, evaluation and Hub release."""

__version__ = "0.1.0"
