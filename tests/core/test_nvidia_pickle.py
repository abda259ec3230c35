from __future__ import annotations

import io
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from soundguide.core.errors import CheckpointError
from soundguide.core.nvidia_pickle import (
    EasyDict,
    ModuleRecord,
    PersistentObject,
    load_nvidia_network,
    read_nvidia_pickle,
)
from tests.nvidia_persistence import DNNLIB_UTIL, nvidia_modules, persistent


def networks(source: str) -> type[nn.Module]:
    """A tiny StyleGAN-shaped generator whose classes pickle with ``source``."""

    @persistent(source)
    class FullyConnectedLayer(nn.Module):
        def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(out_features, in_features))
            self.bias = nn.Parameter(torch.randn(out_features)) if bias else None

    @persistent(source)
    class MappingNetwork(nn.Module):
        def __init__(self, z_dim: int, w_dim: int) -> None:
            super().__init__()
            self.fc0 = FullyConnectedLayer(z_dim, w_dim)
            self.fc1 = FullyConnectedLayer(w_dim, w_dim, bias=False)
            self.register_buffer("w_avg", torch.zeros(w_dim))

    @persistent(source)
    class SynthesisLayer(nn.Module):
        def __init__(self, channels: int, size: int, cutoff: float) -> None:
            super().__init__()
            self.affine = nn.Linear(channels, channels)  # a plain torch module inside
            self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3).half())
            base = torch.randn(size + 4, size)
            self.register_buffer("noise_const", base.t()[:, 2:])  # a non-contiguous view
            self.register_buffer("steps", torch.arange(4))  # int64
            self.register_buffer("scratch", torch.ones(2), persistent=False)
            self.in_size = np.broadcast_to(np.asarray(size), [2])  # as StyleGAN3 keeps them
            self.cutoff = cutoff

    @persistent(source)
    class SynthesisNetwork(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.const = nn.Parameter(torch.randn(channels, 4, 4))
            self.conv1 = SynthesisLayer(channels, 4, cutoff=np.float64(2.5))
            self.b8 = SynthesisLayer(channels, 8, cutoff=3.0)

    @persistent(source)
    class Generator(nn.Module):
        def __init__(self, z_dim: int, w_dim: int, img_resolution: int, **synthesis_kwargs):
            super().__init__()
            self.z_dim, self.w_dim, self.img_resolution = z_dim, w_dim, img_resolution
            self.mapping = MappingNetwork(z_dim=z_dim, w_dim=w_dim)
            self.synthesis = SynthesisNetwork(**synthesis_kwargs)

    return Generator


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "source-ran"


def snapshot_source(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').write('ran')\n"


def write_snapshot(
    path: Path, sentinel: Path, *, protocol: int | None = None, **extra
) -> nn.Module:
    """Pickle as NVIDIA's training_loop.py does; return the generator that was pickled."""
    torch.manual_seed(0)
    G = networks(snapshot_source(sentinel))(z_dim=3, w_dim=5, img_resolution=8, channels=2)
    G = G.eval().requires_grad_(False)
    with nvidia_modules():
        data = dict(
            training_set_kwargs=DNNLIB_UTIL.EasyDict(path="ffhq.zip", resolution=8),
            G_ema=G,
            augment_pipe=None,
            **extra,
        )
        with open(path, "wb") as file:
            pickle.dump(data, file, protocol=protocol)
    return G


# -- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_reads_networks_without_running_their_source(tmp_path, sentinel, protocol):
    path = tmp_path / "network-snapshot-000000.pkl"
    G = write_snapshot(path, sentinel, protocol=protocol)

    snapshot = read_nvidia_pickle(path)

    assert not sentinel.exists()
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert set(snapshot) == {"training_set_kwargs", "G_ema", "augment_pipe"}
    assert type(snapshot["training_set_kwargs"]) is EasyDict
    assert snapshot["training_set_kwargs"].resolution == 8
    G_ema = snapshot["G_ema"]
    assert isinstance(G_ema, PersistentObject)
    assert (G_ema.class_name, G_ema.version, G_ema.module_name) == ("Generator", 6, None)
    assert G_ema.init_kwargs == {"z_dim": 3, "w_dim": 5, "img_resolution": 8, "channels": 2}
    assert G_ema.init_kwargs.w_dim == 5
    assert G_ema.source_length == len(snapshot_source(sentinel))
    assert G_ema.state["img_resolution"] == 8

    expected = G.state_dict()  # torch's own walk of the real modules is the reference
    state = G_ema.state_dict()
    assert list(state) == list(expected)
    assert "synthesis.conv1.scratch" not in state  # non-persistent buffer
    assert "mapping.fc1.bias" not in state  # a parameter registered as None
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype, name
        assert state[name].shape == tensor.shape, name
        assert torch.equal(state[name], tensor), name
        assert not state[name].requires_grad


def test_nested_records_keep_init_kwargs_numpy_and_torch_modules(tmp_path, sentinel):
    path = tmp_path / "stylegan3-t.pkl"
    write_snapshot(path, sentinel)

    G_ema = load_nvidia_network(path)

    assert list(G_ema.submodules()) == ["mapping", "synthesis"]
    synthesis = G_ema.submodules()["synthesis"]
    assert synthesis.init_kwargs == {"channels": 2}
    conv1 = synthesis.submodules()["conv1"]
    assert isinstance(conv1, PersistentObject) and conv1.init_args == (2, 4)
    assert conv1.init_kwargs.cutoff == 2.5 and isinstance(conv1.init_kwargs.cutoff, np.float64)
    np.testing.assert_array_equal(conv1.state["in_size"], [4, 4])
    affine = conv1.submodules()["affine"]
    assert type(affine) is ModuleRecord
    assert affine.class_name == "torch.nn.modules.linear.Linear"
    assert list(affine.state_dict()) == ["weight", "bias"]
    assert list(G_ema.submodules()["mapping"].state_dict()) == [
        "w_avg",
        "fc0.weight",
        "fc0.bias",
        "fc1.weight",
    ]
    assert not sentinel.exists()


def test_never_calls_nvidia_code_even_when_it_is_importable(tmp_path, sentinel):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, sentinel)
    with nvidia_modules():
        read_nvidia_pickle(path)
        assert not sentinel.exists()
        with open(path, "rb") as file:  # the control: a plain pickle.load runs the source
            pickle.load(file)
    assert sentinel.read_text() == "ran"


# -- refusals and broken files -----------------------------------------------------------------


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"\x80\x04cos\nsystem\n(S'touch /tmp/x'\ntR.", "os.system"),
        (pickle.dumps({"G_ema": _Eval()}), "builtins.eval"),
        (b"\x80\x04ctorch_utils.persistence\n_src_to_module\n(S'x'\ntR.", "_src_to_module"),
        (b"\x80\x04cnumpy\ndtype\n(S'O'\ntR.", "numpy array of dtype 'O'"),
    ],
)
def test_refuses_other_globals_naming_them(tmp_path, payload, name):
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=name) as info:
        read_nvidia_pickle(path)
    assert "\n" not in str(info.value)
    if "dtype" not in name:
        assert "--trust-checkpoint" in info.value.hint


def test_refuses_code_hidden_in_a_network_state(tmp_path, sentinel):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, sentinel, G=_Eval())
    with pytest.raises(CheckpointError, match=r"refusing to load .* builtins\.eval"):
        read_nvidia_pickle(path)


def test_truncated_file(tmp_path, sentinel):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, sentinel)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"is truncated: an incomplete download"):
            read_nvidia_pickle(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\x01\x02binary junk", r"no pickle of protocol 2 or later, .* \(it begins b'\\x00"),
        (b"model weights moved, see README\n", r"it is a text file"),
        (b"<!DOCTYPE html><html>quota exceeded</html>", r"is an HTML page"),
        (b"", r"is empty"),
    ],
)
def test_not_a_pickle(tmp_path, content, match):
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_nvidia_pickle(path)


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save_checkpoint(tmp_path, zipped):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match=r"is a torch\.save checkpoint, not an NVIDIA"):
        read_nvidia_pickle(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_nvidia_pickle(tmp_path / "nothing.pkl")


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=r"holds a list, not the dict of networks"):
        read_nvidia_pickle(path)


def test_without_g_ema_says_what_it_holds(tmp_path, sentinel):
    path = tmp_path / "network-snapshot.pkl"
    with nvidia_modules():
        path.write_bytes(pickle.dumps({"G": None, "training_set_kwargs": DNNLIB_UTIL.EasyDict()}))
    with pytest.raises(CheckpointError, match=r"holds no G_ema: it holds G, training_set_kwargs"):
        load_nvidia_network(path)


def test_a_damaged_storage_blob(tmp_path, sentinel):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, sentinel)
    data = path.read_bytes()
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    assert magic in data
    path.write_bytes(data.replace(magic, magic[:-3] + b"\x00\x00.", 1))
    with pytest.raises(CheckpointError, match=r"storage is not in torch's legacy format"):
        read_nvidia_pickle(path)


class _Reduce:
    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def legacy_storage_blob(values: list[float], view: tuple | None) -> bytes:
    """What torch 1.x's ``Storage.__reduce__`` wrote for a storage that was a view."""
    out = io.BytesIO()
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    for part in (0x1950A86A20F9469CFC6C, 1001, info):
        pickle.dump(part, out, protocol=2)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None

    Pickler(out, protocol=2).dump(("storage", torch.FloatStorage, "root", "cpu", len(values), view))
    pickle.dump(["root"], out, protocol=2)
    out.write(struct.pack("<q", len(values)))
    out.write(struct.pack(f"<{len(values)}f", *values))
    return out.getvalue()


def test_a_storage_view_from_torch_1(tmp_path):
    blob = legacy_storage_blob([float(i) for i in range(10)], ("view", 2, 4))  # [2, 3, 4, 5]
    storage = _Reduce(torch.storage._load_from_bytes, blob)
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, storage, 1, (2,), (1,), False, {})
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"t": tensor}, protocol=3))
    assert torch.equal(read_nvidia_pickle(path)["t"], torch.tensor([3.0, 4.0]))
