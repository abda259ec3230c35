from __future__ import annotations

import gc
import json
import math
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import soundguide.encoders.e4e as e4e
from soundguide.core.errors import CheckpointError, ImageError
from soundguide.encoders.e4e import (
    E4E_FFHQ,
    Encoder4Editing,
    e4e_input,
    e4e_parts,
    load_e4e,
    n_styles_for,
)
from tests.encoders.e4e_reference import e4e_forward, e4e_latents

DATA = Path(__file__).resolve().parents[1] / "data"
MANIFEST = json.loads((DATA / "e4e_ffhq_encode.keys.json").read_text())
DECODER_KEYS = json.loads((DATA / "stylegan2_1024_cm2.keys.json").read_text())
PARITY_STYLES = 8
"""The fewest styles that read all three pyramid levels (c3, p2 and p1): a 32 px generator."""
SMALL_STYLES = 2
"""A 4 px generator's two styles: the cheapest encoder that still has every kind of key."""


def encoder_manifest(n_styles: int = 18) -> list[tuple[str, list[int], str]]:
    """The checkpoint's ``encoder.*`` keys, shapes and dtypes, for the first ``n_styles`` styles."""
    rows = []
    for key, shape, dtype in MANIFEST["state_dict"]:
        parts = key.split(".")
        if parts[1] == "styles" and int(parts[2]) >= n_styles:
            continue
        rows.append((key, list(shape), dtype))
    return rows


def random_encoder_state(n_styles: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random ``encoder.*`` tensors with the manifest's shapes.

    Convolutions have unit gain (std 1/sqrt(fan in)), the equalized linears
    N(0, 1) weights (the layer scales them by 1/sqrt(512)), batch norms mild
    affine parameters and running statistics (mean ~0.1, variance 0.5-1.5),
    PReLUs slope ~0.25: the features stay O(1) (std below 5) through the 24
    units, and the style heads' deltas are O(1) too.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in encoder_manifest(n_styles):
        name = key.removeprefix("encoder.")
        if dtype == "torch.int64":
            value = torch.tensor(1000)
        elif name.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("linear.weight"):
            value = torch.randn(shape, generator=g)
        elif name.endswith(("res_layer.2.weight", "input_layer.2.weight")):  # PReLU
            value = 0.25 + 0.05 * torch.rand(shape, generator=g)
        elif name.endswith("weight"):  # batch norm
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        state[key] = value
    return state


def e4e_checkpoint(
    encoder: dict[str, torch.Tensor], n_styles: int, decoder: dict[str, torch.Tensor] | None = None
) -> dict:
    """A checkpoint in the form e4e's training saves (``opts`` a plain dict)."""
    g = torch.Generator().manual_seed(1)
    size = 2 ** ((n_styles + 2) // 2)
    return {
        "state_dict": {**encoder, **(decoder or {})},
        "opts": {**MANIFEST["opts"], "stylegan_size": size, "batch_size": 8, "device": "cuda:0"},
        "latent_avg": torch.randn(n_styles, 512, generator=g),
    }


def tiny_decoder() -> dict[str, torch.Tensor]:
    """The 1024 px generator's real ``decoder.*`` key names with one-value tensors."""
    return {"decoder." + key: torch.zeros(1) for key, _, _ in DECODER_KEYS}


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 256, 256, generator=g) * 2 - 1


def without_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("encoder."): v for k, v in state.items()}


@pytest.fixture(scope="module")
def parity_checkpoint() -> dict:
    return e4e_checkpoint(random_encoder_state(PARITY_STYLES), PARITY_STYLES)


@pytest.fixture(scope="module")
def parity_model(parity_checkpoint) -> Encoder4Editing:
    return load_e4e(parity_checkpoint)


@pytest.fixture(scope="module")
def small_checkpoint() -> dict:
    return e4e_checkpoint(random_encoder_state(SMALL_STYLES), SMALL_STYLES)


class TestArchitecture:
    def test_keys_shapes_and_dtypes_equal_the_checkpoints_encoder_keys(self):
        with torch.device("meta"):
            state = Encoder4Editing().state_dict()
        got = [(k, list(v.shape), str(v.dtype)) for k, v in state.items()]
        want = [(k.removeprefix("encoder."), s, d) for k, s, d in encoder_manifest()]
        assert len(want) == 621
        assert got == [("latent_avg", MANIFEST["latent_avg"], "torch.float32"), *want]

    def test_full_size_output_shape(self):
        # the 18-style network weighs 1.07 GB: shapes are checked on the meta device
        with torch.device("meta"):
            model = Encoder4Editing()
            out = model(torch.empty(2, 3, 256, 256))
        assert out.shape == (2, 18, 512)

    def test_n_styles_follows_the_generator_size(self):
        assert [n_styles_for(s) for s in (4, 32, 256, 512, 1024)] == [2, 8, 14, 16, 18]
        with torch.device("meta"):
            assert Encoder4Editing(14).n_styles == 14

    def test_output_shape_and_dtype(self, parity_model):
        out = parity_model(images(2))
        assert out.shape == (2, PARITY_STYLES, 512) and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_rejects_inputs_that_are_not_256_px(self, parity_model):
        with pytest.raises(ImageError, match=r"shape \(n, 3, 256, 256\), got \(1, 3, 128, 128\)"):
            parity_model(torch.zeros(1, 3, 128, 128))

    def test_parity_with_the_reference(self, parity_model, parity_checkpoint):
        # float32 is enough: both sides run the same convolutions, and the rest
        # (batch norm, activations, SE, the pyramid) differs only in rounding,
        # measured at 7e-7 relative here; 1e-5 leaves room for other CPUs' kernels
        x = images(2, seed=3)
        with torch.no_grad():
            got = parity_model(x)
            want = e4e_latents(
                without_prefix(parity_checkpoint["state_dict"]), parity_checkpoint["latent_avg"], x
            )
        codes = want - parity_checkpoint["latent_avg"]
        assert (codes[:, 1:] - codes[:, :1]).abs().mean() > 0.1  # every layer has its delta
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
        # the batch items are independent
        with torch.no_grad():
            single = parity_model(x[1:])
        torch.testing.assert_close(single, got[1:], rtol=1e-5, atol=1e-5)

    def test_layers_past_the_inference_stage_keep_w0(
        self, parity_model, parity_checkpoint, monkeypatch
    ):
        # e4e adds deltas to layers 1..18 only; with a 2048 px generator (20 layers)
        # layer 19 keeps w0. Seen here by lowering the stage on the 8-layer network.
        monkeypatch.setattr(e4e, "INFERENCE_STAGE", 4)
        x = images(1, seed=4)
        state = without_prefix(parity_checkpoint["state_dict"])
        with torch.no_grad():
            got = parity_model(x) - parity_model.latent_avg
            want = e4e_forward(state, x, PARITY_STYLES, stage=4)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:, 5:], got[:, :1].expand(-1, 3, -1))
        assert not torch.allclose(got[:, 4], got[:, 0])

    def test_gradient_reaches_the_input(self, parity_model):
        x = images(1, seed=5).requires_grad_()
        parity_model(x).square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert all(p.grad is None for p in parity_model.parameters())

    def test_float64_in_float64_out(self, small_checkpoint):
        model = load_e4e(small_checkpoint).double()
        x = images(1, seed=6).double()
        with torch.no_grad():
            out = model(x)
            want = e4e_latents(
                {k: v.double() for k, v in without_prefix(small_checkpoint["state_dict"]).items()},
                small_checkpoint["latent_avg"].double(),
                x,
            )
        assert out.dtype == torch.float64
        assert ((out - want).abs().max() / want.abs().max()).item() < 1e-12


class TestInput:
    def photo(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        skimage_data = pytest.importorskip("skimage.data")
        return np.ascontiguousarray(skimage_data.astronaut()[rows, cols])  # (512, 512, 3) uint8

    @staticmethod
    def as_tensor(photo: np.ndarray) -> torch.Tensor:
        # ToTensor + Normalize(0.5, 0.5), as e4e's transform does
        return torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].double() / 127.5 - 1

    @pytest.mark.parametrize(
        ("rows", "cols"),
        [
            (slice(None), slice(None)),  # 512x512 -> 256: halved; measured 0.00784
            (slice(20, 491), slice(37, 400)),  # 471x363: shrunk by 1.84 and 1.42; 0.00774
            (slice(100, 300), slice(150, 330)),  # 200x180: enlarged; 0.00770
        ],
    )
    def test_matches_pil_bilinear_resize(self, rows, cols):
        # e4e: PIL Image.resize((256, 256), BILINEAR) on the uint8 photo. The
        # measured max difference (in [-1, 1] units, PIL 11) is one 8-bit level,
        # 1 / 127.5 = 0.0078: PIL's 8-bit resize rounds to integers after each of
        # its two passes. Its float ("F") mode agrees to float32 rounding (below).
        from PIL import Image

        photo = self.photo(rows, cols)
        pil = np.asarray(Image.fromarray(photo).resize((256, 256), Image.Resampling.BILINEAR))
        got = e4e_input(self.as_tensor(photo))
        assert got.shape == (1, 3, 256, 256)
        diff = (got - self.as_tensor(pil)).abs()
        assert diff.max().item() <= 1 / 127.5 + 1e-9
        assert diff.mean().item() < 0.35 / 127.5  # measured 0.27 levels: rounding

    def test_matches_pil_float_resize(self):
        from PIL import Image

        photo = self.photo(slice(20, 491), slice(37, 400)).astype(np.float32) / 127.5 - 1
        want = np.stack(
            [
                np.asarray(
                    Image.fromarray(photo[..., c], mode="F").resize(
                        (256, 256), Image.Resampling.BILINEAR
                    )
                )
                for c in range(3)
            ]
        )
        got = e4e_input(torch.from_numpy(photo).permute(2, 0, 1)[None])
        assert np.abs(got[0].numpy() - want).max() < 1e-5

    def test_256_px_images_pass_unchanged(self):
        x = images(2)
        assert e4e_input(x) is x

    def test_is_differentiable(self):
        x = torch.rand(1, 3, 300, 200, requires_grad=True)
        e4e_input(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

    def test_rejects_integer_images_and_wrong_shapes(self):
        with pytest.raises(ImageError, match="floating-point image tensor, got torch.uint8"):
            e4e_input(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
        with pytest.raises(ImageError, match=r"shape \(n, 3, H, W\), got \(3, 64, 64\)"):
            e4e_input(torch.zeros(3, 64, 64))


class TestLoading:
    def test_known_weights_entry(self):
        assert E4E_FFHQ.name == "e4e-ffhq-encode" and E4E_FFHQ.filename == "e4e_ffhq_encode.pt"
        assert E4E_FFHQ.license == "MIT"
        assert "id=1cUv_reLE6k3604or78EranS7XzuVMWeO" in E4E_FFHQ.url

    def test_a_saved_e4e_checkpoint_loads_without_its_decoder(self, small_checkpoint, tmp_path):
        path = tmp_path / "e4e_ffhq_encode.pt"
        checkpoint = {**small_checkpoint}
        checkpoint["state_dict"] = {**small_checkpoint["state_dict"], **tiny_decoder()}
        torch.save(checkpoint, path)
        model = load_e4e(path)
        state = model.state_dict()
        assert not any("decoder" in k for k in state)
        assert model.n_styles == SMALL_STYLES  # from opts: stylegan_size 4
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        for key, value in small_checkpoint["state_dict"].items():
            assert torch.equal(state[key.removeprefix("encoder.")], value)
        assert torch.equal(model.latent_avg, small_checkpoint["latent_avg"])
        # its own state dict reloads
        again = load_e4e(state)
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())

    def test_nothing_of_the_checkpoint_is_kept(self, small_checkpoint, tmp_path, monkeypatch):
        path = tmp_path / "e4e.pt"
        checkpoint = {**small_checkpoint}
        checkpoint["state_dict"] = {**small_checkpoint["state_dict"], **tiny_decoder()}
        torch.save(checkpoint, path)
        read = e4e.read_checkpoint
        tensors: list[weakref.ref] = []

        def spying(*args, **kwargs):
            source, obj = read(*args, **kwargs)
            tensors.extend(weakref.ref(t) for t in obj["state_dict"].values())
            tensors.append(weakref.ref(obj["latent_avg"]))
            return source, obj

        monkeypatch.setattr(e4e, "read_checkpoint", spying)
        model = load_e4e(path)
        gc.collect()
        assert len(tensors) == len(checkpoint["state_dict"]) + 1
        assert [r for r in tensors if r() is not None] == []  # decoder and encoder tensors gone
        assert model.n_styles == SMALL_STYLES

    @pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
    def test_the_decoder_is_never_read_into_memory(self, small_checkpoint, tmp_path):
        # The real file is 1.07 GB of encoder and 0.13 GB of decoder. Here the
        # decoder (real key names and shapes, plus 384 MB standing in for a bigger
        # generator) outweighs the 2-style encoder; loading may grow private memory
        # by the network's own size, never by the decoder's.
        decoder = {"decoder." + k: torch.zeros(s) for k, s, _ in DECODER_KEYS}
        decoder["decoder.bulk"] = torch.zeros(96, 1024, 1024)
        decoder_bytes = sum(t.numel() * t.element_size() for t in decoder.values())
        path = tmp_path / "e4e_big.pt"
        checkpoint = {**small_checkpoint}
        checkpoint["state_dict"] = {**small_checkpoint["state_dict"], **decoder}
        torch.save(checkpoint, path)
        del decoder, checkpoint
        gc.collect()

        base = rss_anon()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_anon())
                stop.wait(0.001)

        thread = threading.Thread(target=sample)
        thread.start()
        try:
            model = load_e4e(path)
        finally:
            stop.set()
            thread.join()
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        growth = peak[0] - base
        assert decoder_bytes > 500 * 2**20
        assert growth < model_bytes + decoder_bytes / 4, (growth, model_bytes, decoder_bytes)

    def test_start_from_latent_avg_off_adds_nothing(self, small_checkpoint):
        checkpoint = {**small_checkpoint, "opts": {**small_checkpoint["opts"]}}
        checkpoint["opts"]["start_from_latent_avg"] = False
        del checkpoint["latent_avg"]
        model = load_e4e(checkpoint)
        assert torch.equal(model.latent_avg, torch.zeros(SMALL_STYLES, 512))

    def test_parts_keep_only_the_encoder(self, small_checkpoint):
        checkpoint = {**small_checkpoint}
        checkpoint["state_dict"] = {**small_checkpoint["state_dict"], **tiny_decoder()}
        state, latent_avg, opts = e4e_parts(checkpoint)
        assert len(state) == len(small_checkpoint["state_dict"])
        assert all(not k.startswith(("encoder.", "decoder.")) for k in state)
        assert latent_avg is small_checkpoint["latent_avg"] and opts["stylegan_size"] == 4


class TestLoadingErrors:
    def test_a_stylegan2_checkpoint(self, tmp_path):
        path = tmp_path / "stylegan2-ffhq-config-f.pt"
        g_ema = {key: torch.zeros(1) for key, _, _ in DECODER_KEYS}
        torch.save({"g_ema": g_ema, "latent_avg": torch.zeros(512)}, path)
        with pytest.raises(
            CheckpointError,
            match=r"not an e4e checkpoint: .*stylegan2-ffhq-config-f.pt looks like a StyleGAN2 "
            r"generator .*expected e4e's checkpoint \(e4e_ffhq_encode.pt\)",
        ):
            load_e4e(path)

    def test_an_arcface_checkpoint(self, tmp_path):
        path = tmp_path / "model_ir_se50.pth"
        keys = json.loads((DATA / "arcface_ir_se50.keys.json").read_text())
        torch.save({key: torch.zeros(1) for key, _, _ in keys}, path)
        with pytest.raises(CheckpointError, match=r"looks like ArcFace IR-SE50 \(model_ir_se50"):
            load_e4e(path)

    def test_something_else(self):
        with pytest.raises(CheckpointError, match=r"top-level keys: 'weights', 'step'"):
            load_e4e({"weights": torch.zeros(1), "step": torch.tensor(3)})
        with pytest.raises(CheckpointError, match="holds a list"):
            e4e_parts([torch.zeros(1)])

    def test_a_psp_checkpoint(self, small_checkpoint):
        checkpoint = {**small_checkpoint, "opts": {**small_checkpoint["opts"]}}
        checkpoint["opts"]["encoder_type"] = "GradualStyleEncoder"
        with pytest.raises(CheckpointError, match="holds a GradualStyleEncoder encoder"):
            load_e4e(checkpoint)

    def test_missing_latent_avg(self, small_checkpoint):
        checkpoint = {k: v for k, v in small_checkpoint.items() if k != "latent_avg"}
        with pytest.raises(CheckpointError, match=r"has no latent_avg: .* latent_avg \(2, 512\)"):
            load_e4e(checkpoint)

    def test_wrong_latent_avg_shape(self, small_checkpoint):
        checkpoint = {**small_checkpoint, "latent_avg": torch.zeros(512)}
        with pytest.raises(
            CheckpointError,
            match=r"latent_avg has shape \(512,\), expected \(2, 512\) "
            r"\(2 styles from stylegan_size 4 in opts\)",
        ):
            load_e4e(checkpoint)

    def test_styles_that_disagree_with_opts(self, small_checkpoint):
        checkpoint = {**small_checkpoint, "opts": {**small_checkpoint["opts"]}}
        checkpoint["opts"]["stylegan_size"] = 1024
        checkpoint["latent_avg"] = torch.zeros(18, 512)
        with pytest.raises(
            CheckpointError,
            match=r"does not fit the e4e encoder with 18 styles \(stylegan_size 1024 in opts\): "
            r"missing keys styles.2.convs.0.weight",
        ):
            load_e4e(checkpoint)

    def test_a_misshapen_tensor(self, small_checkpoint):
        checkpoint = {**small_checkpoint}
        checkpoint["state_dict"] = {
            **small_checkpoint["state_dict"],
            "encoder.latlayer2.weight": torch.zeros(512, 64, 1, 1),
        }
        with pytest.raises(
            CheckpointError,
            match=r"wrong shapes \(checkpoint vs model\) latlayer2.weight \(512, 64, 1, 1\) "
            r"vs \(512, 128, 1, 1\)",
        ):
            load_e4e(checkpoint)

    def test_non_finite_weights(self, small_checkpoint):
        checkpoint = {**small_checkpoint}
        bad = small_checkpoint["state_dict"]["encoder.styles.1.linear.weight"].clone()
        bad[3, 4] = float("nan")
        checkpoint["state_dict"] = {
            **small_checkpoint["state_dict"],
            "encoder.styles.1.linear.weight": bad,
        }
        with pytest.raises(
            CheckpointError, match=r"non-finite values \(NaN or inf\) in styles.1.linear.weight$"
        ):
            load_e4e(checkpoint)

    def test_non_finite_latent_avg(self, small_checkpoint):
        latent_avg = small_checkpoint["latent_avg"].clone()
        latent_avg[0, 0] = float("inf")
        with pytest.raises(CheckpointError, match=r"non-finite values .* in latent_avg$"):
            load_e4e({**small_checkpoint, "latent_avg": latent_avg})


def rss_anon() -> int:
    """This process's private resident memory in bytes (RssAnon of /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")
