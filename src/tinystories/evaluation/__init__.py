"""Measuring a model: metrics, generation, the LLM judge, instruction following and result files."""
