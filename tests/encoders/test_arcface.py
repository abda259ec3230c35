from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from soundguide.core.errors import CheckpointError, ImageError
from soundguide.encoders.arcface import (
    ARCFACE_IR_SE50,
    ArcFaceIRSE50,
    face_crop,
    face_features,
    identity_loss,
    load_arcface,
)
from tests.factories import random_arcface

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "arcface_ir_se50.keys.json"


def manifest() -> list[tuple[str, list[int], str]]:
    return [(k, list(shape), dtype) for k, shape, dtype in json.loads(MANIFEST.read_text())]


def state_from_manifest(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in manifest():
        if dtype == "torch.int64":
            state[key] = torch.randint(0, 1000, shape, generator=g)
        else:
            state[key] = torch.rand(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def network() -> ArcFaceIRSE50:
    return random_arcface(0)


def faces(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g) * 2 - 1


class TestCheckpointFormat:
    def test_keys_shapes_and_dtypes_equal_the_manifest(self):
        state = ArcFaceIRSE50().state_dict()
        got = [(k, list(v.shape), str(v.dtype)) for k, v in state.items()]
        assert len(got) == 397
        assert got == manifest()

    def test_a_state_dict_built_from_the_manifest_loads_strictly(self):
        state = state_from_manifest()
        model = load_arcface(state)
        loaded = model.state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())

    def test_module_prefix_is_accepted(self, tmp_path, network):
        path = tmp_path / "model_ir_se50.pth"
        torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, path)
        model = load_arcface(path)
        x = faces(1)
        with torch.no_grad():
            torch.testing.assert_close(model(x), network(x))

    def test_wrong_keys_give_one_line_naming_them(self):
        state = state_from_manifest()
        del state["body.23.res_layer.5.fc2.weight"]
        state["head.kernel"] = torch.zeros(512, 10)
        state["input_layer.0.weight"] = torch.zeros(64, 1, 3, 3)
        with pytest.raises(CheckpointError) as info:
            load_arcface(state)
        message = str(info.value)
        assert "\n" not in message
        assert "missing keys body.23.res_layer.5.fc2.weight" in message
        assert "unexpected keys head.kernel" in message
        assert "input_layer.0.weight (64, 1, 3, 3) vs (64, 3, 3, 3)" in message

    def test_other_networks_checkpoint_is_refused(self, tmp_path):
        torch.save(
            {"g_ema": {"x": torch.zeros(1)}, "latent_avg": torch.zeros(3)}, tmp_path / "g.pt"
        )
        with pytest.raises(CheckpointError, match="not a state dict") as info:
            load_arcface(tmp_path / "g.pt")
        assert "\n" not in str(info.value)

    def test_garbage_and_missing_files(self, tmp_path):
        (tmp_path / "x.pth").write_bytes(b"garbage" * 100)
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_arcface(tmp_path / "x.pth")
        with pytest.raises(CheckpointError, match="checkpoint not found"):
            load_arcface(tmp_path / "absent.pth")

    def test_known_weights_entry(self):
        assert ARCFACE_IR_SE50.name == "arcface-ir-se50"
        assert ARCFACE_IR_SE50.filename == "model_ir_se50.pth"
        assert ARCFACE_IR_SE50.url == (
            "https://drive.usercontent.google.com/download?id=1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"
            "&export=download&confirm=t"
        )
        assert ARCFACE_IR_SE50.license == "MIT"


class TestNetwork:
    def test_output_is_a_unit_embedding_per_face(self, network):
        with torch.no_grad():
            out = network(faces(2))
        assert out.shape == (2, 512)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
        assert (out[0] @ out[1]).abs() < 0.99  # different faces, different embeddings

    def test_input_dtype_is_kept(self, network):
        x = faces(1, seed=3)
        with torch.no_grad():
            out = network(x.double())
        assert out.dtype == torch.float64
        with torch.no_grad():
            torch.testing.assert_close(out.float(), network(x))

    def test_wrong_input_size_is_an_image_error(self, network):
        with pytest.raises(ImageError, match=r"\(n, 3, 112, 112\), got \(1, 3, 128, 128\)"):
            network(torch.zeros(1, 3, 128, 128))


def original_face_crop(image: torch.Tensor) -> torch.Tensor:
    """The original code's ops, written out: pool to 256 if the height differs, crop, pool."""
    if image.shape[2] != 256:
        image = torch.nn.AdaptiveAvgPool2d((256, 256))(image)
    image = image[:, :, 35:223, 32:220]
    return torch.nn.AdaptiveAvgPool2d((112, 112))(image)


class TestFaceCrop:
    @pytest.mark.parametrize("size", [256, 1024, 64])
    def test_equals_the_original_pool_crop_pool(self, size):
        image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        out = face_crop(image)
        assert out.shape == (2, 3, 112, 112)
        torch.testing.assert_close(out, original_face_crop(image), rtol=0, atol=1e-6)

    def test_pooling_to_256_is_block_mean_down_and_replication_up(self):
        g = torch.Generator().manual_seed(0)
        big = torch.rand(1, 3, 1024, 1024, generator=g)
        small = torch.rand(1, 3, 64, 64, generator=g)
        down = big.view(1, 3, 256, 4, 256, 4).mean(dim=(3, 5))
        up = small.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
        torch.testing.assert_close(face_crop(big), face_crop(down), rtol=0, atol=1e-6)
        torch.testing.assert_close(face_crop(small), face_crop(up), rtol=0, atol=1e-6)

    def test_crop_window_is_rows_35_to_223_and_columns_32_to_220(self):
        image = torch.zeros(1, 3, 256, 256, requires_grad=True)
        face_crop(image).sum().backward()
        inside = torch.zeros(256, 256, dtype=torch.bool)
        inside[35:223, 32:220] = True
        grad = image.grad[0, 0]
        assert (grad[inside] > 0).all()
        assert (grad[~inside] == 0).all()

    @pytest.mark.parametrize(
        "bad", [torch.zeros(3, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64).long()]
    )
    def test_bad_input_is_an_image_error(self, bad):
        with pytest.raises(ImageError, match="face_crop expects"):
            face_crop(bad)


class TestIdentityLoss:
    def test_zero_for_the_same_face_and_one_minus_cos_otherwise(self):
        g = torch.Generator().manual_seed(0)
        a = F.normalize(torch.randn(3, 512, generator=g), dim=1)
        b = F.normalize(torch.randn(3, 512, generator=g), dim=1)
        loss = identity_loss(a, b)
        assert loss.shape == (3,)
        torch.testing.assert_close(loss, 1 - (a * b).sum(dim=1))
        torch.testing.assert_close(identity_loss(a, a), torch.zeros(3), atol=1e-6, rtol=0)
        torch.testing.assert_close(identity_loss(a, b[0]), 1 - a @ b[0])

    def test_gradient_flows_to_the_edited_image(self, network):
        g = torch.Generator().manual_seed(1)
        source = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        edited = (source + 0.2 * torch.randn(1, 3, 64, 64, generator=g)).requires_grad_(True)
        with torch.no_grad():
            source_features = face_features(network, source)
        loss = identity_loss(face_features(network, edited), source_features)
        assert loss.item() > 0
        loss.sum().backward()
        assert edited.grad is not None
        assert torch.isfinite(edited.grad).all()
        assert edited.grad.abs().sum() > 0
