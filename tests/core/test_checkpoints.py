from __future__ import annotations

import argparse
import builtins
import errno
import hashlib
import http.client
import io
import json
import os
import pickle
import random
import sys
import types
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from soundguide.core.checkpoints import (
    KnownWeights,
    WeightsRegistry,
    check_state_dict,
    download_file,
    load_checkpoint,
    read_checkpoint,
    unwrap_state_dict,
)
from soundguide.core.errors import CheckpointError, DuplicatePluginError, WeightsError


class Payload:
    """Unpickling this runs code: it creates a sentinel file."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class Calls:
    """Unpickling this calls ``function(*args)``: how a checkpoint rebuilds a plugin's objects."""

    def __init__(self, function, *args) -> None:
        self.function = function
        self.args = args

    def __reduce__(self):
        return (self.function, self.args)


@pytest.fixture
def plugin_module(monkeypatch):
    """A module that checkpoints refer to by name, as they do to a plugin's classes."""
    module = types.ModuleType("ckpt_test_plugin")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def define(module: types.ModuleType, function):
    function.__module__ = module.__name__
    function.__qualname__ = function.__name__
    setattr(module, function.__name__, function)
    return function


def is_mapped(path: Path) -> bool:
    """Whether this process maps ``path`` into memory (rather than having read it)."""
    return str(path) in Path("/proc/self/maps").read_text()


class TestLoadCheckpoint:
    def test_plain_state_dict(self, tmp_path):
        torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
        assert torch.equal(load_checkpoint(tmp_path / "a.pt")["w"], torch.ones(2))

    def test_rosinality_training_checkpoint_with_namespace(self, tmp_path):
        data = {
            "g_ema": {"w": torch.zeros(3)},
            "args": argparse.Namespace(size=256, channel_multiplier=2),
        }
        torch.save(data, tmp_path / "ckpt.pt")
        loaded = load_checkpoint(tmp_path / "ckpt.pt")
        assert loaded["args"].size == 256

    @pytest.mark.parametrize("legacy", [False, True])
    def test_malicious_pickle_is_refused_and_never_runs(self, tmp_path, legacy):
        sentinel = tmp_path / "pwned"
        path = tmp_path / "evil.pt"
        torch.save({"w": Payload(str(sentinel))}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert not sentinel.exists()
        message = str(info.value)
        assert "system" in message and "could run arbitrary code" in message and "\n" not in message
        assert "--trust-checkpoint" in info.value.hint

    def test_raw_pickle_is_refused_and_never_runs(self, tmp_path):
        sentinel = tmp_path / "pwned"
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"w": Payload(str(sentinel))}, protocol=4))
        with pytest.raises(
            CheckpointError, match=r"cannot read checkpoint .* safely: Unsupported operand \d+$"
        ) as info:
            load_checkpoint(path)
        assert not sentinel.exists()
        assert info.value.hint == (
            "if the file is a checkpoint you trust, pass --trust-checkpoint (trust=True in Python)"
        )

    def test_trust_loads_arbitrary_objects(self, tmp_path):
        torch.save({"ns": argparse.ArgumentParser}, tmp_path / "a.pt")
        with pytest.raises(CheckpointError, match="ArgumentParser"):
            load_checkpoint(tmp_path / "a.pt")
        assert load_checkpoint(tmp_path / "a.pt", trust=True)["ns"] is argparse.ArgumentParser

    def test_torch_environment_switch_does_not_turn_off_safe_loading(self, tmp_path, monkeypatch):
        # torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only where weights_only is not given
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        sentinel = tmp_path / "pwned"
        path = tmp_path / "evil.pt"
        torch.save({"w": Payload(str(sentinel))}, path)
        with pytest.raises(CheckpointError, match="could run arbitrary code"):
            load_checkpoint(path)
        assert not sentinel.exists()

    def test_every_unsafe_global_is_named(self, tmp_path):
        path = tmp_path / "evil.pt"
        torch.save({"a": Calls(os.getpid), "b": Calls(os.getcwd)}, path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        module = os.getpid.__module__
        assert str(info.value) == (
            f"refusing to load {path}: it asks to unpickle {module}.getcwd, {module}.getpid, "
            "which could run arbitrary code"
        )
        assert info.value.hint == (
            "if you trust this file, pass --trust-checkpoint (trust=True in Python)"
        )

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize("legacy", [False, True])
    def test_map_location(self, tmp_path, legacy, trust):
        path = tmp_path / "a.pt"
        torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=not legacy)
        assert load_checkpoint(path, trust=trust, map_location="meta")["w"].is_meta

    @pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize("mmap", [False, True])
    @pytest.mark.parametrize("legacy", [False, True])
    def test_mmap_maps_zip_checkpoints_and_is_ignored_for_legacy_ones(
        self, tmp_path, legacy, mmap, trust
    ):
        path = tmp_path / "weights.pt"
        torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=not legacy)
        loaded = load_checkpoint(path, trust=trust, mmap=mmap)
        assert torch.equal(loaded["w"], torch.arange(4.0))
        assert is_mapped(path) == (mmap and not legacy)

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize("legacy", [False, True])
    def test_global_named_like_truncation_is_not_called_truncated(
        self, tmp_path, plugin_module, legacy, trust
    ):
        # the error quotes the name; a complete file must not be sent back to be downloaded
        def truncated_normal():
            pass

        define(plugin_module, truncated_normal)
        path = tmp_path / "init.pt"
        state = {"w": torch.ones(3), "init": truncated_normal}
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        if trust:
            del plugin_module.truncated_normal  # a newer version of the plugin dropped it
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=trust)
        message = str(info.value)
        if trust:
            assert message.startswith(f"cannot read checkpoint {path}: AttributeError: ")
            assert "'truncated_normal'" in message
        else:
            assert message == (
                f"refusing to load {path}: it asks to unpickle ckpt_test_plugin.truncated_normal, "
                "which could run arbitrary code"
            )

    @pytest.mark.parametrize("legacy", [False, True])
    def test_trusted_checkpoint_of_an_uninstalled_plugin(
        self, tmp_path, plugin_module, monkeypatch, legacy
    ):
        def rebuild(n):
            return torch.zeros(n)

        define(plugin_module, rebuild)
        path = tmp_path / "plugin.pt"
        state = {"w": torch.ones(3), "extra": Calls(rebuild, 2)}
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        monkeypatch.delitem(sys.modules, plugin_module.__name__)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=True)
        assert str(info.value) == (
            f"cannot read checkpoint {path}: ModuleNotFoundError: No module named 'ckpt_test_plugin'"
        )

    def test_trusted_checkpoint_failing_with_an_empty_error(self, tmp_path, plugin_module):
        def rebuild(version):
            if version != 2:
                raise NotImplementedError

        define(plugin_module, rebuild)
        path = tmp_path / "old.pt"
        torch.save({"w": torch.ones(3), "extra": Calls(rebuild, 1)}, path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=True)
        assert str(info.value) == (
            f"cannot read checkpoint {path}: NotImplementedError: NotImplementedError"
        )

    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            (
                "Weights only load failed.\nWeightsUnpickler error: \n\nUnsupported operand 1\n\n"
                "Check the documentation",
                "Unsupported operand 1",
            ),
            ("WeightsUnpickler error: a detail\non two lines\n\nCheck", "a detail on two lines"),
            ("invalid load key, 'x'.", "not a torch checkpoint, or corrupt"),
        ],
    )
    def test_a_refused_binary_file_says_what_torch_objected_to(
        self, tmp_path, monkeypatch, text, shown
    ):
        path = tmp_path / "odd.pt"
        path.write_bytes(bytes(range(1, 200)))

        def refuse(*args, **kwargs):
            raise pickle.UnpicklingError(text)

        monkeypatch.setattr(torch, "load", refuse)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value) == f"cannot read checkpoint {path} safely: {shown}"

    @pytest.mark.parametrize("length", [160, 161])
    def test_a_long_error_is_cut_to_160_characters(self, tmp_path, length):
        text = "x" * (length - len("invalid literal for int() with base 10: ''"))
        line = f"invalid literal for int() with base 10: {text!r}"
        assert len(line) == length
        path = tmp_path / "bad.pt"
        torch.save({"n": Calls(int, text)}, path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=True)
        shown = line if length <= 160 else line[:157] + "..."
        assert str(info.value) == f"cannot read checkpoint {path}: ValueError: {shown}"

    def test_unreadable_file(self, tmp_path, monkeypatch):
        # tests may run as root, whom chmod does not stop: refuse the open instead
        path = tmp_path / "locked.pt"
        torch.save({"w": torch.ones(2)}, path)
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value) == f"cannot read checkpoint {path}: Permission denied"

    @pytest.mark.parametrize(
        "content, message, hint",
        [
            (
                None,
                "checkpoint not found",
                "check the path (relative paths in a config resolve against its folder)",
            ),
            (
                b"",
                "checkpoint is empty",
                "an interrupted download or copy: delete it and download or copy it again",
            ),
            (random.Random(0).randbytes(64), "cannot read checkpoint", None),
            (
                b"PK\x03\x04truncated zip",
                "is truncated or corrupt",
                "delete it and download or copy it again",
            ),
        ],
    )
    def test_bad_files(self, tmp_path, content, message, hint):
        path = tmp_path / "x.pt"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
        if hint is not None:
            assert info.value.hint == hint

    def test_directory(self, tmp_path):
        with pytest.raises(CheckpointError, match="is a directory") as info:
            load_checkpoint(tmp_path)
        assert info.value.hint == "give the checkpoint file inside it"

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize(
        "page",
        [
            b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>",
            b"\n\n  <html lang='en'><body>Too many users have viewed or downloaded this file",
            b"\xef\xbb\xbf<!doctype html>\r\n<html>",
            b"\xff\xfe" + "<html><head>".encode("utf-16-le"),
            b"\xfe\xff" + "<html><head>".encode("utf-16-be"),
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>',
            b"<head><meta http-equiv='refresh' content='0; url=https://example.com/confirm'>",
        ],
        ids=["doctype", "whitespace", "utf8-bom", "utf16-le", "utf16-be", "xml", "head"],
    )
    def test_html_page_saved_as_checkpoint(self, tmp_path, page, trust):
        path = tmp_path / "landscape.pt"
        path.write_bytes(page + b" " * 100_000 + b"</html>")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=trust)
        assert str(info.value) == (
            f"checkpoint {path} is an HTML page, not a checkpoint: the download failed"
        )
        assert info.value.hint == "delete it and retry the download"

    def test_html_page_with_latin1_text_further_on(self, tmp_path):
        # only the first bytes are sniffed: what follows may be in any encoding
        path = tmp_path / "landscape.pt"
        path.write_bytes(
            b"<!DOCTYPE html><html><head><title>Quota</title></head><body>"
            + b" " * 1000
            + "Le quota de t\u00e9l\u00e9chargement est d\u00e9pass\u00e9".encode("latin-1")
            + b"</body></html>"
        )
        with pytest.raises(CheckpointError, match="is an HTML page, not a checkpoint"):
            load_checkpoint(path)

    @pytest.mark.parametrize(
        "end, page",
        [
            ("\U0001f3b5".encode()[:1], True),
            ("\U0001f3b5".encode()[:2], True),
            ("\U0001f3b5".encode()[:3], True),
            (b"\xff...", False),
        ],
        ids=["cut-after-1", "cut-after-2", "cut-after-3", "invalid-4-from-the-end"],
    )
    def test_html_sniffing_at_the_end_of_the_first_512_bytes(self, tmp_path, end, page):
        # a character cut by the 512 sniffed bytes is still text; a byte that is no
        # UTF-8 before the last three makes the file binary
        head = b"<html>" + b" " * (512 - 6 - len(end)) + end
        assert len(head) == 512
        path = tmp_path / "x.pt"
        path.write_bytes(head + "\U0001f3b5</html>".encode())
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert ("is an HTML page" in str(info.value)) == page

    @pytest.mark.parametrize("trust", [False, True])
    def test_other_text_saved_as_checkpoint(self, tmp_path, trust):
        path = tmp_path / "model.pt"
        path.write_text("404: Not Found\nThe file you asked for does not exist.\n")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=trust)
        message = str(info.value)
        assert f"cannot read checkpoint {path}: it is a text file, not a checkpoint" in message
        assert "404: Not Found" in message and "\n" not in message
        assert info.value.hint == (
            "a failed download saves the server's answer: delete it and retry the download"
        )

    @pytest.mark.parametrize("length", [60, 61])
    def test_text_file_quotes_at_most_60_characters(self, tmp_path, length):
        line = "x" * length
        path = tmp_path / "model.pt"
        path.write_text(line + "\nmore\n")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        shown = line if length <= 60 else line[:57] + "..."
        assert str(info.value) == (
            f"cannot read checkpoint {path}: it is a text file, not a checkpoint "
            f"(it begins {shown!r})"
        )

    @pytest.mark.parametrize("trust", [False, True])
    def test_legacy_text_pickle_is_not_called_a_text_file(self, tmp_path, trust):
        # torch.save(pickle_protocol=0) in the legacy format writes text pickles (that torch
        # 2.x cannot read back): the error must be torch's, not "a text file"
        path = tmp_path / "old.pt"
        state = {f"layer{i}.weight": torch.ones(2) for i in range(20)}
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=0)
        assert path.read_bytes()[:1000].isascii()
        with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
            load_checkpoint(path, trust=trust)
        assert "text file" not in str(info.value)

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize("keep", [0.005, 0.5, -1])
    @pytest.mark.parametrize("legacy", [False, True])
    def test_truncated_file(self, tmp_path, legacy, keep, trust):
        source = tmp_path / "whole.pt"
        torch.save(
            {"g_ema": {"w": torch.randn(64, 64)}, "b": torch.randn(8)},
            source,
            _use_new_zipfile_serialization=not legacy,
        )
        data = source.read_bytes()
        path = tmp_path / "cut.pt"
        path.write_bytes(data[: int(len(data) * keep) if keep > 0 else keep])
        assert_damaged(path, trust)

    @pytest.mark.parametrize("trust", [False, True])
    def test_legacy_pickle_cut_inside_a_global_is_not_called_unsafe(self, tmp_path, trust):
        # cut in the middle of GLOBAL 'collections OrderedDict', the pickle seems to ask
        # for 'collections.Ordere': it is truncated, not malicious
        source = tmp_path / "whole.pt"
        torch.save({"w": torch.ones(3)}, source, _use_new_zipfile_serialization=False)
        data = source.read_bytes()
        path = tmp_path / "cut.pt"
        path.write_bytes(
            data[: data.index(b"collections\nOrderedDict") + len(b"collections\nOrde")]
        )
        assert_damaged(path, trust)

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize("damage", ["data.pkl", "record header"])
    def test_damaged_zip(self, tmp_path, damage, trust):
        # the end of the file is intact (it is a zip), what is inside is not
        source = tmp_path / "whole.pt"
        torch.save({"w": torch.randn(32, 32)}, source)
        data = bytearray(source.read_bytes())
        with zipfile.ZipFile(source) as archive:
            if damage == "data.pkl":
                info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
                start = info.header_offset + 30 + len(info.filename) + len(info.extra)
                data[start + 2 : start + 40] = b"\x00" * 38
            else:
                info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
                data[info.header_offset : info.header_offset + 4] = b"XXXX"
        path = tmp_path / "damaged.pt"
        path.write_bytes(bytes(data))
        assert zipfile.is_zipfile(path)
        assert_damaged(path, trust)


def assert_damaged(path: Path, trust: bool) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, trust=trust)
    assert str(info.value) == (
        f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes): "
        "an incomplete download or copy"
    )
    assert info.value.hint == "delete it and download or copy it again"


@pytest.fixture
def served(tmp_path):
    """A weights file reachable by a file:// URL."""
    source = tmp_path / "remote" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(b"weights" * 1000)
    return source


class TestWeightsRegistry:
    def entry(self, source, sha256=None):
        return KnownWeights("toy-model", source.as_uri(), "toy.bin", "MIT", sha256=sha256)

    def test_download_pins_sha256_and_verify(self, served, tmp_path):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served))
        path = registry.fetch("toy-model", progress=False)
        assert path == tmp_path / "home" / "weights" / "toy.bin"
        assert path.read_bytes() == served.read_bytes()
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        assert json.loads((path.parent / "pins.json").read_text()) == {"toy.bin": digest}
        assert registry.verify("toy-model") == ("ok", digest)
        path.write_bytes(b"tampered")
        status, detail = registry.verify("toy-model")
        assert status == "mismatch" and digest in detail

    def test_known_checksum_mismatch_keeps_nothing(self, served, tmp_path):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served, sha256="0" * 64))
        with pytest.raises(WeightsError, match="sha256 mismatch for 'toy-model'") as info:
            registry.fetch("toy-model", progress=False)
        assert info.value.hint == (
            "the download is corrupt or the file changed upstream; nothing was kept"
        )
        assert list((tmp_path / "home" / "weights").iterdir()) == []

    def test_known_checksum_match_is_kept_and_not_pinned(self, served, tmp_path):
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served, sha256=digest))
        path = registry.fetch("toy-model", progress=False)
        assert path.read_bytes() == served.read_bytes()
        assert not (path.parent / "pins.json").exists()
        assert registry.verify("toy-model") == ("ok", digest)

    def test_pins_file_is_sorted_indented_json(self, served, tmp_path):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(KnownWeights("z-model", served.as_uri(), "z.bin", "MIT"))
        registry.add(KnownWeights("a-model", served.as_uri(), "a.bin", "MIT"))
        registry.fetch("z-model", progress=False)
        registry.fetch("a-model", progress=False)
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        pins = tmp_path / "home" / "weights" / "pins.json"
        assert pins.read_text() == f'{{\n  "a.bin": "{digest}",\n  "z.bin": "{digest}"\n}}\n'

    def test_verify_a_copied_file_that_was_never_pinned(self, served, tmp_path):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served))
        path = registry.local_path("toy-model")
        assert registry.verify("toy-model") == ("missing", str(path))
        path.parent.mkdir(parents=True)
        path.write_bytes(served.read_bytes())
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        assert registry.verify("toy-model") == ("unpinned", digest)

    @pytest.mark.parametrize("progress", [None, True, False])
    def test_progress_bar(self, served, tmp_path, capsys, progress):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served))
        if progress is None:
            registry.fetch("toy-model")  # on by default
        else:
            registry.fetch("toy-model", progress=progress)
        shown = "downloading toy.bin" in capsys.readouterr().err
        assert shown == (progress is not False)

    def test_failed_download_names_url_path_and_env(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(KnownWeights("gone", "http://127.0.0.1:9/missing.pt", "missing.pt", "MIT"))
        with pytest.raises(WeightsError) as info:
            registry.fetch("gone", progress=False)
        message = str(info.value)
        assert "http://127.0.0.1:9/missing.pt" in message
        assert str(tmp_path / "home" / "weights" / "missing.pt") in message
        assert "SOUNDGUIDE_HOME" in info.value.hint
        assert not (tmp_path / "home" / "weights" / "missing.pt").exists()

    @pytest.mark.parametrize(
        "content, found",
        [
            ("[]", "a JSON list"),
            ("3", "a JSON number"),
            ('"toy.bin"', "a JSON string"),
            ('{"toy.bin": {"sha256": "%s"}}' % ("a" * 64), "'toy.bin': {"),
            ('{"toy.bin": "abc", "ok.bin": "%s"}' % ("a" * 64), "'toy.bin': \"abc\""),
            ('{"toy.bin": null}', "'toy.bin': null"),
            ("null", "a JSON null"),
            ("true", "a JSON boolean"),
            ("1.5", "a JSON number"),
            ('{"a.bin": 1, "b.bin": 2, "c.bin": 3}', "found 'a.bin': 1, 'b.bin': 2 (+1 more)"),
            ('{"toy.bin": "%s"}' % ("g" * 38), "'toy.bin': \"%s\"" % ("g" * 38)),
            ('{"toy.bin": "%s"}' % ("g" * 39), "'toy.bin': \"%s..." % ("g" * 36)),
        ],
        ids=[
            "list",
            "number",
            "string",
            "nested",
            "short",
            "null",
            "top-null",
            "boolean",
            "float",
            "three-bad",
            "value-40-chars",
            "value-41-chars",
        ],
    )
    def test_pins_of_the_wrong_form(self, served, tmp_path, content, found):
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(self.entry(served))
        pins = tmp_path / "home" / "weights" / "pins.json"
        pins.parent.mkdir(parents=True)
        pins.write_text(content)
        for attempt in (registry.pins, lambda: registry.fetch("toy-model", progress=False)):
            with pytest.raises(WeightsError) as info:
                attempt()
            message = str(info.value)
            assert message.startswith(f"{pins} is not a pins file")
            assert "expected a JSON object of file name -> sha256 (64 hex digits)" in message
            assert found in message and "\n" not in message
            assert info.value.hint == (
                "fix it, or delete it (the next download of a file pins it again)"
            )
        assert not (tmp_path / "home" / "weights" / "toy.bin").exists()

    def test_pins_file_that_is_no_json(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path)
        pins = tmp_path / "weights" / "pins.json"
        pins.parent.mkdir()
        pins.write_text('{"toy.bin": ')
        with pytest.raises(WeightsError) as info:
            registry.pins()
        assert str(info.value).startswith(f"cannot read {pins}: Expecting value")

    def test_pins_accept_upper_case_digests(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path)
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "pins.json").write_text('{"a.pt": "%s"}' % ("AB" * 32))
        assert registry.pins() == {"a.pt": "ab" * 32}

    def test_home_follows_the_environment(self, monkeypatch, tmp_path):
        monkeypatch.setenv("SOUNDGUIDE_HOME", str(tmp_path / "env-home"))
        registry = WeightsRegistry()
        registry.add(KnownWeights("x", "file:///nope", "x.bin", "MIT"))
        assert registry.local_path("x") == tmp_path / "env-home" / "weights" / "x.bin"
        assert registry.verify("x")[0] == "missing"

    def test_default_home(self, monkeypatch, tmp_path):
        monkeypatch.setenv("HOME", str(tmp_path))
        for value in (None, ""):
            if value is None:
                monkeypatch.delenv("SOUNDGUIDE_HOME")
            else:
                monkeypatch.setenv("SOUNDGUIDE_HOME", value)
            registry = WeightsRegistry()
            assert registry.folder == tmp_path / ".cache" / "soundguide" / "weights"

    def test_entry_with_its_own_folder(self, monkeypatch, tmp_path):
        # CLIP models live in ~/.cache/clip, shared with the clip package
        monkeypatch.setenv("HOME", str(tmp_path))
        registry = WeightsRegistry(home=tmp_path / "home")
        registry.add(KnownWeights("clip", "file:///c", "ViT.pt", "MIT", folder="~/.cache/clip"))
        assert registry.local_path("clip") == tmp_path / ".cache" / "clip" / "ViT.pt"

    def test_names_in_order(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path)
        registry.add(KnownWeights("b", "file:///b", "b.pt", "MIT"))
        registry.add(KnownWeights("a", "file:///a", "a.pt", "MIT"))
        assert [entry.name for entry in registry] == ["a", "b"] and len(registry) == 2
        assert "a" in registry and "c" not in registry
        assert registry.owner("a") == ("<python>", "<python>")

    def test_unknown_and_duplicate_names(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path)
        registry.add(KnownWeights("landscape", "file:///a", "a.pt", "MIT"))
        with pytest.raises(
            WeightsError, match="unknown weights name 'landscap'.*did you mean 'landscape'"
        ) as info:
            registry.get("landscap")
        assert info.value.hint == (
            "`soundguide weights list` shows the known names; or give a local file's path"
        )
        with pytest.raises(DuplicatePluginError, match="registered twice"):
            registry.add(KnownWeights("landscape", "file:///b", "b.pt", "MIT"))


def test_entry_without_public_download_says_where_to_put_the_file(tmp_path):
    registry = WeightsRegistry(home=tmp_path)
    registry.add(KnownWeights("manual", None, "m.pt", "?", description="convert it with X"))
    with pytest.raises(
        WeightsError, match=r"'manual' has no public download; put the file at .*m\.pt"
    ) as info:
        registry.fetch("manual", progress=False)
    assert info.value.hint == "convert it with X"
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / "m.pt").write_bytes(b"x")
    assert registry.fetch("manual") == tmp_path / "weights" / "m.pt"


class FakeResponse(io.BytesIO):
    """What ``urlopen`` returns: a body, headers, and optionally a connection that drops."""

    def __init__(self, body: bytes, content_type: str | None = None, drop_after: int = -1):
        super().__init__(body)
        self.headers = http.client.HTTPMessage()
        self.headers["Content-Length"] = str(len(body))
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.drop_after = drop_after

    def read(self, size=-1):
        if self.tell() >= self.drop_after >= 0:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 1000))


@pytest.fixture
def answer(monkeypatch):
    """Make every download answer with the given response; returns the timeouts asked for."""
    timeouts = []

    def install(response: FakeResponse) -> list:
        def urlopen(url, timeout=None):
            timeouts.append(timeout)
            return response

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        return timeouts

    return install


class TestDownloadFile:
    URL = "https://example.com/model.bin"

    def test_into_a_new_folder(self, served, tmp_path, capsys):
        path = tmp_path / "a" / "b" / "model.bin"
        digest = download_file(served.as_uri(), path, what="'toy'")
        assert digest == hashlib.sha256(served.read_bytes()).hexdigest()
        assert path.read_bytes() == served.read_bytes()
        assert "downloading model.bin" in capsys.readouterr().err  # a progress bar by default

    @pytest.mark.parametrize(
        "url, reason",
        [("missing", "[Errno 2] No such file or directory: "), ("not a url", "unknown url type: ")],
    )
    def test_unreachable(self, tmp_path, url, reason):
        url = (tmp_path / "missing.bin").as_uri() if url == "missing" else url
        path = tmp_path / "cache" / "model.bin"
        with pytest.raises(WeightsError) as info:
            download_file(url, path, what="'toy'", progress=False, hint="get it yourself")
        message = str(info.value)
        assert message.startswith(f"cannot download 'toy' from {url} ({reason}")
        assert message.endswith(f"); expected at {path}")
        assert info.value.hint == "get it yourself"
        assert list(path.parent.iterdir()) == []

    def test_downloads_have_a_timeout(self, tmp_path, answer):
        # without one, a server that stops answering would hang the run forever
        timeouts = answer(FakeResponse(b"weights"))
        download_file(self.URL, tmp_path / "model.bin", what="'toy'", progress=False)
        assert len(timeouts) == 1 and timeouts[0] is not None and 0 < timeouts[0] <= 60

    @pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "text/html"])
    def test_answered_with_a_web_page(self, tmp_path, answer, content_type):
        answer(FakeResponse(b"<html>quota exceeded</html>", content_type=content_type))
        path = tmp_path / "model.bin"
        with pytest.raises(WeightsError) as info:
            download_file(self.URL, path, what="'toy'", progress=False, hint="get it yourself")
        assert str(info.value) == (
            f"cannot download 'toy': {self.URL} answered with a web page, not the file; "
            f"expected at {path}"
        )
        assert info.value.hint == "get it yourself"
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
    def test_a_file_is_kept(self, tmp_path, answer, content_type):
        answer(FakeResponse(b"weights" * 500, content_type=content_type))
        path = tmp_path / "model.bin"
        download_file(self.URL, path, what="'toy'", progress=False)
        assert path.read_bytes() == b"weights" * 500

    def test_connection_lost_midway_keeps_nothing(self, tmp_path, answer):
        answer(FakeResponse(b"weights" * 500, drop_after=1000))
        path = tmp_path / "model.bin"
        with pytest.raises(WeightsError) as info:
            download_file(self.URL, path, what="'toy'", progress=False, hint="get it yourself")
        assert str(info.value) == (
            f"download of 'toy' from {self.URL} failed: connection reset by peer; "
            f"expected at {path}"
        )
        assert info.value.hint == "get it yourself"
        assert list(tmp_path.iterdir()) == []


class TestReadCheckpoint:
    def test_a_state_dict_is_passed_through(self):
        state = {"w": torch.ones(2)}
        source, obj = read_checkpoint(state)
        assert source == "<state dict>" and obj is state

    def test_refuses_pickled_code_unless_trusted(self, tmp_path):
        sentinel = tmp_path / "pwned"
        path = tmp_path / "evil.pt"
        torch.save({"w": Payload(str(sentinel))}, path)
        with pytest.raises(CheckpointError, match="could run arbitrary code"):
            read_checkpoint(path)
        assert not sentinel.exists()
        torch.save({"ns": argparse.ArgumentParser}, path)
        assert read_checkpoint(path, trust=True)[1]["ns"] is argparse.ArgumentParser

    def test_path_with_tilde(self, tmp_path, monkeypatch):
        monkeypatch.setenv("HOME", str(tmp_path))
        torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
        source, obj = read_checkpoint("~/a.pt")
        assert source == str(tmp_path / "a.pt") and torch.equal(obj["w"], torch.ones(2))

    def test_map_location(self, tmp_path):
        torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
        assert read_checkpoint(tmp_path / "a.pt", map_location="meta")[1]["w"].is_meta

    @pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
    @pytest.mark.parametrize("mmap", [None, False, True])
    def test_mmap(self, tmp_path, mmap):
        path = tmp_path / "a.pt"
        torch.save({"w": torch.ones(2)}, path)
        source, obj = read_checkpoint(path) if mmap is None else read_checkpoint(path, mmap=mmap)
        assert torch.equal(obj["w"], torch.ones(2))
        assert is_mapped(path) == bool(mmap)  # off by default


class TestUnwrapStateDict:
    def test_plain(self):
        state = {"w": torch.ones(2), "b": torch.zeros(1)}
        assert unwrap_state_dict(state, "x.pt") == state

    @pytest.mark.parametrize("depth", [1, 2, 3])
    def test_containers(self, depth):
        state = {"w": torch.ones(2)}
        obj = state
        for _ in range(depth):
            obj = {"state_dict": obj, "epoch": 3}
        assert unwrap_state_dict(obj, "x.pt") == state

    def test_at_most_three_containers_deep(self):
        obj = {"w": torch.ones(2)}
        for _ in range(4):
            obj = {"state_dict": obj}
        with pytest.raises(CheckpointError) as info:
            unwrap_state_dict(obj, "x.pt")
        assert str(info.value) == "checkpoint x.pt is not a state dict: state_dict are not tensors"

    def test_chosen_container(self):
        # rosinality's training checkpoints keep the averaged generator under g_ema
        obj = {"g": {"w": torch.zeros(2)}, "g_ema": {"w": torch.ones(2)}, "args": None}
        assert unwrap_state_dict(obj, "x.pt", containers=("missing", "g_ema", "g"))["w"].sum() == 2

    @pytest.mark.parametrize("wrapped", [False, True])
    def test_module(self, wrapped):
        module = nn.Linear(2, 3)
        state = unwrap_state_dict({"state_dict": module} if wrapped else module, "x.pt")
        assert set(state) == {"weight", "bias"} and state["weight"].shape == (3, 2)

    @pytest.mark.parametrize(
        "keys, stripped",
        [
            (["module.w", "module.b"], ["w", "b"]),
            (["module.module.w", "module.module.b"], ["w", "b"]),
            (["module.w", "b"], ["module.w", "b"]),
            (["module.", "module.b"], ["", "b"]),
        ],
        ids=["data-parallel", "twice", "not-every-key", "empty-rest"],
    )
    def test_prefix_every_key_carries_is_stripped(self, keys, stripped):
        state = unwrap_state_dict({k: torch.ones(1) for k in keys}, "x.pt")
        assert list(state) == stripped

    @pytest.mark.parametrize(
        "obj, got", [({}, "dict"), ([torch.ones(1)], "list"), ({"state_dict": {}}, "dict")]
    )
    def test_no_state_dict(self, obj, got):
        with pytest.raises(CheckpointError) as info:
            unwrap_state_dict(obj, "x.pt")
        assert str(info.value) == f"checkpoint x.pt holds no state dict (got {got})"

    def test_values_that_are_no_tensors(self):
        obj = {"w": torch.ones(1), "step": 5, 3: "three", "args": None}
        with pytest.raises(CheckpointError) as info:
            unwrap_state_dict(obj, "x.pt")
        assert str(info.value) == (
            "checkpoint x.pt is not a state dict: step, 3, args are not tensors"
        )


class TestCheckStateDict:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}

    def test_fits(self):
        state = {k: torch.ones_like(v) for k, v in self.expected.items()}
        assert check_state_dict(self.expected, state, source="x.pt", what="the model") is None

    def test_every_problem_in_one_line(self):
        state = {"a": torch.zeros(2), "b": torch.zeros(4, 3), "z": torch.zeros(1)}
        with pytest.raises(CheckpointError) as info:
            check_state_dict(self.expected, state, source="x.pt", what="the model", hint="h")
        assert str(info.value) == (
            "checkpoint x.pt does not fit the model: missing keys c; unexpected keys z; "
            "wrong shapes (checkpoint vs model) b (4, 3) vs (3, 4)"
        )
        assert info.value.hint == "h"

    @pytest.mark.parametrize(
        "count, listed", [(4, "k0, k1, k2, k3"), (5, "k0, k1, k2, k3 (+1 more)")]
    )
    def test_at_most_four_names_are_listed(self, count, listed):
        expected = {f"k{i}": torch.zeros(1) for i in range(count)}
        with pytest.raises(CheckpointError) as info:
            check_state_dict(expected, {}, source="x.pt", what="the model")
        assert str(info.value) == f"checkpoint x.pt does not fit the model: missing keys {listed}"
        with pytest.raises(CheckpointError) as info:
            check_state_dict({}, expected, source="x.pt", what="the model")
        assert str(info.value) == (
            f"checkpoint x.pt does not fit the model: unexpected keys {listed}"
        )
