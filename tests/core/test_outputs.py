from __future__ import annotations

import pytest
import torch

from soundguide.core.errors import OutputError
from soundguide.core.files import atomic_write
from soundguide.core.outputs import grid, to_pil
from soundguide.core.runfolder import RunFolder


def test_to_pil_maps_minus_one_to_one_onto_bytes():
    image = torch.stack([torch.full((2, 2), -1.0), torch.zeros(2, 2), torch.full((2, 2), 5.0)])
    pixels = to_pil(image).getpixel((0, 0))
    assert pixels == (0, 128, 255)


def test_nan_image_is_never_written():
    image = torch.zeros(3, 4, 4)
    image[0, 0, 0] = float("nan")
    with pytest.raises(OutputError, match="NaN"):
        to_pil(image)


def test_grid_layout():
    rows = [[torch.zeros(3, 4, 6), torch.zeros(3, 4, 6)] for _ in range(3)]
    assert grid(rows, pad=2).size == (6 * 2 + 2, 4 * 3 + 2 * 2)


def test_non_empty_folder_is_refused_without_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="output folder is not empty") as info:
        RunFolder(tmp_path).open()
    assert "--overwrite" in info.value.hint
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "00001.pt").write_text("stale")
    (tmp_path / "edited.png").write_text("stale")
    with RunFolder(tmp_path, overwrite=True):
        pass
    # stale outputs of an earlier run are removed; other files are kept
    assert not (tmp_path / "steps").exists() and not (tmp_path / "edited.png").exists()
    assert (tmp_path / "keep.txt").exists()


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        RunFolder(tmp_path / "f").open()


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def failing(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
