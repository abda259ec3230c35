from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle

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
            (os.urandom(64), "cannot read checkpoint"),
            (b"PK\x03\x04truncated zip", "cannot read checkpoint"),
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
            WeightsError, match="unknown known weights 'landscap'.*did you mean 'landscape'"
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
