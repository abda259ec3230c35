from __future__ import annotations

import pytest
import torch

from soundguide.core.errors import OutputError
from soundguide.core.files import atomic_write
from soundguide.core.outputs import grid, to_pil
from soundguide.core.runfolder import RunFolder


def test_to_pil_maps_minus_one_to_one_onto_bytes():
    image = torch.stack([torch.full((2, 2), -1.0), torch.zeros(2, 2), torch.full((2, 2), 5.0)])
    picture = to_pil(image)
    assert picture.mode == "RGB" and picture.getpixel((0, 0)) == (0, 128, 255)


def test_to_pil_clips_below_minus_one_instead_of_wrapping_around():
    image = torch.stack([torch.full((2, 2), -3.0), torch.full((2, 2), -1.5), torch.ones(2, 2)])
    assert to_pil(image).getpixel((1, 1)) == (0, 0, 255)


def test_nan_image_is_never_written():
    image = torch.zeros(3, 4, 4)
    image[0, 0, 0] = float("nan")
    with pytest.raises(OutputError, match="NaN"):
        to_pil(image)


def test_grid_layout():
    rows = [[torch.zeros(3, 4, 6), torch.zeros(3, 4, 6)] for _ in range(3)]
    assert grid(rows, pad=2).size == (6 * 2 + 2, 4 * 3 + 2 * 2)


def test_grid_places_each_tile_with_white_gaps():
    black, grey = -torch.ones(3, 4, 6), torch.zeros(3, 4, 6)
    picture = grid([[black, grey], [grey, black]])  # the default gap is 2 pixels
    assert picture.size == (6 * 2 + 2, 4 * 2 + 2)
    assert picture.getpixel((0, 0)) == (0, 0, 0) and picture.getpixel((5, 3)) == (0, 0, 0)
    assert picture.getpixel((6, 0)) == (255, 255, 255) and picture.getpixel((7, 4)) == (255,) * 3
    assert picture.getpixel((8, 0)) == (128,) * 3 and picture.getpixel((13, 3)) == (128,) * 3
    assert picture.getpixel((0, 6)) == (128,) * 3 and picture.getpixel((8, 6)) == (0, 0, 0)
    assert picture.getpixel((13, 9)) == (0, 0, 0)


def test_non_empty_folder_is_refused_without_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="output folder is not empty") as info:
        RunFolder(tmp_path).open()
    assert info.value.hint == (
        "pass --overwrite to replace soundguide's outputs in it (other files are kept), "
        "or choose another --out"
    )
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


@pytest.mark.parametrize("shape", [(4, 4), (4, 3, 3), (1, 3, 3, 3), (3,)])
def test_to_pil_refuses_what_is_not_one_rgb_image(shape):
    with pytest.raises(ValueError, match=r"expected an image \(3, H, W\)"):
        to_pil(torch.zeros(shape))


def _event(step, final=False):
    from types import SimpleNamespace

    return SimpleNamespace(
        step=step,
        final=final,
        latent=torch.zeros(1, 2, 2),
        image=torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(step)) * 2 - 1,
        losses={"total": torch.zeros(1), "a": torch.zeros(1)},
        lr=None if final else 0.1,
    )


@pytest.mark.parametrize(
    ("save_every", "steps", "frames"),
    [
        (0, 100, list(range(0, 100, 2)) + [100]),
        (0, 120, list(range(0, 120, 2)) + [120]),  # every 120 // 50 = 2 steps
        (5, 12, [0, 5, 10, 12]),
        (1, 60, list(range(61))),
        (0, 30, list(range(31))),
    ],
)
def test_gif_frames_follow_save_every_or_fifty_frames(tmp_path, save_every, steps, frames):
    from PIL import Image

    from soundguide.core.outputs import StepWriter

    writer = StepWriter(tmp_path, save_every=save_every, gif=True, steps=steps)
    for step in range(steps):
        writer(_event(step))
    writer(_event(steps, final=True))
    path = writer.finish()
    gif = Image.open(path)
    assert gif.n_frames == len(frames) and path == tmp_path / "trajectory.gif"
    assert gif.info["loop"] == 0 and gif.info["duration"] == 80  # repeats, 12.5 frames a second
    saved = sorted(p.name for p in (tmp_path / "steps").glob("*.pt")) if save_every else []
    assert saved == ([f"{k:05d}.pt" for k in frames] if save_every else [])


def test_no_gif_no_frames(tmp_path):
    from soundguide.core.outputs import StepWriter

    writer = StepWriter(tmp_path, save_every=0, gif=False, steps=3)
    for step in range(3):
        writer(_event(step))
    assert writer.frames == [] and writer.finish() is None


def test_loss_log_that_cannot_be_written_says_so_once(tmp_path):
    from soundguide.core.outputs import LossLog

    messages = []
    (tmp_path / "losses.csv").mkdir()  # not writable as a file
    log = LossLog(tmp_path / "losses.csv", on_error=messages.append)
    log(_event(0))
    log(_event(1))
    assert log.failures == {"losses.csv (from step 0)": "Is a directory"}
    assert len(messages) == 1 and messages[0].startswith(
        f"could not write {tmp_path / 'losses.csv'}"
    )
    assert log.finish() is None


def test_loss_log_rows(tmp_path):
    from soundguide.core.outputs import LossLog

    log = LossLog(tmp_path / "losses.csv")
    log(_event(0))
    log(_event(1, final=True))
    assert log.finish() == tmp_path / "losses.csv"
    assert (tmp_path / "losses.csv").read_text().splitlines() == [
        "step,item,lr,total,a",
        "0,0,0.1,0.0,0.0",
        "1,0,,0.0,0.0",
    ]


def test_file_records_dedupe_and_missing_files(tmp_path):
    from soundguide.core.outputs import file_records

    a = tmp_path / "a.txt"
    a.write_text("a")
    records = file_records([a, a, tmp_path / "missing.pt", a])
    assert [r["path"] for r in records] == [
        str(a.resolve()),
        str((tmp_path / "missing.pt").resolve()),
    ]
    assert len(records[0]["sha256"]) == 64 and records[1]["sha256"] is None


def test_versions_say_not_installed(monkeypatch):
    import importlib.metadata

    from soundguide.core.outputs import package_versions

    real = importlib.metadata.version

    def version(name):
        if name == "kornia":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert package_versions()["kornia"] == "not installed"


def _result(**changes):
    from types import SimpleNamespace

    w, image = torch.zeros(1, 2, 4), torch.zeros(1, 3, 4, 4)
    fields = dict(
        status="finished",
        message="finished",
        steps_done=2,
        edited_step=2,
        seeds={},
        files=[],
        step_seconds=[0.1, 0.1],
        history=[],
        final_losses=None,
        source_latent=w,
        edited_latent=w + 1,
        source_image=image,
        edited_image=image,
    )
    return SimpleNamespace(**{**fields, **changes})


class _Config:
    def model_dump(self, mode):
        return {"output": {}}


class _FailingRecorder:
    failures: dict = {}

    def __init__(self, name=None):
        if name is not None:
            self.name = name

    def finish(self):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("name", "shown"), [("trajectory.gif", "trajectory.gif"), (None, "outputs")]
)
def test_a_recorder_that_cannot_finish_is_named_in_the_error_and_run_json(tmp_path, name, shown):
    import json

    from soundguide.core.outputs import RunWriter

    with pytest.raises(OutputError) as info:
        RunWriter(tmp_path).write_result(
            _result(), _Config(), device="cpu", recorders=(_FailingRecorder(name),)
        )
    assert info.value.message.startswith(
        f"could not write {shown} in {tmp_path} (No space left on device); kept: "
    )
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["missing"] == {shown: "No space left on device"}
    assert (tmp_path / "latent_edited.pt").exists() and (tmp_path / "edited.png").exists()


@pytest.mark.parametrize(
    "name", ["latent_edited.pt", "latent_source.pt", "source.png", "edited.png", "comparison.png"]
)
def test_each_result_file_that_fails_is_named_and_the_rest_are_kept(tmp_path, monkeypatch, name):
    import errno
    import json

    from soundguide.core import files
    from soundguide.core.outputs import RunWriter

    real = files.create_temporary

    def full_for_one(folder, target):
        if target == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, target)

    monkeypatch.setattr(files, "create_temporary", full_for_one)
    with pytest.raises(OutputError) as info:
        RunWriter(tmp_path).write_result(_result(), _Config(), device="cpu")
    everything = {"comparison.png", "edited.png", "latent_edited.pt", "latent_source.pt"}
    kept = ", ".join(sorted((everything | {"run.json", "source.png"}) - {name}))
    assert info.value.message == (
        f"could not write {name} in {tmp_path} (No space left on device); kept: {kept}"
    )
    assert info.value.hint == "free some space (or fix the folder) and run again into a new --out"
    assert json.loads((tmp_path / "run.json").read_text())["missing"] == {
        name: "No space left on device"
    }
    expected = {
        "latent_edited.pt",
        "latent_source.pt",
        "source.png",
        "edited.png",
        "comparison.png",
        "run.json",
    } - {name}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_a_run_without_an_edited_image_writes_the_rest(tmp_path):
    import json

    from soundguide.core.outputs import RunWriter

    written = RunWriter(tmp_path).write_result(
        _result(edited_image=None), _Config(), device="cuda:1", extra={"note": "x"}
    )
    names = ["latent_edited.pt", "latent_source.pt", "run.json", "source.png"]
    assert written == {name: tmp_path / name for name in names}
    text = (tmp_path / "run.json").read_text()
    assert text.startswith('{\n  "status": "finished",\n') and text.endswith("}\n")
    manifest = json.loads(text)
    assert manifest["device"] == "cuda:1" and manifest["note"] == "x"
    assert manifest["missing"] == {} and manifest["output_dir"] == str(tmp_path.resolve())


def test_gif_frames_are_at_most_max_frame_wide_and_a_column_per_batch(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from soundguide.core.outputs import StepWriter

    writer = StepWriter(tmp_path, save_every=0, gif=True, steps=1, max_frame=8)
    image = torch.zeros(3, 3, 32, 32)  # three items: one column of three tiles
    for step, final in ((0, False), (1, True)):
        writer(SimpleNamespace(step=step, final=final, latent=torch.zeros(3, 2, 2), image=image))
    assert Image.open(writer.finish()).size == (8, 8 * 3)  # 32 x 96, scaled to fit 8 wide


def test_run_json_holds_what_a_reader_needs(tmp_path, monkeypatch):
    import datetime
    import json
    import sys

    from soundguide.core.outputs import RunWriter

    monkeypatch.setattr(sys, "argv", ["soundguide", "edit", "run.toml"])
    first = {"step": 0, "total": [1.0]}
    result = _result(step_seconds=[0.5, 1.5, 1.0], history=[first, {"step": 1}])
    RunWriter(tmp_path).write_result(result, _Config(), device="cpu")
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["command"] == ["soundguide", "edit", "run.toml"]
    assert manifest["seconds_per_step"] == 1.0 and manifest["seconds"] == 3.0
    assert manifest["losses"] == {"first": first, "final": None, "log": "losses.csv"}
    assert manifest["config"] == {"output": {"dir": str(tmp_path.resolve())}}
    assert manifest["versions"]["python"] == sys.version.split()[0]
    created = datetime.datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None and created.microsecond == 0
    empty = _result(step_seconds=[], history=[])
    RunWriter(tmp_path).write_result(empty, _Config(), device="cpu")
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["seconds_per_step"] is None and manifest["losses"]["first"] is None


def test_a_config_without_output_gets_the_folder(tmp_path):
    import json

    from soundguide.core.outputs import RunWriter

    class Bare:
        def model_dump(self, mode):
            assert mode == "json"
            return {}

    RunWriter(tmp_path).write_result(_result(), Bare(), device="cpu")
    config = json.loads((tmp_path / "run.json").read_text())["config"]
    assert config == {"output": {"dir": str(tmp_path.resolve())}}


def test_a_loss_log_failing_after_some_rows_keeps_them_and_finishes_quietly(tmp_path):
    import errno

    from soundguide.core.outputs import LossLog

    log = LossLog(tmp_path / "losses.csv")
    log(_event(0))

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    log._writer = Full(log._fh)
    log(_event(1))
    assert log.failures == {"losses.csv (from step 1)": "No space left on device"}
    assert log.finish() is None and log.finish() is None  # closing twice is harmless
    assert (tmp_path / "losses.csv").read_text().splitlines() == [
        "step,item,lr,total,a",
        "0,0,0.1,0.0,0.0",
    ]


def test_when_every_write_fails_the_error_lists_them_all_and_keeps_nothing(tmp_path, monkeypatch):
    import errno

    from soundguide.core import files
    from soundguide.core.outputs import RunWriter

    def refuse(folder, target):
        if target == "run.json":
            raise OSError(errno.EACCES, "Permission denied")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "create_temporary", refuse)
    with pytest.raises(OutputError) as info:
        RunWriter(tmp_path).write_result(_result(edited_image=None), _Config(), device="cpu")
    assert info.value.message == (
        f"could not write latent_edited.pt, latent_source.pt, source.png, run.json in {tmp_path} "
        "(No space left on device; Permission denied); kept: nothing"
    )


def test_a_finished_recorder_is_among_the_written_files(tmp_path):
    from soundguide.core.outputs import LossLog, RunWriter

    log = LossLog(tmp_path / "losses.csv")
    log(_event(0))
    written = RunWriter(tmp_path).write_result(_result(), _Config(), device="cpu", recorders=(log,))
    assert written["losses.csv"] == tmp_path / "losses.csv"
