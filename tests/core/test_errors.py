"""one_line and exception_line: the one owner of how a message becomes an error line."""

from __future__ import annotations

import pytest

from soundguide.core.errors import exception_line, one_line


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("a\n  b\tc ", 160, "a b c"),
        ("x" * 160, 160, "x" * 160),
        ("x" * 161, 160, "x" * 157 + "..."),
        ("abcdefghij", 8, "abcde..."),
        ("", 160, ""),
    ],
)
def test_one_line(text, limit, expected):
    assert one_line(text, limit) == expected


def test_one_line_of_an_exception():
    assert one_line(OSError("disk\nfull")) == "disk full"
    assert one_line(KeyError()) == "KeyError"


def test_exception_line():
    assert exception_line(RuntimeError("out of\nmemory")) == "RuntimeError: out of memory"
    assert exception_line(SystemExit()) == "SystemExit"
    assert exception_line(ValueError("y" * 400), 20) == "ValueError: " + "y" * 17 + "..."
