from __future__ import annotations

import sys
import textwrap
import types

import pytest

import soundguide
from soundguide.core.errors import DuplicatePluginError, PluginError, UnknownPluginError
from soundguide.core.plugins import (
    BUILTIN,
    PluginLoadWarning,
    collect_registries,
    get_plugin_manager,
    load_registries,
)
from soundguide.core.registry import GuidanceRegistry, unknown_name_message
from tests import toy_plugins


def make_module(name: str, body: str) -> types.ModuleType:
    module = types.ModuleType(name)
    # dont_inherit: not this file's `from __future__ import annotations`, under which
    # pydantic could not resolve a Config's annotations in a module outside sys.modules
    exec(compile(textwrap.dedent(body), name, "exec", dont_inherit=True), module.__dict__)
    return module


class TestRegistry:
    def test_add_and_get(self):
        registry = GuidanceRegistry()
        registry.add(toy_plugins.ToyGuidance)
        assert registry.get("toy-target") is toy_plugins.ToyGuidance
        assert registry.names() == ["toy-target"]
        assert "toy-target" in registry

    def test_unknown_name_lists_available_and_closest(self):
        registry = GuidanceRegistry()
        registry.add(toy_plugins.ToyGuidance)
        with pytest.raises(
            UnknownPluginError,
            match=r"unknown guidance 'toy-targte'; available: toy-target \(did you mean 'toy-target'\?\)",
        ):
            registry.get("toy-targte")

    def test_message_without_close_match(self):
        assert unknown_name_message("guidance", "xyz", ["audio", "text"]) == (
            "unknown guidance 'xyz'; available: audio, text"
        )
        assert "did you mean 'audio'" in unknown_name_message(
            "guidance", "adio", ["audio", "image", "text"]
        )

    def test_wrong_base_class_is_refused(self):
        registry = GuidanceRegistry()
        with pytest.raises(PluginError, match="must subclass soundguide.Guidance"):
            registry.add(toy_plugins.ToyGenerator)

    def test_config_type_must_be_a_literal(self):
        class Bad(soundguide.Guidance):
            class Config(soundguide.GuidanceConfig):
                type: str = "bad"

        with pytest.raises(PluginError, match="Literal"):
            GuidanceRegistry().add(Bad)

    def test_duplicate_names_both_plugins(self):
        dup = make_module(
            "dup_plugin",
            """
            import soundguide
            from tests.toy_plugins import ToyGuidance

            class Again(ToyGuidance):
                pass

            @soundguide.hookimpl
            def register_guidances(registry):
                registry.add(Again)
            """,
        )
        with pytest.raises(
            DuplicatePluginError,
            match=r"guidance 'toy-target' is registered twice: by plugin 'tests.toy_plugins' .* and by plugin 'dup_plugin'",
        ):
            load_registries(entry_points=False, plugins=[toy_plugins, dup])


class TestManager:
    def test_builtins_are_registered_as_plugin_modules(self):
        pm = get_plugin_manager(entry_points=False)
        assert pm.sources["soundguide.plugins.latent_l2"].distribution == BUILTIN
        registries = collect_registries(pm)
        entry = registries.regularizers.entry("latent_l2")
        assert entry.plugin == "soundguide.plugins.latent_l2"

    def test_misspelt_hook_is_caught(self):
        typo = make_module(
            "typo_plugin",
            """
            import soundguide

            @soundguide.hookimpl
            def register_guidance(registry):
                pass
            """,
        )
        with pytest.raises(PluginError, match="register_guidance"):
            get_plugin_manager(entry_points=False, plugins=[typo])

    def test_command_line_plugin_whose_hook_raises_is_an_error(self):
        broken = make_module(
            "raising_plugin",
            """
            import soundguide
            from tests.toy_plugins import ToyGuidance

            @soundguide.hookimpl
            def register_guidances(registry):
                registry.add(ToyGuidance)
                raise RuntimeError("boom")
            """,
        )
        with pytest.raises(
            PluginError,
            match=r"^plugin 'raising_plugin' \(-p\) failed in register_guidances "
            r"\(RuntimeError: boom\)$",
        ):
            load_registries(entry_points=False, plugins=[broken])

    def test_command_line_plugin_that_exits_in_a_hook_is_an_error(self):
        exiting = make_module(
            "exiting_hook_plugin",
            """
            import sys
            import soundguide

            @soundguide.hookimpl
            def register_weights(registry):
                sys.exit("no GPU here")
            """,
        )
        with pytest.raises(PluginError, match=r"failed in register_weights \(SystemExit: no GPU"):
            load_registries(entry_points=False, plugins=[exiting])

    def test_unimportable_command_line_plugin_is_an_error(self):
        with pytest.raises(PluginError, match="cannot import plugin module 'no_such_module_xyz'"):
            get_plugin_manager(entry_points=False, plugins=["no_such_module_xyz"])

    @pytest.mark.parametrize(
        ("body", "shown"),
        [
            ("import sys\nsys.exit()\n", "SystemExit"),
            ("raise SystemExit(3)\n", "SystemExit: 3"),
            ("raise BaseException('bad base')\n", "BaseException: bad base"),
        ],
    )
    def test_command_line_plugin_that_exits_on_import_is_an_error(
        self, tmp_path, monkeypatch, body, shown
    ):
        (tmp_path / "sg_exiting_cli_plugin.py").write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "sg_exiting_cli_plugin", raising=False)
        with pytest.raises(PluginError) as caught:
            get_plugin_manager(entry_points=False, plugins=["sg_exiting_cli_plugin"])
        assert str(caught.value) == (
            f"cannot import plugin module 'sg_exiting_cli_plugin': {shown}"
        )

    def test_ctrl_c_while_importing_a_plugin_is_not_swallowed(self, site):
        write_distribution(
            site, "sg-ctrl-c", "sg_ctrl_c_plugin", "raise KeyboardInterrupt\n", "ctrl-c"
        )
        with pytest.raises(KeyboardInterrupt):
            load_registries()

    def test_ctrl_c_in_a_register_hook_is_not_swallowed(self, site):
        write_distribution(
            site,
            "sg-ctrl-c",
            "sg_ctrl_c_plugin",
            "import soundguide\n\n@soundguide.hookimpl\n"
            "def register_guidances(registry):\n    raise KeyboardInterrupt\n",
            "ctrl-c",
        )
        with pytest.raises(KeyboardInterrupt):
            load_registries()


def write_distribution(site, name: str, module: str, source: str, entry: str) -> None:
    """A real (unpacked) installed distribution: dist-info with entry_points.txt."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[soundguide]\n{entry} = {module}\n")


GOOD_PLUGIN = """
from typing import Literal
import soundguide
from tests.toy_plugins import ToyGuidance

class Echo(ToyGuidance):
    class Config(ToyGuidance.Config):
        type: Literal["echo"] = "echo"

@soundguide.hookimpl
def register_guidances(registry):
    registry.add(Echo)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    before = set(sys.modules)
    yield folder
    for mod in set(sys.modules) - before:
        if mod.startswith("sg_"):
            del sys.modules[mod]


def plugin_source(**hooks: str) -> str:
    """A plugin module whose register_<kind> hooks run the given (one-line) bodies."""
    lines = [
        "from typing import Literal",
        "import soundguide",
        "from tests.toy_plugins import ToyGenerator, ToyGuidance",
        "",
        "class Echo(ToyGuidance):",
        "    class Config(ToyGuidance.Config):",
        '        type: Literal["echo"] = "echo"',
        "",
        "class Text(ToyGuidance):",
        "    class Config(ToyGuidance.Config):",
        '        type: Literal["text"] = "text"',
        "",
        "class Gen(ToyGenerator):",
        "    class Config(ToyGenerator.Config):",
        '        type: Literal["sg-gen"] = "sg-gen"',
    ]
    for kind, body in hooks.items():
        lines += ["", "@soundguide.hookimpl", f"def register_{kind}(registry):", f"    {body}"]
    return "\n".join(lines) + "\n"


def only(caught) -> str:
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    return messages[0]


class TestEntryPoints:
    def test_installed_distribution_is_discovered(self, site):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        registries = load_registries()
        entry = registries.guidances.entry("echo")
        assert entry.plugin == "sg_echo_plugin"
        assert entry.distribution == "sg-echo 1.2"

    def test_autoload_can_be_disabled(self, site, monkeypatch):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        monkeypatch.setenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", "1")
        assert "echo" not in load_registries().guidances
        monkeypatch.setenv("SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD", "0")
        assert "echo" in load_registries().guidances

    def test_broken_plugin_is_reported_and_others_keep_working(self, site):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        write_distribution(
            site, "sg-broken", "sg_broken_plugin", "raise ImportError('missing dep')\n", "broken"
        )
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        message = only(caught)
        assert "'broken'" in message and "sg-broken 1.2" in message
        assert "ImportError: missing dep" in message
        assert "echo" in registries.guidances
        assert "latent_l2" in registries.regularizers

    @pytest.mark.parametrize(
        ("body", "shown"),
        [
            ("import sys\nsys.exit()\n", "(SystemExit)"),
            ("import sys\nsys.exit('no GPU here')\n", "(SystemExit: no GPU here)"),
            ("raise BaseException('bad base')\n", "(BaseException: bad base)"),
            (
                "class PluginAbort(BaseException):\n    pass\n\nraise PluginAbort('stop')\n",
                "(PluginAbort: stop)",
            ),
        ],
        ids=["sys.exit()", "sys.exit(message)", "BaseException", "BaseException-subclass"],
    )
    def test_plugin_that_exits_on_import_is_one_warning_and_skipped(self, site, body, shown):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        write_distribution(site, "sg-exiting", "sg_exiting_plugin", body, "exiting")
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        assert only(caught) == (
            f"plugin 'exiting' (sg_exiting_plugin, from sg-exiting 1.2) failed to import "
            f"{shown}; skipped"
        )
        assert "echo" in registries.guidances
        assert "latent_l2" in registries.regularizers

    def test_plugin_that_exits_in_a_register_hook_is_skipped(self, site):
        write_distribution(
            site,
            "sg-exiting",
            "sg_exiting_plugin",
            plugin_source(guidances="registry.add(Echo); raise SystemExit(4)"),
            "exiting",
        )
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        assert only(caught) == (
            "plugin 'sg_exiting_plugin' (sg-exiting 1.2) failed in register_guidances "
            "(SystemExit: 4); skipped"
        )
        assert "echo" not in registries.guidances
        assert "text" in registries.guidances

    def test_plugin_whose_later_hook_raises_leaves_nothing_behind(self, site):
        write_distribution(
            site,
            "sg-half",
            "sg_half_plugin",
            plugin_source(
                generators="registry.add(Gen)",
                guidances="registry.add(Echo); raise RuntimeError('boom')",
            ),
            "half",
        )
        with pytest.warns(PluginLoadWarning, match="sg_half_plugin.*RuntimeError: boom"):
            registries = load_registries()
        assert "sg-gen" not in registries.generators
        assert "echo" not in registries.guidances
        assert "stylegan2" in registries.generators

    def test_duplicate_of_a_builtin_name_skips_the_plugin(self, site):
        write_distribution(
            site,
            "sg-text",
            "sg_text_plugin",
            plugin_source(generators="registry.add(Gen)", guidances="registry.add(Text)"),
            "text2",
        )
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        message = only(caught)
        assert message.startswith(
            "guidance 'text' is registered twice: by plugin 'soundguide.plugins.text' "
            "(soundguide (built-in)) and by plugin 'sg_text_plugin' (sg-text 1.2); "
            "plugin 'sg_text_plugin' skipped ("
        )
        assert "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1" in message
        assert registries.guidances.entry("text").plugin == "soundguide.plugins.text"
        assert "sg-gen" not in registries.generators  # skipped entirely, not half

    def test_duplicate_between_two_installed_plugins_skips_the_later(self, site, monkeypatch):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        earlier = site.parent / "earlier-site"  # ahead on sys.path, so found first
        earlier.mkdir()
        write_distribution(
            earlier,
            "sg-echo-too",
            "sg_echo_too_plugin",
            plugin_source(guidances="registry.add(Echo)"),
            "echo-too",
        )
        monkeypatch.syspath_prepend(str(earlier))
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        assert only(caught) == (
            "guidance 'echo' is registered twice: by plugin 'sg_echo_too_plugin' "
            "(sg-echo-too 1.2) and by plugin 'sg_echo_plugin' (sg-echo 1.2); "
            "plugin 'sg_echo_plugin' skipped (to choose, set SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1 "
            "and load the one you want with -p MODULE)"
        )
        assert registries.guidances.entry("echo").distribution == "sg-echo-too 1.2"

    def test_duplicate_weights_name_leaves_no_generator_behind(self, site):
        write_distribution(
            site,
            "sg-weights",
            "sg_weights_plugin",
            plugin_source(
                generators="registry.add(Gen)",
                weights="registry.add(soundguide.KnownWeights("
                "'stylegan2-landscape', 'file:///x', 'x.pt', 'MIT'))",
            ),
            "weights",
        )
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        assert only(caught).startswith(
            "known weights 'stylegan2-landscape' is registered twice: by plugin "
            "'soundguide.plugins.stylegan2' (soundguide (built-in)) and by plugin "
            "'sg_weights_plugin' (sg-weights 1.2); plugin 'sg_weights_plugin' skipped"
        )
        assert "sg-gen" not in registries.generators
        assert registries.weights.owner("stylegan2-landscape")[0] == "soundguide.plugins.stylegan2"

    def test_command_line_plugin_clashing_with_an_installed_one_is_an_error(self, site):
        write_distribution(site, "sg-echo", "sg_echo_plugin", GOOD_PLUGIN, "echo")
        clash = make_module("clash_plugin", plugin_source(guidances="registry.add(Echo)"))
        with pytest.raises(DuplicatePluginError) as caught:
            load_registries(plugins=[clash])
        assert str(caught.value) == (
            "guidance 'echo' is registered twice: by plugin 'sg_echo_plugin' (sg-echo 1.2) "
            "and by plugin 'clash_plugin' (-p)"
        )
        assert "SOUNDGUIDE_DISABLE_PLUGIN_AUTOLOAD=1" in caught.value.hint


def test_a_plugin_needs_only_the_package_root(tmp_path):
    """typing.Literal and ``soundguide`` are all a plugin module imports."""
    plugin = make_module(
        "root_only_plugin",
        """
        from typing import Literal

        import soundguide

        class Mine(soundguide.Guidance):
            class Config(soundguide.GuidanceConfig):
                type: Literal["mine"] = "mine"
                reference: soundguide.ConfigPath

            @property
            def space(self):
                return "clip:ViT-B/32"

            def build_encoder(self):
                raise NotImplementedError

            def target(self, encoder):
                raise NotImplementedError

        @soundguide.hookimpl
        def register_guidances(registry):
            registry.add(Mine)
        """,
    )
    entry = load_registries(entry_points=False, plugins=[plugin]).guidances.entry("mine")
    config = entry.config_model.model_validate(
        {"type": "mine", "reference": "ref.png", "weight": -0.5},
        context={"base_dir": tmp_path},
    )
    assert (config.type, config.reference, config.weight) == ("mine", tmp_path / "ref.png", -0.5)


COMMAND_SOURCE = """
from typing import Literal
import click
import soundguide
from tests.toy_plugins import ToyGuidance

class Echo(ToyGuidance):
    class Config(ToyGuidance.Config):
        type: Literal["echo"] = "echo"

@soundguide.hookimpl
def register_guidances(registry):
    registry.add(Echo)

@soundguide.hookimpl
def register_commands(cli):
    for name in {names!r}:
        cli.add_command(click.Command(name, callback=lambda: None))
"""


class TestCommands:
    def test_builtin_commands_come_from_plugin_modules(self):
        from soundguide.cli_options import LazyCommand

        registries = load_registries(entry_points=False)
        assert registries.commands.names() == [
            "app",
            "batch",
            "curate",
            "invert",
            "probe",
            "train",
            "video",
            "zeroshot",
        ]
        assert registries.commands.owner("app") == ("soundguide.app.plugin", BUILTIN)
        assert registries.commands.owner("train") == ("soundguide.training.plugin", BUILTIN)
        assert registries.commands.owner("video") == ("soundguide.video.plugin", BUILTIN)
        assert registries.commands.owner("invert") == ("soundguide.inversion.plugin", BUILTIN)
        assert registries.commands.owner("probe") == ("soundguide.evaluation.plugin", BUILTIN)
        assert registries.commands.owner("batch") == ("soundguide.batch.plugin", BUILTIN)
        assert all(isinstance(c, LazyCommand) for c in registries.commands.commands.values())

    def test_a_command_clash_leaves_nothing_of_the_plugin_behind(self, site):
        write_distribution(
            site, "sg-cmd", "sg_cmd_plugin", COMMAND_SOURCE.format(names=["echo", "probe"]), "cmd"
        )
        with pytest.warns(PluginLoadWarning) as caught:
            registries = load_registries()
        assert only(caught).startswith(
            "command 'probe' is registered twice: by plugin 'soundguide.evaluation.plugin' "
            "(soundguide (built-in)) and by plugin 'sg_cmd_plugin' (sg-cmd 1.2); "
            "plugin 'sg_cmd_plugin' skipped ("
        )
        assert "echo" not in registries.guidances and "echo" not in registries.commands.names()
        assert registries.commands.owner("probe")[0] == "soundguide.evaluation.plugin"

    def test_reserved_names_belong_to_the_host(self):
        from soundguide.core.registry import Registries

        base = Registries()
        base.commands.reserve(["edit"], ("soundguide.cli", BUILTIN))
        clash = make_module("cmd_clash", COMMAND_SOURCE.format(names=["edit"]))
        with pytest.raises(DuplicatePluginError) as caught:
            load_registries(entry_points=False, plugins=[clash], registries=base)
        assert str(caught.value) == (
            "command 'edit' is registered twice: by plugin 'soundguide.cli' (soundguide "
            "(built-in)) and by plugin 'cmd_clash' (-p)"
        )
        fine = make_module("cmd_fine", COMMAND_SOURCE.format(names=["hello"]))
        registries = load_registries(entry_points=False, plugins=[fine], registries=Registries())
        assert "hello" in registries.commands.names() and "echo" in registries.guidances
        assert registries.commands.owner("hello") == ("cmd_fine", "-p")

    def test_one_name_twice_in_one_plugin_is_its_own_error(self):
        twice = make_module("cmd_twice", COMMAND_SOURCE.format(names=["hello", "hello"]))
        with pytest.raises(PluginError, match=r"failed in register_commands \(Duplicate"):
            load_registries(entry_points=False, plugins=[twice])


INVERTER_PLUGIN = """
from typing import Literal
import soundguide
from tests.toy_plugins import ToyInverter

class Mirror(ToyInverter):
    class Config(ToyInverter.Config):
        type: Literal["mirror"] = "mirror"

@soundguide.hookimpl
def register_inverters(registry):
    registry.add(Mirror)
"""


def test_an_installed_inverter_is_listed_and_inverts(site, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from soundguide.cli import main

    write_distribution(site, "sg-mirror", "sg_mirror_plugin", INVERTER_PLUGIN, "mirror")
    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["inverter", "mirror", "sg_mirror_plugin", "sg-mirror", "1.2"] in rows
    photo = tmp_path / "me.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    generator = tmp_path / "g.toml"
    generator.write_text('[generator]\ntype = "toy"\nsize = 8\nlayers = 4\ndim = 48\n')
    args = ["-p", "tests.toy_plugins", "invert", str(photo), "--generator", str(generator)]
    code = main([*args, "--method", "mirror", "--no-lpips", "-q", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "me" / "latent.pt").is_file()
