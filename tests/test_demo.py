"""`soundguide demo` runs the whole pipeline offline from the CLI and writes every output."""

from __future__ import annotations

import json

from PIL import Image

from soundguide.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "-q"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM" in captured.err and "mean nothing" in captured.err
    assert "finished 4 steps" in captured.out
    for name in (
        "source.png",
        "edited.png",
        "comparison.png",
        "latent_source.pt",
        "latent_edited.pt",
        "run.json",
        "trajectory.gif",
        "DEMO.txt",
    ):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "demo-inputs").iterdir()} >= {
        "demo.toml",
        "sound.wav",
        "clip-tiny.pt",
    }
    manifest = json.loads((out / "run.json").read_text())
    assert "RANDOM" in manifest["demo"] and manifest["status"] == "finished"
    assert {"audio", "text", "latent_l2"} <= set(manifest["losses"]["final"]["terms"])
    # two seeds: the comparison grid has two rows of source | edited
    assert Image.open(out / "comparison.png").size == (2 * 32 + 2, 2 * 32 + 2)
    # a second demo into the same folder is refused without --overwrite
    assert main(["demo", "--out", str(out), "--steps", "2", "-q"]) == 2
    assert main(["demo", "--out", str(out), "--steps", "2", "-q", "--overwrite"]) == 0
