from __future__ import annotations

import pytest

from soundguide.batch.manifest import load_items, split_cell
from soundguide.batch.shard import make_batches, share
from soundguide.core.errors import ConfigError
from tests.batch.helpers import write_config, write_csv, write_jsonl


def test_split_cell_keeps_quoted_semicolons():
    assert split_cell("a.wav; b.wav") == ["a.wav", "b.wav"]
    assert split_cell('guidance.0.prompt="x; y"; optimization.steps=3') == [
        'guidance.0.prompt="x; y"',
        "optimization.steps=3",
    ]


def test_batches_depend_on_the_rows_only():
    keys = ["a", "a", "b", "a", "b", "a", "a"]
    batches = make_batches(keys, 2)
    assert batches == [[0, 1], [2, 4], [3, 5], [6]]
    for world in (1, 2, 3):
        shares = [share(batches, rank, world) for rank in range(world)]
        assert sorted(b for part in shares for b in part) == sorted(batches)  # disjoint, all
    assert make_batches(keys, 1) == [[i] for i in range(7)]


def test_rows_become_run_configs(registries, tmp_path):
    config = write_config(
        tmp_path,
        """
        [generator]
        type = "toy"
        [[guidance]]
        type = "text"
        prompt = "a forest"
        clip_model = "clip.pt"
        [[guidance]]
        type = "toy-target"
        [optimization]
        seed = 5
        """,
    )
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"prompt": "rain"},
            {"id": "loud", "prompt": ["thunder"], "seed": 9, "set": ["guidance.1.weight=0.5"]},
            {"seed": "11"},
        ],
    )
    items = load_items(config, manifest, registries, ["optimization.steps=4"])
    assert [i.id for i in items] == ["1", "loud", "3"]
    assert items[0].config.guidance[0].prompt == "rain"
    assert items[0].config.optimization.seed == 5 and items[0].config.optimization.steps == 4
    assert items[1].config.optimization.seed == 9
    assert items[1].config.guidance[1].weight == 0.5
    assert items[2].config.guidance[0].prompt == "a forest"
    # prompts and seeds are per item; a weight is shared: row 2 cannot join rows 1 and 3
    assert items[0].batch_key == items[2].batch_key != items[1].batch_key


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"set": "guidance.0.wieght=0.5"},
            r"^m.csv row 2: guidance.0.wieght: extra inputs are not permitted "
            r"\(did you mean 'weight'\?\)$",
        ),
        ({"seed": "x3"}, r"^m.csv row 2: seed: expected an integer, got 'x3'$"),
        ({"seed": "-3"}, r"^m.csv row 2: optimization.seed: seed -3 is out of range"),
        ({"set": "guidance.4.weight=1"}, r"^m.csv row 2: set: guidance.4: no such entry"),
        ({"id": "../x"}, r"^m.csv row 2: id '../x' cannot name a folder"),
        ({"id": "1"}, r"^m.csv row 2: id '1' is also the id of row 1$"),
        (
            {"audio": "a.wav"},
            r"^m.csv row 2: audio: 1 given, but the config has 0 \[\[guidance\]\]",
        ),
        (
            {"set": "optimization.seed=[1, 2]"},
            r"^m.csv row 2: optimization.seed: a manifest row is one edit",
        ),
    ],
)
def test_a_bad_row_is_named_with_its_key(registries, tmp_path, row, message):
    config = write_config(tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"seed": 1}, row])
    with pytest.raises(ConfigError, match=message):
        load_items(config, manifest, registries, [])


def test_an_error_in_the_config_names_the_config(registries, tmp_path):
    config = write_config(tmp_path, 'steps = 3\n[generator]\ntype = "toy"\n', name="c.toml")
    manifest = write_csv(tmp_path / "m.csv", [{"seed": 1}])
    with pytest.raises(ConfigError, match=r"c.toml: steps: extra inputs are not permitted"):
        load_items(config, manifest, registries, [])


def test_unknown_column(registries, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"sede": 1}])
    with pytest.raises(ConfigError, match=r"unknown column 'sede' \(did you mean 'seed'\?\)"):
        load_items(write_config(tmp_path), manifest, registries, [])


def test_an_error_in_a_set_override_names_set(registries, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"seed": 1}])
    with pytest.raises(ConfigError, match=r"^--set optimization.stpes: extra inputs are not"):
        load_items(write_config(tmp_path), manifest, registries, ["optimization.stpes=3"])
