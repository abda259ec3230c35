from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from soundguide.core.checkpoints import KnownWeights, WeightsRegistry, load_checkpoint
from soundguide.core.errors import CheckpointError, DuplicatePluginError, WeightsError


class Payload:
    """Unpickling this runs code: it creates a sentinel file."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


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
        with pytest.raises(CheckpointError, match="cannot read checkpoint .* safely") as info:
            load_checkpoint(path)
        assert not sentinel.exists()
        assert "--trust-checkpoint" in info.value.hint

    def test_trust_loads_arbitrary_objects(self, tmp_path):
        torch.save({"ns": argparse.ArgumentParser}, tmp_path / "a.pt")
        with pytest.raises(CheckpointError, match="ArgumentParser"):
            load_checkpoint(tmp_path / "a.pt")
        assert load_checkpoint(tmp_path / "a.pt", trust=True)["ns"] is argparse.ArgumentParser

    @pytest.mark.parametrize(
        "content, message",
        [
            (None, "checkpoint not found"),
            (b"", "checkpoint is empty"),
            (random.Random(0).randbytes(64), "cannot read checkpoint"),
            (b"PK\x03\x04truncated zip", "is truncated or corrupt"),
        ],
    )
    def test_bad_files(self, tmp_path, content, message):
        path = tmp_path / "x.pt"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)

    def test_directory(self, tmp_path):
        with pytest.raises(CheckpointError, match="is a directory"):
            load_checkpoint(tmp_path)

    @pytest.mark.parametrize("trust", [False, True])
    @pytest.mark.parametrize(
        "page",
        [
            b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>",
            b"\n\n  <html lang='en'><body>Too many users have viewed or downloaded this file",
            b"\xef\xbb\xbf<!doctype html>\r\n<html>",
            "\ufeff<html><head>".encode("utf-16"),
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>',
            b"<head><meta http-equiv='refresh' content='0; url=https://example.com/confirm'>",
        ],
        ids=["doctype", "whitespace", "utf8-bom", "utf16", "xml", "head"],
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

    @pytest.mark.parametrize("trust", [False, True])
    def test_other_text_saved_as_checkpoint(self, tmp_path, trust):
        path = tmp_path / "model.pt"
        path.write_text("404: Not Found\nThe file you asked for does not exist.\n")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, trust=trust)
        message = str(info.value)
        assert f"cannot read checkpoint {path}: it is a text file, not a checkpoint" in message
        assert "404: Not Found" in message and "\n" not in message
        assert "retry the download" in info.value.hint
        assert "--trust-checkpoint" not in info.value.hint

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
    message = str(info.value)
    assert f"checkpoint {path} is truncated or corrupt" in message
    assert "an incomplete download or copy" in message and "\n" not in message
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
        with pytest.raises(WeightsError, match="sha256 mismatch for 'toy-model'"):
            registry.fetch("toy-model", progress=False)
        assert list((tmp_path / "home" / "weights").iterdir()) == []

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
        ],
        ids=["list", "number", "string", "nested", "short", "null"],
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
        assert not (tmp_path / "home" / "weights" / "toy.bin").exists()

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

    def test_unknown_and_duplicate_names(self, tmp_path):
        registry = WeightsRegistry(home=tmp_path)
        registry.add(KnownWeights("landscape", "file:///a", "a.pt", "MIT"))
        with pytest.raises(
            WeightsError, match="unknown weights name 'landscap'.*did you mean 'landscape'"
        ):
            registry.get("landscap")
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
