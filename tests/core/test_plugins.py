from __future__ import annotations

import sys
import textwrap
import types
from typing import Literal

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
    exec(textwrap.dedent(body), module.__dict__)
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

    def test_plugin_whose_hook_raises_is_skipped(self):
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
        with pytest.warns(PluginLoadWarning, match="raising_plugin.*RuntimeError: boom"):
            registries = load_registries(entry_points=False, plugins=[broken])
        # its partial registration was rolled back; the built-ins still work
        assert "toy-target" not in registries.guidances
        assert "latent_l2" in registries.regularizers

    def test_unimportable_command_line_plugin_is_an_error(self):
        with pytest.raises(PluginError, match="cannot import plugin module 'no_such_module_xyz'"):
            get_plugin_manager(entry_points=False, plugins=["no_such_module_xyz"])


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
    yield folder
    for mod in ("sg_echo_plugin", "sg_broken_plugin"):
        sys.modules.pop(mod, None)


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
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1
        assert "'broken'" in messages[0] and "sg-broken 1.2" in messages[0]
        assert "ImportError: missing dep" in messages[0] and "\n" not in messages[0]
        assert "echo" in registries.guidances
        assert "latent_l2" in registries.regularizers


def test_plugin_api_is_importable_from_the_package_root():
    for name in (
        "hookimpl",
        "Generator",
        "Guidance",
        "Regularizer",
        "GuidanceConfig",
        "ConfigPath",
    ):
        assert hasattr(soundguide, name)
    assert isinstance(Literal, object)
