from __future__ import annotations

import pytest

from soundguide.core.config import apply_overrides, config_from_dict, load_config, parse_override
from soundguide.core.errors import ConfigError
from tests.conftest import TOY_CONFIG


def test_valid_config_loads_with_plugin_models(registries, write_config):
    cfg = load_config(write_config(TOY_CONFIG), registries)
    assert cfg.generator.type == "toy"
    assert [g.weight for g in cfg.guidance] == [1.0, 0.5]
    assert type(cfg.guidance[1]).__name__ == "Config"
    assert cfg.guidance[1].space_name == "other"
    assert cfg.regularizer[0].type == "latent_l2"
    assert cfg.optimization.steps == 12


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ("[[guidance]]\ntype = 'toy-target'\nwieght = 2\n", None),
            r"guidance\.2\.wieght: extra inputs are not permitted",
        ),
        (
            ("[optimization]\nstepz = 3\n", "[optimization]\nsteps = 12\nseed = 7"),
            r"optimization\.stepz: extra inputs are not permitted",
        ),
        (
            ("[optimization]\nsteps = 'many'\n", "[optimization]\nsteps = 12\nseed = 7"),
            r"optimization\.steps: input should be a valid integer",
        ),
        (
            ("[optimization]\nsteps = -5\n", "[optimization]\nsteps = 12\nseed = 7"),
            r"optimization\.steps: input should be greater than or equal to 0",
        ),
        (
            ("[[guidance]]\ntype = 'toy-targit'\n", None),
            r"guidance\.2\.type: unknown guidance 'toy-targit'; available: audio, image, text, toy-target \(did you mean 'toy-target'\?\)",
        ),
        (
            ("[[guidance]]\nweight = 1\n", None),
            r"guidance\.2\.type: missing; available guidances: audio, image, text, toy-target",
        ),
        (
            ("[[guidance]]\ntype = 'toy-target'\nweight = nan\n", None),
            r"guidance\.2\.weight: input should be a finite number",
        ),
        (
            ("[[regularizer]]\ntype = 'latent_l2'\nweight = -1\n", None),
            r"regularizer\.1\.weight: input should be greater than or equal to 0",
        ),
    ],
)
def test_errors_name_their_location(registries, write_config, edit, message):
    addition, replace = edit
    text = TOY_CONFIG
    if replace is not None:
        text = text.replace(replace, addition)
    else:
        text = text.replace("[optimization]", addition + "\n[optimization]")
    path = write_config(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, registries)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_unknown_generator_type(registries, write_config):
    text = TOY_CONFIG.replace('type = "toy"\n', 'type = "stylegan"\n', 1)
    with pytest.raises(
        ConfigError,
        match=r"generator\.type: unknown generator 'stylegan'; available: nvidia, stylegan2, toy \(did you mean 'stylegan2'\?\)",
    ):
        load_config(write_config(text), registries)


def test_malformed_toml_names_the_line(registries, write_config):
    path = write_config('[generator]\ntype = "toy"\n\n[optimization\nsteps = 3\n')
    with pytest.raises(ConfigError, match=r"run\.toml: invalid TOML: .*line 4"):
        load_config(path, registries)


def test_missing_file_and_directory(registries, tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", registries)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, registries)


def test_no_guidance_is_an_error(registries):
    with pytest.raises(ConfigError, match=r"no \[\[guidance\]\] source"):
        config_from_dict({"generator": {"type": "toy"}}, registries)


def test_guidance_must_be_an_array_of_tables(registries):
    with pytest.raises(ConfigError, match=r"guidance: expected an array of tables"):
        config_from_dict(
            {"generator": {"type": "toy"}, "guidance": {"type": "toy-target"}}, registries
        )


def test_relative_paths_resolve_against_the_config_folder(registries, tmp_path):
    folder = tmp_path / "configs" / "nested"
    folder.mkdir(parents=True)
    (folder / "target.txt").write_text("1 2 3")
    path = folder / "run.toml"
    path.write_text(
        '[generator]\ntype = "toy"\n[[guidance]]\ntype = "toy-target"\npath = "target.txt"\n'
        '[output]\ndir = "../out"\n'
    )
    cfg = load_config(path, registries)
    assert cfg.guidance[0].path == folder.resolve() / "target.txt"
    assert cfg.output.dir.resolve() == (folder / ".." / "out").resolve()
    absolute = tmp_path / "abs.txt"
    cfg = load_config(path, registries, [f'guidance.0.path="{absolute}"'])
    assert cfg.guidance[0].path == absolute


class TestOverrides:
    def test_values_are_read_as_toml_or_strings(self):
        assert parse_override("optimization.steps=100") == (["optimization", "steps"], 100)
        assert parse_override("optimization.seed=[1, 2]") == (["optimization", "seed"], [1, 2])
        assert parse_override("output.gif=true") == (["output", "gif"], True)
        assert parse_override("guidance.0.prompt=a burning forest") == (
            ["guidance", "0", "prompt"],
            "a burning forest",
        )

    def test_apply_to_sections_and_list_items(self, registries, write_config):
        cfg = load_config(
            write_config(TOY_CONFIG),
            registries,
            ["optimization.steps=3", "guidance.1.weight=2.5", "output.save_every=1"],
        )
        assert cfg.optimization.steps == 3
        assert cfg.guidance[1].weight == 2.5
        assert cfg.output.save_every == 1

    def test_override_errors(self):
        with pytest.raises(ConfigError, match="expected section.key=value"):
            parse_override("steps")
        with pytest.raises(ConfigError, match=r"guidance\.5: no such entry \(there are 1"):
            apply_overrides({"guidance": [{}]}, ["guidance.5.weight=1"])
        with pytest.raises(ConfigError, match="is a value, not a table"):
            apply_overrides({"optimization": {"steps": 3}}, ["optimization.steps.x=1"])

    def test_override_is_validated_like_the_file(self, registries, write_config):
        with pytest.raises(
            ConfigError, match=r"optimization\.steps: input should be greater than or equal to 0"
        ):
            load_config(write_config(TOY_CONFIG), registries, ["optimization.steps=-1"])


def test_seed_list_must_not_be_empty(registries, write_config):
    with pytest.raises(ConfigError, match=r"optimization\.seed: seed list is empty"):
        load_config(write_config(TOY_CONFIG), registries, ["optimization.seed=[]"])


# -- limits: every hostile or absurd value is one ConfigError line ------------------------


@pytest.mark.parametrize(
    "replacement, message",
    [
        (
            "seed = 18446744073709551616",
            r"optimization\.seed: seed 18446744073709551616 is out of range: seeds are 0 to "
            r"2\*\*64 - 1$",
        ),
        ("seed = -1", r"optimization\.seed: seed -1 is out of range"),
        (
            "seed = [1, 36893488147419103232]",
            r"optimization\.seed: seed 36893488147419103232 is out of range",
        ),
        (
            "seed = 7\nmax_batch = 0",
            r"optimization\.max_batch: input should be greater than or equal to 1",
        ),
        ("seed = [1, 2, 3]\nmax_batch = 2", r"seed list of 3 items is more than max_batch = 2"),
        ("seed = 7\nbatch = 40", r"batch of 40 items is more than max_batch = 16"),
    ],
)
def test_limits_are_config_errors(registries, write_config, replacement, message):
    path = write_config(TOY_CONFIG.replace("seed = 7", replacement))
    with pytest.raises(ConfigError, match=message):
        load_config(path, registries)


def test_steps_above_the_maximum(registries, write_config):
    path = write_config(TOY_CONFIG.replace("steps = 12", "steps = 100001"))
    with pytest.raises(
        ConfigError, match=r"optimization\.steps: input should be less than or equal to 100000"
    ):
        load_config(path, registries)


def test_largest_seed_is_accepted_but_not_beyond_for_a_batch(registries, write_config):
    from soundguide import Editor

    cfg = load_config(
        write_config(TOY_CONFIG.replace("seed = 7", "seed = 18446744073709551615")), registries
    )
    assert cfg.optimization.seeds(1) == [2**64 - 1]
    with pytest.raises(ConfigError, match=r"beyond the largest seed, 2\*\*64 - 1"):
        cfg.optimization.seeds(2)
    Editor(cfg, registries, progress=False).prepare()  # torch takes it


def test_every_guidance_at_weight_zero_is_refused(registries, write_config):
    path = write_config(TOY_CONFIG.replace("weight = 1.0", "weight = 0.0").replace("0.5", "0"))
    with pytest.raises(ConfigError, match="every \\[\\[guidance\\]\\] source has weight 0"):
        load_config(path, registries)


@pytest.mark.parametrize("depth", [20, 5000])
def test_deep_nesting_is_refused(registries, write_config, depth):
    path = write_config(TOY_CONFIG + "\n[extra]\nv = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nested deeper than 16 levels"):
        load_config(path, registries)


def test_deep_set_key_and_value_are_refused(registries, write_config):
    path = write_config(TOY_CONFIG)
    with pytest.raises(ConfigError, match="--set .*nested deeper"):
        load_config(path, registries, ["x" + ".x" * 40 + "=1"])
    with pytest.raises(ConfigError, match="--set .*nested deeper"):
        load_config(path, registries, ["output.dir=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(path, registries, ["output.dir=" + "[" * 30 + "]" * 30])
