"""Progress bars never break the work they show (a closed pipe, a full log disk)."""

from __future__ import annotations

import errno
import io

import pytest

from soundguide.core.progress import QuietStream, progress_bar


class ClosingStream(io.StringIO):
    """Takes ``limit`` characters, then fails like a pipe whose reader has gone."""

    def __init__(self, limit: int, error: type[Exception] = BrokenPipeError) -> None:
        super().__init__()
        self.limit, self.error = limit, error

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.limit:
            raise self.error(errno.EPIPE, "Broken pipe")
        return super().write(text)

    def flush(self) -> None:
        if self.tell() >= self.limit:
            raise self.error(errno.EPIPE, "Broken pipe")


@pytest.mark.parametrize("error", [BrokenPipeError, OSError])
def test_a_bar_on_a_stream_that_closes_goes_quiet(error):
    stream = ClosingStream(60, error)
    bar = progress_bar(total=1000, file=stream, mininterval=0, miniters=1)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert bar.n == 1000 and 0 < len(stream.getvalue()) <= 60


def test_quiet_stream_passes_writes_through_until_the_first_failure():
    stream = ClosingStream(5)
    quiet = QuietStream(stream)
    assert quiet.write("abc") == 3 and not quiet.failed
    assert quiet.write("defgh") == 5 and quiet.failed  # dropped from here on
    assert quiet.write("ij") == 2
    quiet.flush()
    assert stream.getvalue() == "abc"
    assert quiet.getvalue() == "abc"  # everything else is the wrapped stream's


def test_a_closed_stream_is_quiet_too():
    stream = io.StringIO()
    quiet = QuietStream(stream)
    stream.close()
    quiet.write("x")
    quiet.flush()
    assert quiet.failed


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = progress_bar(total=3, file=stream, enabled=False)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""
