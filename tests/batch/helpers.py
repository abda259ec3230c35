"""Shared by the batch tests: a toy run config, manifests, the command in-process."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import torch

from soundguide.cli import main

TOY = """
[generator]
type = "toy"

[[guidance]]
type = "toy-target"
weight = 1.0

[[regularizer]]
type = "latent_l2"
weight = 0.01

[optimization]
steps = 6
lr = 0.05
seed = 0
"""

PLUGINS = ["-p", "tests.toy_plugins"]


def write_config(folder: Path, text: str = TOY, name: str = "run.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def batch(*args: object, plugins: list[str] = PLUGINS) -> int:
    return main(["batch", *map(str, args), *plugins, "--threads", "1", "-q"])


def index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def latents(out: Path) -> dict[str, torch.Tensor]:
    return {
        p.name: torch.load(p / "latent_edited.pt", weights_only=True)
        for p in sorted((out / "items").iterdir())
        if (p / "run.json").exists()
    }
