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
    CLIP_STD,
    CLIPEncoder,
    _import_clip,
    build_clip,
    clip_preprocess,
    load_clip,
    paper_pool_matrix,
    paper_preprocess,
    random_cutouts,
)

clip = _import_clip()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small ops on a shared 2-core machine run far faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The machine is offline: a real download attempt must never be made (it could hang)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def tiny_clip(seed: int = 0) -> nn.Module:
    """A ViT CLIP small enough for CPU tests that still takes 224 px input (7x7 patches).

    Widths are multiples of 64 because ``clip.model.build_model`` infers heads as width // 64.
    """
    torch.manual_seed(seed)
    model = clip.model.CLIP(
        embed_dim=32,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_clip()


def literal_paper(image: torch.Tensor, size: int) -> torch.Tensor:
    """The original code, verbatim in behaviour: Upsample(x7, nearest) then AvgPool2d(size // 32)."""
    return nn.AvgPool2d(kernel_size=size // 32)(nn.Upsample(scale_factor=7)(image))


class TestPaperPreprocess:
    @pytest.mark.parametrize("size", [32, 64, 96, 256])
    def test_equals_upsample_then_pool(self, size):
        image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 1.3
        image.requires_grad_(True)
        expected = literal_paper(image, size)
        got = paper_preprocess(image)
        assert got.shape == expected.shape == (2, 3, 224, 224)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        weight = torch.randn_like(expected)
        (grad_expected,) = torch.autograd.grad((expected * weight).sum(), image)
        (grad_got,) = torch.autograd.grad((got * weight).sum(), image)
        torch.testing.assert_close(grad_got, grad_expected, atol=1e-5, rtol=0)

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

    def test_offline_download_fails_in_one_line(self, tmp_path, monkeypatch):
        calls = []

        def offline(url, root):
            calls.append((url, root))
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

        monkeypatch.setattr(clip.clip, "_download", offline)
        with pytest.raises(WeightsError) as info:
            load_clip("ViT-B/32", download_root=tmp_path / "cache")
        message = str(info.value)
        assert "\n" not in message
        assert "'ViT-B/32'" in message and str(tmp_path / "cache") in message
        assert "name resolution" in message
        assert "local CLIP file" in info.value.hint
        assert calls and calls[0][1] == str(tmp_path / "cache")

    def test_offline_without_patching_the_downloader(self, tmp_path):
        # urlopen is patched to fail (autouse fixture): clip's own downloader meets it.
        with pytest.raises(WeightsError, match="cannot load CLIP model 'RN50'"):
            load_clip("RN50", download_root=tmp_path)

    def test_state_dict_file_keeps_float32_exactly(self, tmp_path, model):
        path = tmp_path / "tiny.pt"
        torch.save(model.state_dict(), path)
        loaded = load_clip(path)
        assert loaded.dtype == torch.float32 and not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        for (key, a), b in zip(
            model.state_dict().items(), loaded.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), key  # build_model alone rounds through float16

    def test_torchscript_archive(self, tmp_path, model):
        path = tmp_path / "tiny-jit.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(
                model, (torch.zeros(1, 3, 224, 224), clip.tokenize(["a"])), check_trace=False
            )
            traced.save(str(path))
        encoder = CLIPEncoder.load(path, preprocess="clip")
        assert isinstance(encoder.model, clip.model.CLIP)
        image = torch.rand(1, 3, 224, 224) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(
                encoder.encode_image(image),
                CLIPEncoder(model, preprocess="clip").encode_image(image),
            )

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


def test_release_text_frees_the_text_tower_and_keeps_images(model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
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
    with pytest.raises(RuntimeError, match="text tower was freed"):
        encoder.encode_text("a dog")
