"""Naming a GGUF file (models/from_gguf.py); the conversion itself runs in the slow test_stages_local_llm.py."""

from __future__ import annotations

import pytest

from tinystories.core import ConfigError
from tinystories.models.from_gguf import is_converted, resolve_gguf


def test_a_gguf_is_a_path_or_a_file_inside_an_installed_package(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_gguf(str(path)) == path
    assert resolve_gguf("tinystories:py.typed").name == "py.typed"  # located, not imported
    with pytest.raises(ConfigError, match="not installed"):
        resolve_gguf("no_such_package_here:model.gguf")
    with pytest.raises(ConfigError, match="holds no"):
        resolve_gguf("tinystories:missing.gguf")
    assert not is_converted(tmp_path)
