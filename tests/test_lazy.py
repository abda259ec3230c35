from __future__ import annotations

import sys

import pytest


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text(
        "from soundguide.lazy import lazy_exports\n"
        "_EXPORTS = {'VALUE': 'heavy'}\n"
        "__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)\n"
    )
    (root / "heavy.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg"
    for name in ("lazypkg", "lazypkg.heavy"):
        sys.modules.pop(name, None)


def test_a_name_is_imported_on_first_use_and_kept(package):
    import lazypkg

    assert "lazypkg.heavy" not in sys.modules
    assert "VALUE" in dir(lazypkg)
    assert lazypkg.VALUE == 42
    assert "lazypkg.heavy" in sys.modules and vars(lazypkg)["VALUE"] == 42


def test_an_unknown_name_is_an_attribute_error(package):
    import lazypkg

    with pytest.raises(AttributeError, match="module 'lazypkg' has no attribute 'nothing'"):
        lazypkg.nothing  # noqa: B018
    assert "lazypkg.heavy" not in sys.modules
