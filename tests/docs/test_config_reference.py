"""docs/config.md is generated from src/gpt2/config.py's dataclasses (docs/gen_config.py): the committed
page must be what the code says.

    python -m pytest -q tests/docs/test_config_reference.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config", REPO / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_what_the_code_says() -> None:
    gen = _gen()
    assert gen.main(["--check"]) == 0, "docs/config.md is out of date: run python docs/gen_config.py"


def test_every_field_of_every_section_is_in_the_reference() -> None:
    import dataclasses

    from gpt2.config import RunConfig

    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")

    sections = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}
    found = 0
    for name, factory in sections.items():
        obj = factory()
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                for g in dataclasses.fields(value):
                    assert f"`{name}.{f.name}.{g.name}`" in page
                    found += 1
            else:
                assert f"`{name}.{f.name}`" in page
                found += 1
    assert found > 60


def test_a_changed_docstring_makes_the_check_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen()
    source = tmp_path / "config.py"
    text = gen.SOURCE.read_text(encoding="utf-8")
    source.write_text(text.replace('"""Peak learning rate."""', '"""The peak learning rate."""'), encoding="utf-8")
    monkeypatch.setattr(gen, "SOURCE", source)
    assert gen.main(["--check"]) == 1
    assert "The peak learning rate." in gen.render()
