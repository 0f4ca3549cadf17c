"""The recipes' data files, installed as the package `tinystories.data_generation` (see pyproject.toml)."""
