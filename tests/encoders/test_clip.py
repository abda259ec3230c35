from __future__ import annotations

import math
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from soundguide.core.errors import CheckpointError, ConfigError, ImageError, WeightsError
from soundguide.encoders.clip import (
    CLIP_MEAN,
    CLIP_MODELS,
    CLIP_STD,
    VIT_B_32,
    CLIPEncoder,
    attach_text,
    build_clip,
    clip_config,
    clip_preprocess,
    has_text,
    is_text_key,
    load_clip,
    paper_pool_matrix,
    paper_preprocess,
    random_cutouts,
    read_clip_state,
    release_text,
    token_count,
    tokenize,
)
from tests.factories import TINY_CLIP, tiny_clip_reference

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports pkg_resources, which warns about itself
    import clip  # OpenAI's package: the architecture, and the reference for its outputs

RESNET_CLIP = {
    "embed_dim": 64,
    "image_resolution": 64,
    "vision_layers": (1, 2, 1, 1),
    "vision_width": 32,
    "vision_patch_size": None,
    "context_length": 16,
    "vocab_size": 500,
    "transformer_width": 128,
    "transformer_heads": 2,
    "transformer_layers": 2,
}
"""A modified-ResNet CLIP (the RN50 family's architecture), tiny."""

RN50 = {**VIT_B_32, "embed_dim": 1024, "vision_layers": (3, 4, 6, 3), "vision_width": 64}
RN50["vision_patch_size"] = None


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The machine is offline: a real download attempt must never be made (it could hang)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """OpenAI's model with random weights, built the plain way (``clip.model.CLIP``)."""
    return tiny_clip_reference()


@pytest.fixture(scope="module")
def model(reference) -> nn.Module:
    """soundguide's build of the reference's weights."""
    return build_clip(reference.state_dict())


def assert_relative(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """``got`` equals ``expected`` within ``tolerance`` of its largest magnitude."""
    assert got.shape == expected.shape and got.dtype == expected.dtype
    error = (got - expected).abs().max() / expected.abs().max()
    assert error <= tolerance, f"relative error {float(error):.2e}"


def tokens(config: dict) -> torch.Tensor:
    """Token ids below the vocabulary size, the end token (the largest id) at different places."""
    length, top = config["context_length"], config["vocab_size"] - 1
    t = torch.zeros(3, length, dtype=torch.long)
    t[0, :4] = torch.tensor([1, 7, 9, top])
    t[1, :2] = torch.tensor([3, top])
    t[2, :] = torch.randint(1, top, (length,), generator=torch.Generator().manual_seed(0))
    t[2, -1] = top
    return t


def jit_load(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        return torch.jit.load(str(path), map_location="cpu")


def save_traced(reference: nn.Module, path):
    """``reference`` traced and saved as OpenAI distributes CLIP: a TorchScript archive
    (with metadata integers beside the weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            reference, (torch.zeros(1, 3, 224, 224), clip.tokenize(["a"])), check_trace=False
        )
        traced.save(str(path))
    return path


class DoublesOnLoad(nn.Module):
    """A module whose TorchScript ``__setstate__`` has an effect: it doubles its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0] * 2
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def literal_paper(image: torch.Tensor, size: int) -> torch.Tensor:
    """The original code, verbatim in behaviour: Upsample(x7, nearest) then AvgPool2d(size // 32)."""
    return nn.AvgPool2d(kernel_size=size // 32)(nn.Upsample(scale_factor=7)(image))


def detailed_picture(height: int, width: int) -> torch.Tensor:
    """A photograph-like 8-bit picture (3, H, W): smooth shading, a sharp disc, stripes, texture."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    shade = torch.stack([xx, yy, 1 - xx * yy])
    disc = ((xx - 0.4) ** 2 + (yy - 0.5) ** 2 < 0.08).float()
    stripes = (torch.sin(xx * width / 3) > 0).float() * (yy > 0.7).float()
    texture = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(0))
    texture = nn.functional.interpolate(texture, size=(height, width), mode="bilinear")[0]
    x = 0.5 * shade + 0.3 * disc + 0.2 * stripes + 0.2 * texture
    return (x / x.amax() * 255).round().to(torch.uint8)


class TestPaperPreprocess:
    @pytest.mark.parametrize("size", [32, 64, 96, 256])
    def test_equals_upsample_then_pool(self, size):
        image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 1.3
        image.requires_grad_(True)
        expected = literal_paper(image, size)
        got = paper_preprocess(image)
        assert got.shape == expected.shape == (2, 3, 224, 224)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
        (grad_expected,) = torch.autograd.grad((expected * weight).sum(), image)
        (grad_got,) = torch.autograd.grad((got * weight).sum(), image)
        # a gradient pixel sums up to 49 pooled terms: float32 rounding is ~1e-6 of that
        torch.testing.assert_close(grad_got, grad_expected, atol=1e-5, rtol=1e-5)

    def test_non_square_and_explicit_kernel(self):
        image = torch.randn(1, 3, 40, 72)
        expected = nn.AvgPool2d(3)(nn.Upsample(scale_factor=7)(image))
        torch.testing.assert_close(paper_preprocess(image, kernel=3), expected, atol=1e-5, rtol=0)

    @pytest.mark.parametrize(("size", "kernel"), [(256, 8), (1024, 32), (64, 2), (100, 3)])
    def test_matrix_is_sparse_and_averaging(self, size, kernel):
        matrix = paper_pool_matrix(size, kernel, dtype=torch.float64)
        assert matrix.shape == (size * 7 // kernel, size)
        torch.testing.assert_close(
            matrix.sum(dim=1), torch.ones(matrix.shape[0], dtype=torch.float64)
        )
        assert int((matrix > 0).sum(dim=1).max()) <= math.ceil(kernel / 7) + 1

    def test_unclamped_and_unnormalized(self):
        image = torch.full((1, 3, 64, 64), 1.7)
        torch.testing.assert_close(paper_preprocess(image), torch.full((1, 3, 224, 224), 1.7))

    def test_too_small(self):
        with pytest.raises(ImageError, match="at least 32 px"):
            paper_preprocess(torch.zeros(1, 3, 16, 16))


class TestClipPreprocess:
    @pytest.mark.parametrize(("height", "width"), [(256, 256), (1024, 1024), (300, 400), (64, 64)])
    def test_close_to_clips_own_pil_transform(self, height, width):
        from PIL import Image

        coarse = torch.rand(
            1, 3, height // 16, width // 16, generator=torch.Generator().manual_seed(0)
        )
        smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
        pixels = (smooth * 255).round().to(torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = clip.clip._transform(224)(
                Image.fromarray(pixels[0].permute(1, 2, 0).numpy())
            )
        got = clip_preprocess(pixels.float() / 255 * 2 - 1, 224)[0]
        assert got.shape == (3, 224, 224)
        # PIL rounds its output to 8 bits: one level is 1 / 255 / 0.26 = 0.015 here.
        assert (got - expected).abs().max() < 0.03

    @pytest.mark.parametrize(
        ("height", "width"), [(256, 256), (512, 512), (1024, 1024), (300, 400)]
    )
    def test_detailed_pictures_and_kornias_gaussian_antialiasing(self, height, width):
        """Edges and fine texture: torch's antialiased bicubic (PIL's filter) stays within
        about a level of PIL on average; kornia's ``resize(antialias=True)``, a Gaussian blur
        then bicubic, is at least twice as far (why ``clip_preprocess`` does not use it)."""
        import kornia
        from PIL import Image

        pixels = detailed_picture(height, width)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = clip.clip._transform(224)(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
        x = pixels[None].float() / 255
        got = clip_preprocess(x * 2 - 1, 224)[0]
        level = 1 / 255 / min(CLIP_STD)
        assert (got - expected).abs().mean() < 0.5 * level
        assert (got - expected).abs().max() < 3 * level
        resized = kornia.geometry.transform.resize(x, 224, interpolation="bicubic", antialias=True)
        top, left = (resized.shape[-2] - 224) // 2, (resized.shape[-1] - 224) // 2
        crop = resized[0, :, top : top + 224, left : left + 224]
        theirs = kornia.enhance.normalize(
            crop[None], torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        )
        assert (theirs[0] - expected).abs().mean() > 1.5 * (got - expected).abs().mean()

    def test_range(self):
        coarse = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        image = nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear")
        out = clip_preprocess(image, 224)
        assert out.shape == (2, 3, 224, 224)
        low = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        high = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        margin = 0.02  # bicubic may overshoot a little
        assert (out.amin(dim=(0, 2, 3)) >= low - margin).all()
        assert (out.amax(dim=(0, 2, 3)) <= high + margin).all()
        flat = clip_preprocess(torch.zeros(1, 3, 256, 256), 224)
        torch.testing.assert_close(
            flat[0, :, 0, 0], (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        )


class TestCLIPEncoder:
    def test_image_embedding_and_gradient(self, model):
        encoder = CLIPEncoder(model)
        assert encoder.embed_dim == 32 and encoder.input_resolution == 224
        image = torch.randn(2, 3, 256, 256, requires_grad=True)
        out = encoder.encode_image(image)
        assert out.shape == (2, 32) and out.dtype == torch.float32
        (1 - nn.functional.cosine_similarity(out, torch.ones(2, 32))).sum().backward()
        assert image.grad is not None and image.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.parameters())

    def test_paper_mode_feeds_the_literal_preprocessing(self, model):
        encoder = CLIPEncoder(model, preprocess="paper")
        image = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(
                encoder.encode_image(image),
                model.encode_image(literal_paper(image, 64)),
                atol=1e-4,
                rtol=0,
            )

    def test_clip_mode_any_size(self, model):
        encoder = CLIPEncoder(model, preprocess="clip")
        with torch.no_grad():
            assert encoder.encode_image(torch.randn(3, 3, 100, 150)).shape == (3, 32)

    def test_paper_mode_rejects_sizes_that_miss_224(self, model):
        with pytest.raises(ImageError, match="100x100 image to 233x233"):
            CLIPEncoder(model).encode_image(torch.zeros(1, 3, 100, 100))

    @pytest.mark.parametrize(
        "bad",
        [
            torch.zeros(3, 64, 64),
            torch.zeros(1, 1, 64, 64),
            torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
        ],
    )
    def test_bad_image(self, model, bad):
        with pytest.raises(ImageError, match="CLIP expects"):
            CLIPEncoder(model).encode_image(bad)

    def test_augmentation_is_off_by_default(self, model):
        encoder = CLIPEncoder(model)
        image = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            first, second = encoder.encode_image(image), encoder.encode_image(image)
            plain = model.encode_image(paper_preprocess(image))
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(first, plain, atol=1e-5, rtol=0)

    def test_augmentation_is_seeded(self, model):
        image = torch.randn(2, 3, 64, 64)

        def embed(seed: int, calls: int = 1) -> list[torch.Tensor]:
            encoder = CLIPEncoder(model, cutouts=3, seed=seed)
            with torch.no_grad():
                return [encoder.encode_image(image) for _ in range(calls)]

        a0, a1 = embed(0, calls=2)
        (b0,) = embed(0)
        (c0,) = embed(1)
        assert a0.shape == (2, 32)
        torch.testing.assert_close(a0, b0, rtol=0, atol=0)  # same seed, same cutouts
        assert not torch.allclose(a0, c0)  # another seed
        assert not torch.allclose(a0, a1)  # fresh cutouts every step

    def test_cutouts_are_differentiable_crops(self):
        image = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1).requires_grad_(True)
        out = random_cutouts(image, 5, scale=(1.0, 1.0), degrees=0.0)
        torch.testing.assert_close(
            out, image.detach().repeat(5, 1, 1, 1)
        )  # full, unrotated: identity
        out.sum().backward()
        assert image.grad is not None
        small = random_cutouts(
            image.detach(), 4, scale=(0.5, 0.5), generator=torch.Generator().manual_seed(0)
        )
        assert small.shape == (4, 3, 4, 4)

    def test_cutout_side_is_the_scale_fraction(self):
        ramp = torch.arange(64.0).expand(1, 3, 64, 64)  # each pixel's value is its column
        g = torch.Generator().manual_seed(0)
        out = random_cutouts(ramp, 6, scale=(0.5, 0.5), degrees=0.0, generator=g)
        step = out[..., 4:60, 5:60] - out[..., 4:60, 4:59]
        torch.testing.assert_close(step, torch.full_like(step, 0.5), atol=1e-3, rtol=0)  # 2x zoom
        assert out.min() >= 0 and out.max() <= 63
        assert len({round(float(c[0, 32, 32]), 3) for c in out}) > 1  # shifted differently

    def test_cutouts_leave_the_global_rng_alone(self, model):
        image = torch.randn(2, 3, 64, 64)
        before = torch.get_rng_state()
        with torch.no_grad():
            CLIPEncoder(model, cutouts=3).encode_image(image)
        assert torch.equal(torch.get_rng_state(), before)

    def test_bad_options(self, model):
        with pytest.raises(ConfigError, match="unknown CLIP preprocessing 'fancy'"):
            CLIPEncoder(model, preprocess="fancy")
        with pytest.raises(ConfigError, match="cutouts"):
            CLIPEncoder(model, cutouts=-1)


class TestText:
    def test_shapes(self, model):
        encoder = CLIPEncoder(model)
        with torch.no_grad():
            assert encoder.encode_text(["the sound of rain", "a dog barking"]).shape == (2, 32)
            assert encoder.encode_text("thunder").shape == (1, 32)

    def test_prompt_too_long(self, model):
        long = "the sound of heavy rain on a tin roof " * 12
        with pytest.raises(ConfigError) as info:
            CLIPEncoder(model).encode_text(["ok", long])
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("text prompt 2 ('the sound of heavy rain")
        assert "is 110 tokens long; CLIP takes at most 77" in message

    @pytest.mark.parametrize(
        ("prompts", "match"), [([], "no text prompts"), (["rain", " "], "prompt 2 is empty")]
    )
    def test_bad_prompts(self, model, prompts, match):
        with pytest.raises(ConfigError, match=match):
            CLIPEncoder(model).encode_text(prompts)


class TestLoadClip:
    def test_unknown_name(self, tmp_path):
        with pytest.raises(
            WeightsError, match=r"unknown CLIP model 'ViT-B/33'.*did you mean 'ViT-B/32'"
        ):
            load_clip("ViT-B/33", download_root=tmp_path)

    def test_offline_download_fails_in_one_line(self, tmp_path):
        # urlopen is patched to fail (autouse fixture)
        with pytest.raises(WeightsError) as info:
            load_clip("ViT-B/32", download_root=tmp_path / "cache")
        message = str(info.value)
        assert "\n" not in message
        assert "'ViT-B/32'" in message and str(tmp_path / "cache" / "ViT-B-32.pt") in message
        assert "network disabled" in message
        assert "local CLIP file" in info.value.hint
        assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written is left

    def test_download_is_checked_and_then_cached(self, tmp_path, monkeypatch, reference):
        import hashlib
        import io

        source = tmp_path / "tiny.pt"
        torch.save(reference.state_dict(), source)
        payload = source.read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        served = []

        class Response(io.BytesIO):
            headers = {"Content-Length": str(len(payload))}

        def serve(url, timeout):
            served.append(url)
            return Response(payload)

        monkeypatch.setattr(urllib.request, "urlopen", serve)
        monkeypatch.setitem(CLIP_MODELS, "tiny", f"{digest}/tiny-clip.pt")
        root = tmp_path / "cache"
        loaded = load_clip("tiny", download_root=root)
        assert served == [f"https://openaipublic.azureedge.net/clip/models/{digest}/tiny-clip.pt"]
        assert (root / "tiny-clip.pt").read_bytes() == payload
        load_clip("tiny", download_root=root)
        assert len(served) == 1  # the cached copy matches its sha256: no second download
        image = torch.rand(1, 3, 224, 224) * 2 - 1
        torch.testing.assert_close(loaded.encode_image(image), reference.encode_image(image))

        monkeypatch.setitem(CLIP_MODELS, "tiny", f"{'0' * 64}/other-clip.pt")
        with pytest.raises(WeightsError, match="sha256 mismatch for CLIP model 'tiny'"):
            load_clip("tiny", download_root=root)
        assert not (root / "other-clip.pt").exists()

    def test_state_dict_file_keeps_float32_exactly(self, tmp_path, reference):
        path = tmp_path / "tiny.pt"
        torch.save(reference.state_dict(), path)
        loaded = load_clip(path)
        assert loaded.dtype == torch.float32 and not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        ours = loaded.state_dict()
        assert set(ours) == set(reference.state_dict())
        for key, value in reference.state_dict().items():
            assert torch.equal(value, ours[key]), key  # clip.model.build_model rounds to float16

    def test_torchscript_archive(self, tmp_path, reference):
        path = save_traced(reference, tmp_path / "tiny-jit.pt")
        for lazy in (False, True):
            encoder = CLIPEncoder.load(path, preprocess="clip", lazy_text=lazy)
            assert isinstance(encoder.model, clip.model.CLIP)
            assert has_text(encoder.model) is not lazy
            image = torch.rand(1, 3, 224, 224) * 2 - 1
            with torch.no_grad():
                torch.testing.assert_close(
                    encoder.encode_image(image),
                    reference.encode_image(clip_preprocess(image, 224)),
                )
                torch.testing.assert_close(
                    encoder.encode_text("a dog"), reference.encode_text(clip.tokenize("a dog"))
                )

    def test_torchscript_archive_is_read_without_running_it(self, tmp_path, reference, monkeypatch):
        path = save_traced(reference, tmp_path / "tiny-jit.pt")
        expected = dict(jit_load(path).state_dict())

        def run_code(*args, **kwargs):
            raise AssertionError("torch.jit.load runs the archive's code")

        monkeypatch.setattr(torch.jit, "load", run_code)
        state = read_clip_state(path)  # trust=False
        assert list(state) == list(expected)
        assert all(torch.equal(state[k], v) for k, v in expected.items())
        loaded = load_clip(path)
        image = torch.rand(2, 3, 224, 224) * 2 - 1
        tokens = clip.tokenize(["a dog", "rain on a roof"])
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_image(image), reference.encode_image(image))
            torch.testing.assert_close(loaded.encode_text(tokens), reference.encode_text(tokens))

    def test_archive_restoring_itself_with_code_needs_trust(self, tmp_path):
        module = DoublesOnLoad()
        path = tmp_path / "code.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(module).save(str(path))
        with pytest.raises(CheckpointError) as info:
            read_clip_state(path)
        assert "__setstate__" in str(info.value) and str(path) in str(info.value)
        assert (
            info.value.hint
            == "if you trust this file, pass --trust-checkpoint (trust=True in Python)"
        )
        # trusted, torch.jit.load reads it, running its code (which doubles the weight)
        state = read_clip_state(path, trust=True)
        assert torch.equal(state["weight"], 2 * module.weight.detach())

    def test_half_precision_on_request(self, tmp_path, model):
        path = tmp_path / "tiny.pt"
        torch.save(model.state_dict(), path)
        assert load_clip(path, dtype=torch.bfloat16).dtype == torch.bfloat16
        with pytest.raises(ConfigError, match="dtype"):
            load_clip(path, dtype=torch.float64)

    def test_not_clip(self, tmp_path):
        torch.save({"conv.weight": torch.zeros(3, 1, 3, 3)}, tmp_path / "audio.pt")
        with pytest.raises(CheckpointError, match="is not a CLIP model"):
            load_clip(tmp_path / "audio.pt")
        (tmp_path / "junk.pt").write_bytes(np.random.default_rng(0).bytes(1000))
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_clip(tmp_path / "junk.pt")

    def test_wrong_shapes(self, model):
        state = dict(model.state_dict())
        state["ln_final.weight"] = torch.zeros(128)  # width 128 implies 2 heads: nothing fits
        with pytest.raises(CheckpointError, match="does not fit a CLIP architecture"):
            build_clip(state)


def test_release_text_frees_the_text_tower_and_keeps_images(reference, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), path)
    encoder = CLIPEncoder(load_clip(path))
    image = torch.rand(1, 3, 224, 224) * 2 - 1
    before = encoder.encode_image(image)
    text_params = sum(
        p.numel() for n, p in encoder.model.named_parameters() if not n.startswith("visual.")
    )
    assert text_params > 0
    encoder.after_targets()
    assert not any(
        not n.startswith("visual.") and n != "logit_scale"
        for n, _ in encoder.model.named_parameters()
    )
    torch.testing.assert_close(encoder.encode_image(image), before)
    assert encoder.embed_dim == 32 and encoder.context_length == 77
    with pytest.raises(RuntimeError, match="no text tower"):
        encoder.encode_text("a dog")  # built from a model, it has nowhere to reload from


def test_lazy_text_is_read_only_when_text_is_encoded(reference, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), path)
    encoder = CLIPEncoder.load(path, lazy_text=True)
    assert not has_text(encoder.model)
    assert all(n.startswith("visual.") or n == "logit_scale" for n in encoder.model.state_dict())
    image = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.encode_image(image), reference.encode_image(paper_preprocess(image))
        )
    assert encoder.embed_dim == 32 and encoder.context_length == 77
    expected = reference.encode_text(clip.tokenize(["rain", "a dog barking"]))
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_text(["rain", "a dog barking"]), expected)
        assert has_text(encoder.model)
        assert not any(p.requires_grad for p in encoder.model.parameters())
        encoder.release_text()
        assert not has_text(encoder.model)
        torch.testing.assert_close(encoder.encode_text(["rain", "a dog barking"]), expected)


def test_lazy_text_needs_no_text_weights_until_asked(reference, tmp_path):
    path = tmp_path / "image-only.pt"
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("visual.")}
    torch.save(state, path)
    encoder = CLIPEncoder.load(path, lazy_text=True)
    encoder.encode_image(torch.zeros(1, 3, 224, 224))
    with pytest.raises(CheckpointError, match="cannot build CLIP's text tower: .*missing"):
        encoder.encode_text("a dog")
    assert not has_text(encoder.model)
    with pytest.raises(CheckpointError, match="is not a CLIP model"):
        load_clip(path)  # the whole model needs the text tower


class TestTokenize:
    PROMPTS = [
        "a photo of a dog",
        "The sound of RAIN on a tin roof.",
        "HTML &amp; entities &lt;b&gt;",
        "café crème 🔥 日本語",
        "don't stop, it's 3 o'clock",
    ]

    def test_ids_are_clips(self):
        ours = tokenize(self.PROMPTS)
        assert ours.dtype == torch.int64 and ours.shape == (len(self.PROMPTS), 77)
        assert torch.equal(ours, clip.tokenize(self.PROMPTS))
        assert torch.equal(tokenize("a dog", context_length=8), clip.tokenize("a dog", 8))

    def test_token_count_is_where_the_end_token_lands(self):
        ids = clip.tokenize(self.PROMPTS)
        for text, row in zip(self.PROMPTS, ids, strict=True):
            assert token_count(text) == int(row.argmax()) + 1

    def test_too_long_names_the_prompt_in_one_line(self):
        long = "the sound of heavy rain\non a tin roof " * 12
        with pytest.raises(ConfigError) as info:
            tokenize(["ok", long])
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("text prompt 2 ('the sound of heavy rain\\non")
        assert f"({long[:57] + '...'!r})" in message  # shortened to 60 characters
        assert "is 110 tokens long; CLIP takes at most 77" in message
        assert info.value.hint == "shorten the prompt"
        truncated = tokenize(["ok", long], truncate=True)
        assert torch.equal(truncated, clip.tokenize(["ok", long], truncate=True))


@pytest.mark.parametrize("config", [TINY_CLIP, RESNET_CLIP], ids=["vit", "resnet"])
class TestParityWithClipsModel:
    """soundguide's build against ``clip.model.CLIP`` built the plain way, same weights."""

    def test_state_dict_and_config(self, config):
        reference = tiny_clip_reference(**config)
        ours = build_clip(reference.state_dict())
        assert isinstance(ours, clip.model.CLIP)
        assert clip_config(reference.state_dict()) == config
        expected = reference.state_dict()
        assert list(ours.state_dict()) == list(expected)
        assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())

    def test_outputs(self, config):
        reference = tiny_clip_reference(**config)
        ours = build_clip(reference.state_dict())
        size = config["image_resolution"]
        image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        t = tokens(config)
        with torch.no_grad():
            assert_relative(ours.encode_image(image), reference.encode_image(image))
            assert_relative(ours.encode_text(t), reference.encode_text(t))
            for a, b in zip(ours(image, t), reference(image, t), strict=True):
                assert_relative(a, b)

    def test_gradient_to_the_image(self, config):
        reference = tiny_clip_reference(**config)
        ours = build_clip(reference.state_dict())
        size = config["image_resolution"]
        image = torch.randn(1, 3, size, size, requires_grad=True)
        (grad,) = torch.autograd.grad(ours.encode_image(image).square().sum(), image)
        (expected,) = torch.autograd.grad(reference.encode_image(image).square().sum(), image)
        assert grad.abs().sum() > 0
        assert_relative(grad, expected)

    def test_image_tower_alone_then_text(self, config):
        reference = tiny_clip_reference(**config)
        model = build_clip(reference.state_dict(), text=False)
        assert not has_text(model)
        assert all(not is_text_key(k) for k in model.state_dict())
        t = tokens(config)
        attach_text(model, {f"module.{k}": v for k, v in reference.state_dict().items()})
        assert has_text(model) and model.context_length == config["context_length"]
        assert not any(p.requires_grad for p in model.parameters())
        with torch.no_grad():
            assert_relative(model.encode_text(t), reference.encode_text(t))
        release_text(model)
        assert not has_text(model) and not any(is_text_key(k) for k in model.state_dict())


@pytest.mark.parametrize("config", [VIT_B_32, RN50], ids=["ViT-B/32", "RN50"])
def test_config_of_the_released_shapes(config):
    with torch.device("meta"):  # the full-size shapes without their memory
        reference = clip.model.CLIP(**config)
    assert clip_config(reference.state_dict()) == config
    if config is VIT_B_32:
        params = sum(p.numel() for p in reference.parameters())
        assert params == 151_277_313  # OpenAI's ViT-B/32


def test_every_text_block_gets_a_real_causal_mask(reference):
    causal = torch.full((77, 77), float("-inf")).triu(1)
    model = build_clip(reference.state_dict())
    lazy = build_clip(reference.state_dict(), text=False)
    attach_text(lazy, reference.state_dict())
    for m in (model, lazy):
        blocks = list(m.transformer.resblocks)
        assert len(blocks) == TINY_CLIP["transformer_layers"]
        for block in blocks:
            assert block.attn_mask.device.type == "cpu"
            assert torch.equal(block.attn_mask, causal)
        assert all(block.attn_mask is None for block in m.visual.transformer.resblocks)


def test_building_leaves_torch_as_it_was(reference, tmp_path):
    """No patched ``torch.nn.init``, no draw from the global RNG, no default device left set."""
    path = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), path)
    init = {name: getattr(nn.init, name) for name in dir(nn.init) if not name.startswith("_")}
    before = torch.get_rng_state()
    model = build_clip(reference.state_dict())
    encoder = CLIPEncoder.load(path, lazy_text=True, preprocess="clip")
    encoder.encode_text("a dog")
    encoder.release_text()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(getattr(nn.init, name) is function for name, function in init.items())
    assert torch.empty(1).device.type == "cpu"
    assert model.visual.proj.device.type == "cpu"


def test_weights_are_copied_not_shared(reference):
    state = reference.state_dict()
    model = build_clip(state)
    assert model.visual.proj.data_ptr() != state["visual.proj"].data_ptr()
    assert model.text_projection.data_ptr() != state["text_projection"].data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_run_and_stay_close(reference, dtype):
    model = build_clip(reference.state_dict(), dtype=dtype)
    assert model.dtype == dtype and model.visual.proj.dtype == dtype
    assert model.visual.ln_pre.weight.dtype == torch.float32  # as clip.model.convert_weights
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        low = model.encode_image(image)
        text = model.encode_text(tokens(TINY_CLIP))
        full = reference.encode_image(image)
    assert low.dtype == dtype and text.dtype == dtype
    assert nn.functional.cosine_similarity(low.float(), full, dim=-1).min() > 0.99


def test_attach_text_with_missing_weights_leaves_no_half_tower(reference):
    model = build_clip(reference.state_dict(), text=False)
    state = {k: v for k, v in reference.state_dict().items() if k != "text_projection"}
    with pytest.raises(CheckpointError, match=r"missing keys \['text_projection'\]"):
        attach_text(model, state)
    state = {
        k: v for k, v in reference.state_dict().items() if k != "transformer.resblocks.1.ln_2.bias"
    }
    with pytest.raises(CheckpointError, match="transformer.resblocks.1.ln_2.bias"):
        attach_text(model, state)
    assert not has_text(model) and not hasattr(model, "transformer")
