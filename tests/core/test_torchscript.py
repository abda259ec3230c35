from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from soundguide.core.errors import CheckpointError
from soundguide.core.torchscript import parse_classes, read_torchscript_state_dict


def jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        return torch.jit.load(str(path), map_location="cpu")


def save(module: nn.Module, path: Path, *, trace_input: torch.Tensor | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if trace_input is None:
            scripted = torch.jit.script(module)
        else:
            scripted = torch.jit.trace(module, trace_input, check_trace=False)
        scripted.save(str(path))
    return path


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).to(torch.float64)
        self.register_buffer("transposed", torch.arange(6.0).reshape(2, 3).t())  # non-contiguous
        self.frozen = nn.Parameter(torch.randn(2), requires_grad=False)  # a parameter all the same
        self.plain = torch.ones(4)  # a tensor attribute: neither parameter nor buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x.double()).float() + self.frozen
        return y + self.plain.sum() + self.transposed.sum()


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.scale16 = nn.Parameter(torch.randn(5).half())
        base = torch.randn(10)
        self.register_buffer("window", base[2:6])  # two views of one storage
        self.register_buffer("every_other", base[::2])
        self.seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
        self.seq[2].weight = self.seq[0].weight  # one parameter under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(self.seq(x))
        return y + self.scale16.float().sum() + self.window.sum() + self.every_other.sum()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("archives")
    torch.manual_seed(0)
    module = Outer().eval()
    return {
        "scripted": save(module, folder / "scripted.pt"),
        "traced": save(module, folder / "traced.pt", trace_input=torch.zeros(1, 3)),
    }


def assert_same_state(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype, key
        assert ours[key].stride() == value.stride(), key
        assert torch.equal(ours[key], value), key


class TestMatchesTorchJitLoad:
    @pytest.mark.parametrize("kind", ["scripted", "traced"])
    @pytest.mark.parametrize("mmap", [True, False])
    def test_state_dict(self, archives, kind, mmap):
        path = archives[kind]
        expected = dict(jit_load(path).state_dict())
        ours = read_torchscript_state_dict(path, mmap=mmap)
        assert_same_state(ours, expected)
        assert "inner.frozen" in ours and "inner.transposed" in ours
        assert "inner.plain" not in ours
        assert ours["scale16"].dtype == torch.float16
        assert ours["inner.lin.weight"].dtype == torch.float64
        assert not ours["inner.transposed"].is_contiguous()
        # views of one storage share its memory, as they do after torch.jit.load
        window, every_other = ours["window"], ours["every_other"]
        assert window.untyped_storage().data_ptr() == every_other.untyped_storage().data_ptr()
        assert ours["seq.0.weight"] is ours["seq.2.weight"]

    def test_plain_tensor_attribute_is_in_the_pickle_but_not_the_state(self, archives):
        # the reader must tell it apart by the class declarations, not by its look in data.pkl
        with zipfile.ZipFile(archives["scripted"]) as archive:
            code = [archive.read(n).decode() for n in archive.namelist() if n.endswith(".py")]
        declarations = next(text for text in code if "class Inner(Module)" in text)
        assert "plain : Tensor" in declarations
        assert '__parameters__ = ["frozen", ]' in declarations
        assert "inner.plain" not in jit_load(archives["scripted"]).state_dict()

    def test_storages_are_mapped_from_the_file(self, archives):
        path = archives["scripted"]
        ours = read_torchscript_state_dict(path)
        maps = Path("/proc/self/maps")
        if not maps.exists():
            pytest.skip("needs /proc/self/maps")
        pointer = ours["inner.lin.weight"].data_ptr()
        mapped = []
        for line in maps.read_text().splitlines():
            fields = line.split(maxsplit=5)
            start, end = (int(v, 16) for v in fields[0].split("-"))
            if len(fields) == 6 and start <= pointer < end:
                mapped.append(fields[5])
        assert mapped == [os.path.realpath(path)]
        copied = read_torchscript_state_dict(path, mmap=False)["inner.lin.weight"]
        assert torch.equal(copied, ours["inner.lin.weight"])
        assert copied.data_ptr() != pointer

    def test_other_folder_name_and_compressed_members(self, archives, tmp_path):
        # older writers named the top folder differently (e.g. archive/); a re-zipped file is deflated
        source = archives["scripted"]
        path = tmp_path / "renamed.pt"
        with (
            zipfile.ZipFile(source) as old,
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new,
        ):
            for name in old.namelist():
                new.writestr("archive/" + name.split("/", 1)[1], old.read(name))
        expected = dict(jit_load(source).state_dict())
        assert_same_state(read_torchscript_state_dict(path), expected)

    def test_storage_named_by_dtype(self, archives, tmp_path):
        # ('storage', torch.float32, ...) instead of ('storage', torch.FloatStorage, ...)
        path = rewrite_data_pkl(
            archives["scripted"],
            tmp_path / "dtype.pt",
            lambda data: data.replace(b"ctorch\nFloatStorage\n", b"ctorch\nfloat32\n"),
        )
        expected = dict(jit_load(archives["scripted"]).state_dict())
        assert_same_state(read_torchscript_state_dict(path), expected)

    def test_storages_saved_on_a_gpu_come_to_the_cpu(self, archives, tmp_path):
        # OpenAI's archives were written from CUDA: ('storage', ..., 'cuda:0', numel)
        path = rewrite_data_pkl(
            archives["scripted"],
            tmp_path / "cuda.pt",
            lambda data: data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"),
        )
        ours = read_torchscript_state_dict(path)
        assert {t.device.type for t in ours.values()} == {"cpu"}
        assert_same_state(ours, dict(jit_load(archives["scripted"]).state_dict()))


def rewrite_data_pkl(source: Path, path: Path, change) -> Path:
    """A copy of an archive with its data.pkl changed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name.endswith("/data.pkl"):
                changed = change(data)
                assert changed != data
                data = changed
            new.writestr(name, data)
    return path


class LaxUnpickler(pickle.Unpickler):
    """Stands in for ``__torch__`` classes and lets every other global through."""

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return type(name, (), {})
        return super().find_class(module, name)


def unicode_opcode(text: str) -> bytes:
    """A pickle BINUNICODE opcode pushing ``text``."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# -- code in the archive never runs ---------------------------------------------------------


class Trap:
    """A TorchScript class whose __setstate__ has an effect: it raises when loaded."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __getstate__(self) -> tuple[torch.Tensor, int]:
        return (self.x, 1)

    def __setstate__(self, state: tuple[torch.Tensor, int]) -> None:
        if state[1] == 1:
            raise RuntimeError("Trap.__setstate__ ran")
        self.x = state[0]


class HoldsTrap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.trap = Trap(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.trap.x.sum()


class StatefulModule(nn.Module):
    """A module that restores its own attributes with code."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        if state[0].numel() > 0:
            raise RuntimeError("StatefulModule.__setstate__ ran")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class TestNoCodeRuns:
    def test_setstate_of_a_script_class_never_runs(self, tmp_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(Trap)  # a TorchScript class, not a module
        module = HoldsTrap()
        path = save(module, tmp_path / "trap.pt")
        with pytest.raises(torch.jit.Error, match=r"Trap.__setstate__ ran"):
            jit_load(path)  # torch.jit.load runs the archive's code
        ours = read_torchscript_state_dict(path)
        assert list(ours) == ["lin.weight", "lin.bias"]
        assert torch.equal(ours["lin.weight"], module.lin.weight.detach())
        assert torch.equal(ours["lin.bias"], module.lin.bias.detach())

    def test_module_restoring_itself_with_code_is_refused(self, tmp_path):
        path = save(StatefulModule(), tmp_path / "stateful.pt")
        with pytest.raises(torch.jit.Error, match=r"StatefulModule.__setstate__ ran"):
            jit_load(path)
        with pytest.raises(CheckpointError) as info:
            read_torchscript_state_dict(path)
        message = str(info.value)
        assert "refusing to read TorchScript archive" in message and str(path) in message
        assert "StatefulModule" in message and "__setstate__" in message and "\n" not in message
        assert "--trust-checkpoint" in info.value.hint

    @pytest.mark.parametrize(
        "make_pickle, named",
        [
            # the whole data.pkl: eval("...") at the top
            (
                lambda sentinel, _data: (
                    b"\x80\x02cbuiltins\neval\n"
                    + unicode_opcode(f"open({str(sentinel)!r}, 'w')")
                    + b"\x85R."
                ),
                "builtins.eval",
            ),
            # a valid archive, but os.system("touch ...") runs right after the root's NEWOBJ
            (
                lambda sentinel, data: data.replace(
                    b")\x81}(",
                    b")\x81cos\nsystem\n" + unicode_opcode(f"touch {sentinel}") + b"\x85R0}(",
                    1,
                ),
                "os.system",
            ),
        ],
        ids=["eval", "os.system"],
    )
    def test_other_globals_are_refused_and_never_run(self, archives, tmp_path, make_pickle, named):
        sentinel = tmp_path / "pwned"
        path = rewrite_data_pkl(
            archives["scripted"], tmp_path / "evil.pt", lambda data: make_pickle(sentinel, data)
        )
        with pytest.raises(CheckpointError) as info:
            read_torchscript_state_dict(path)
        assert not sentinel.exists()
        message = str(info.value)
        assert named in message and str(path) in message and "\n" not in message
        assert "--trust-checkpoint" in info.value.hint
        if named == "os.system":  # the payload works: an unpickler that lets it through runs it
            with zipfile.ZipFile(path) as archive:
                data = archive.read("scripted/data.pkl")
            with contextlib.suppress(Exception):  # it fails later, at the first storage
                LaxUnpickler(io.BytesIO(data)).load()
            assert sentinel.exists()


# -- files that are no archive, or corrupt ---------------------------------------------------


class TestBadArchives:
    def test_not_a_zip(self, tmp_path):
        path = tmp_path / "junk.pt"
        path.write_bytes(b"\x80\x02junk" * 10)
        with pytest.raises(CheckpointError, match=r"cannot read TorchScript archive .*not a zip"):
            read_torchscript_state_dict(path)

    def test_plain_torch_save_file(self, tmp_path):
        path = tmp_path / "state.pt"
        torch.save({"w": torch.ones(2)}, path)
        with pytest.raises(CheckpointError, match=r"holds no TorchScript module"):
            read_torchscript_state_dict(path)

    def test_storage_of_the_wrong_size(self, archives, tmp_path):
        path = tmp_path / "short.pt"
        with zipfile.ZipFile(archives["scripted"]) as old, zipfile.ZipFile(path, "w") as new:
            for name in old.namelist():
                data = old.read(name)
                new.writestr(name, data[:-4] if name == "scripted/data/0" else data)
        with pytest.raises(CheckpointError, match=r"scripted/data/0 holds \d+ bytes, expected"):
            read_torchscript_state_dict(path)

    def test_tensor_past_its_storage(self, archives, tmp_path):
        # the float16 parameter scale16 (5 elements, storage '0') claims 6
        path = rewrite_data_pkl(
            archives["scripted"],
            tmp_path / "past.pt",
            lambda data: data.replace(b"K\x00(K\x05t", b"K\x00(K\x06t", 1),
        )
        with pytest.raises(CheckpointError, match=r"reaches past its storage"):
            read_torchscript_state_dict(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(CheckpointError, match="not found"):
            read_torchscript_state_dict(tmp_path / "nope.pt")


def test_class_declarations_are_read_as_text():
    source = (
        "class Net(Module):\n"
        '  __parameters__ = ["weight", "0", ]\n'
        '  __buffers__ = ["running_mean", ]\n'
        "  weight : Tensor\n"
        "  def __setstate__(self: __torch__.Net, state: Tuple[Tensor]) -> NoneType:\n"
        "    return None\n"
        "class Box:\n"
        "  x : Tensor\n"
        "def helper(x: Tensor) -> Tensor:\n"
        '  __parameters__ = ["not", "a", "class", ]\n'
        "  return x\n"
    )
    classes = parse_classes(source)
    assert set(classes) == {"Net", "Box"}
    assert classes["Net"].is_module and classes["Net"].has_setstate
    assert classes["Net"].parameters == ("weight", "0")
    assert classes["Net"].buffers == ("running_mean",)
    assert not classes["Box"].is_module and classes["Box"].parameters == ()
