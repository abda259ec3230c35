from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from soundguide.encoders.clip_model import (
    CLIP,
    VIT_B_32,
    CLIPConfig,
    Linear,
    cast_each,
    is_text_key,
    linear,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources, which warns about itself
    import clip  # OpenAI's package: the reference architecture

VIT = CLIPConfig(32, 224, 2, 64, 32, 77, 49408, 64, 1, 2)
RESNET = CLIPConfig(64, 64, (1, 2, 1, 1), 32, None, 16, 500, 128, 2, 2)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference(config: CLIPConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = clip.model.CLIP(**dataclasses.asdict(config))
    model.initialize_parameters()
    if not config.is_vit:  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def ours_from(ref: torch.nn.Module) -> CLIP:
    model = CLIP(CLIPConfig.from_state_dict(ref.state_dict()))
    model.load_state_dict(ref.state_dict(), strict=True)
    return model.eval()


def tokens(config: CLIPConfig) -> torch.Tensor:
    # ids below the vocabulary size, the end-of-text token (the largest id) at different places
    t = torch.zeros(3, config.context_length, dtype=torch.long)
    t[0, :4] = torch.tensor([1, 7, 9, config.vocab_size - 1])
    t[1, :2] = torch.tensor([3, config.vocab_size - 1])
    t[2, :] = torch.randint(1, config.vocab_size - 1, (config.context_length,))
    t[2, -1] = config.vocab_size - 1
    return t


@pytest.mark.parametrize("config", [VIT, RESNET], ids=["vit", "resnet"])
class TestParityWithOpenAI:
    def test_keys_shapes_and_config(self, config):
        ref = reference(config)
        ours = CLIP(config)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in ref.state_dict().items()
        }
        assert CLIPConfig.from_state_dict(ref.state_dict()) == config

    def test_outputs(self, config):
        ref = reference(config)
        ours = ours_from(ref)
        size = config.image_resolution
        image = torch.randn(2, 3, size, size)
        t = tokens(config)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode_image(image), ref.encode_image(image))
            torch.testing.assert_close(ours.encode_text(t), ref.encode_text(t))
            for a, b in zip(ours(image, t), ref(image, t), strict=True):
                torch.testing.assert_close(a, b)

    def test_gradient_to_the_image(self, config):
        ref = reference(config)
        ours = ours_from(ref).requires_grad_(False)
        size = config.image_resolution
        image = torch.randn(1, 3, size, size, requires_grad=True)
        ours.encode_image(image).square().sum().backward()
        grad = image.grad.clone()
        image.grad = None
        ref.requires_grad_(False).encode_image(image).square().sum().backward()
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, image.grad)


def test_vit_b32_shapes():
    with torch.device("meta"):
        model = CLIP(VIT_B_32)
    params = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for p in model.visual.parameters())
    assert params == 151_277_313 and visual == 87_849_216  # OpenAI's ViT-B/32


def test_image_tower_alone_then_text():
    ref = reference(VIT)
    state = ref.state_dict()
    model = CLIP(VIT, text=False)
    assert not model.has_text
    assert all(not is_text_key(k) for k in model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if not is_text_key(k)})
    with pytest.raises(RuntimeError, match="no text tower"):
        model.encode_text(tokens(VIT))
    model.attach_text({f"module.{k}": v for k, v in state.items()})
    assert model.has_text
    t = tokens(VIT)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(t), ref.encode_text(t))
    model.release_text()
    assert not model.has_text and not any(is_text_key(k) for k in model.state_dict())


def test_attach_text_with_missing_weights_leaves_no_half_tower():
    model = CLIP(VIT, text=False)
    state = {k: v for k, v in reference(VIT).state_dict().items() if k != "text_projection"}
    with pytest.raises(RuntimeError, match="missing keys \\['text_projection'\\]"):
        model.attach_text(state)
    assert not model.has_text and not hasattr(model, "transformer")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_run_and_stay_close(dtype):
    ref = reference(VIT)
    model = ours_from(ref)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        full = model.encode_image(image)
        cast_each(model, dtype)
        assert model.dtype == dtype
        low = model.encode_image(image)
        text = model.encode_text(tokens(VIT))
    assert low.dtype == dtype and text.dtype == dtype
    cos = torch.nn.functional.cosine_similarity(low.float(), full, dim=-1)
    assert cos.min() > 0.99


def test_cast_each_keeps_integer_buffers():
    model = CLIP(RESNET)
    cast_each(model, torch.float16)
    assert model.visual.bn1.num_batches_tracked.dtype == torch.long
    assert model.visual.bn1.running_mean.dtype == torch.float16
    assert isinstance(model.visual.conv1.weight, torch.nn.Parameter)


def test_cast_each_copy_lets_mapped_sources_go(tmp_path, monkeypatch):
    from soundguide.encoders import clip_model

    model = CLIP(RESNET)
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    mapped = torch.load(path, mmap=True, weights_only=True)
    fresh = CLIP(RESNET)
    fresh.load_state_dict(mapped, assign=True)
    released = []
    real = clip_model.release_pages
    monkeypatch.setattr(clip_model, "release_pages", lambda t, m: released.append(real(t, m)))
    cast_each(fresh, torch.float32, copy=True)
    assert len(released) == len(model.state_dict())
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])  # the copies are intact
    released.clear()
    cast_each(fresh, torch.float32)  # no copy: nothing to let go
    assert released == []


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (1, 50, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_weight_first_equals_f_linear_with_gradients(shape, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 9, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(*shape[:-1], 9, dtype=torch.float64)
    got = linear(x, layer.weight, layer.bias)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    # a following layer takes the transposed result as it is
    second = Linear(9, 4).double()
    torch.testing.assert_close(
        second(got), torch.nn.functional.linear(expected, second.weight, second.bias)
    )


def test_linear_falls_back_for_a_vector_many_rows_and_mixed_dtypes():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(3)
    torch.testing.assert_close(linear(x, layer.weight, layer.bias), layer(x))
    many = torch.randn(4, 100, 3)  # 400 rows: a plain F.linear, contiguous
    got = linear(many, layer.weight, layer.bias)
    assert got.is_contiguous()
    torch.testing.assert_close(got, layer(many))
    assert linear(x.double(), layer.weight.double(), None).dtype == torch.float64
    with pytest.raises(RuntimeError):  # as F.linear: dtypes must agree
        linear(torch.randn(2, 3, dtype=torch.float64), layer.weight, layer.bias)
