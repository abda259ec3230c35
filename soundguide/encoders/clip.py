"""CLIP through OpenAI's ``clip`` package: loading, text and image encoding, preprocessing.

The architecture is ``clip.model.CLIP`` and the tokenizer ``clip.tokenize``,
used as they are. What this module adds is what ``clip`` lacks:

- **Loading** (:func:`load_clip`, :func:`build_clip`). ``clip.load`` reads
  OpenAI's TorchScript archives with ``torch.jit.load``, which runs their
  code, and ``clip.model.build_model`` initializes a model at random and
  then rounds it to float16. Here archives are read without running their
  code (:mod:`soundguide.core.torchscript`), the weights stay float32 unless
  another dtype is asked for, and the model is built on the meta device,
  given memory once and the file's tensors copied in (no random
  initialization, no second copy; ``torch.nn.init`` and the global RNG
  untouched).
- **The image tower alone** (``text=False``): an edit with only audio or image
  guidance never materializes the text tower (about 40 % of ViT-B/32's
  weights); :func:`attach_text` reads it when a text target needs it and
  :func:`release_text` frees it once the targets exist.
- **Differentiable preprocessing** of generator images (n, 3, H, W) in [-1, 1]
  (``clip``'s own is a PIL pipeline):

  - ``"paper"``: what the original code did: nearest-neighbour upsampling x7,
    then average pooling with kernel ``size // 32`` (256 px -> 224), no
    mean/std normalization, the image unclamped. :func:`paper_preprocess`
    computes it exactly as ``A_h @ image @ A_w^T`` with small averaging
    matrices, without materializing the 7x image (at 1024 px that would be
    3 x 7168 x 7168 per image); neither torch nor kornia has this operator.
  - ``"clip"``: what CLIP was trained on: [-1, 1] -> [0, 1], the shorter side
    resized to the model's resolution with torch's antialiased bicubic
    ``F.interpolate`` (PIL's filter, as CLIP's ``Resize(BICUBIC)``), a centre
    crop, ``kornia.enhance.normalize`` with CLIP's mean and std. kornia's own
    ``resize(antialias=True)`` is not used: it blurs with a Gaussian first
    instead of widening the bicubic filter as PIL does, which puts it about 4
    times farther from CLIP's PIL preprocessing on photographs (on average;
    up to 70 8-bit levels at single pixels where torch's stays under 15;
    ``tests/encoders/test_clip.py`` compares the two).

- **Random cutouts** (off by default): kornia's ``RandomAffine`` (zoom into a
  random square, rotate, reflect at the border; one warp), its parameters
  drawn inside ``torch.random.fork_rng`` from a seed that the encoder's own
  ``torch.Generator`` gives (kornia's samplers take no generator), so a seed
  reproduces a run and the global RNG is left as it was.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from kornia.augmentation import RandomAffine
from kornia.enhance import normalize
from torch import nn

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import CheckpointError, ConfigError, ImageError, WeightsError, one_line
from soundguide.core.torchscript import read_torchscript_state_dict
from soundguide.encoders.clip_weights import CLIP_CACHE, CLIP_MODELS, CLIP_URL

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # clip imports pkg_resources, which warns
    import clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAPER_UPSAMPLE = 7

PreprocessMode = Literal["paper", "clip"]
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

TEXT_ATTRIBUTES = (
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
)
"""The attributes of ``clip.model.CLIP`` that make its text tower."""
TEXT_PARAMETERS = ("positional_embedding", "text_projection")
TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Integers that OpenAI's TorchScript archives keep beside the weights."""

OPENAI_TEXT = {
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 512,
    "transformer_heads": 8,
    "transformer_layers": 12,
}
"""The text tower's sizes in every released model: assumed for an image-only state dict."""


VIT_B_32 = {
    "embed_dim": 512,
    "image_resolution": 224,
    "vision_layers": 12,
    "vision_width": 768,
    "vision_patch_size": 32,
    **OPENAI_TEXT,
}
"""``clip.model.CLIP``'s arguments for ViT-B/32, the model SoundCLIP was trained against."""


def available_models() -> list[str]:
    """Names :func:`load_clip` can download (the same as ``clip.available_models()``)."""
    return list(CLIP_MODELS)


# -- loading ------------------------------------------------------------------------


def default_download_root() -> Path:
    """Where the ``clip`` package caches downloads, shared with it: ``~/.cache/clip``."""
    return Path(CLIP_CACHE).expanduser()


def clip_file(
    name_or_path: str | os.PathLike[str], *, download_root: str | os.PathLike[str] | None = None
) -> Path:
    """The local file of a CLIP model name (downloaded once, sha256-checked) or path.

    Raises :class:`WeightsError` for an unknown name or a failed download and
    :class:`CheckpointError` for a directory.
    """
    from soundguide.core.checkpoints import download_file
    from soundguide.core.files import sha256_file

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if name in CLIP_MODELS and not path.is_file():
        root = (
            Path(download_root).expanduser()
            if download_root is not None
            else default_download_root()
        )
        digest, filename = CLIP_MODELS[name].split("/")
        cached = root / filename
        if cached.is_file() and sha256_file(cached) == digest:
            return cached
        download_file(
            CLIP_URL + CLIP_MODELS[name],
            cached,
            what=f"CLIP model {name!r}",
            sha256=digest,
            hint=f"download it yourself into {root}, or pass the path of a local CLIP file",
        )
        return cached
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(f"CLIP model path is a directory, not a file: {path}")
    from soundguide.core.registry import unknown_name_message

    raise WeightsError(
        unknown_name_message("CLIP model", name, available_models()) + "; no such file either",
        hint="pass a model name or the path of a local CLIP file",
    )


def load_clip(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    download_root: str | os.PathLike[str] | None = None,
    trust: bool = False,
    text: bool = True,
) -> clip.model.CLIP:
    """Load a ``clip.model.CLIP``, frozen (no parameter requires grad) and in eval mode.

    ``name_or_path`` is a model name of :func:`available_models` (e.g.
    ``"ViT-B/32"``, downloaded once into ``download_root``, default
    ``~/.cache/clip``) or a local file: a TorchScript archive as OpenAI
    distributes them, or a plain state dict (read with
    :func:`~soundguide.core.checkpoints.load_checkpoint`; pickled code only with
    ``trust``).

    The weights stay float32 unless ``dtype`` asks for float16 or bfloat16
    (``clip.load`` alone would cast to float16 on CUDA, which breaks latent
    optimization). ``text=False`` loads the image tower only.

    Raises :class:`WeightsError` for an unknown name or a failed download and
    :class:`CheckpointError` for a file that is not a CLIP model.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"CLIP dtype must be float32, float16 or bfloat16, got {dtype}")
    path = clip_file(name_or_path, download_root=download_root)
    state = read_clip_state(path, trust=trust)
    return build_clip(state, source=str(path), dtype=dtype, device=device, text=text)


def read_clip_state(
    path: str | os.PathLike[str], *, trust: bool = False
) -> dict[str, torch.Tensor]:
    """The state dict of a CLIP file: a TorchScript archive or a (wrapped) state dict.

    TorchScript archives (OpenAI's files) are read by
    :func:`~soundguide.core.torchscript.read_torchscript_state_dict`, which
    never runs the archive's code; only with ``trust`` does an archive it
    refuses go to ``torch.jit.load``, which runs it. Both kinds of file are
    memory-mapped: weights that are never used (the text tower of an
    image-only run) are never read.
    """
    path = Path(path)
    if _is_torchscript(path):
        try:
            return read_torchscript_state_dict(path)
        except CheckpointError:
            if not trust:
                raise
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
                module = torch.jit.load(str(path), map_location="cpu")
            state = dict(module.state_dict())
            del module
            return state
        except Exception as exc:
            raise CheckpointError(
                f"cannot read CLIP TorchScript archive {path}: {one_line(exc, 300)}"
            ) from None
    obj = load_checkpoint(path, trust=trust, mmap=True)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} is not a CLIP model: it holds a {type(obj).__name__}")
    return dict(obj)


def is_text_key(key: str) -> bool:
    """Whether a CLIP state-dict key belongs to the text tower."""
    return key.startswith(TEXT_PREFIXES) or key in TEXT_PARAMETERS


def text_config(state: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """The text tower's sizes read off a state dict (as ``clip.model.build_model`` reads
    them), or None when it has no text tower."""
    needed = (
        "text_projection",
        "ln_final.weight",
        "positional_embedding",
        "token_embedding.weight",
    )
    if any(k not in state for k in needed):
        return None
    width = int(state["ln_final.weight"].shape[0])
    return {
        "context_length": int(state["positional_embedding"].shape[0]),
        "vocab_size": int(state["token_embedding.weight"].shape[0]),
        "transformer_width": width,
        "transformer_heads": width // 64,
        "transformer_layers": len(
            {k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}
        ),
    }


def clip_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of ``clip.model.CLIP`` for a state dict.

    Read off the tensor shapes as ``clip.model.build_model`` reads them (which
    cannot be used itself: it allocates the model and rounds it to float16).
    An image-only state dict gets the released models' text sizes. Raises
    KeyError when a needed key is absent.
    """
    if "visual.proj" in state:
        conv = state["visual.conv1.weight"]
        layers: int | tuple[int, ...] = sum(
            1
            for k in state
            if k.startswith("visual.transformer.resblocks.") and k.endswith(".attn.in_proj_weight")
        )
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        resolution = patch * grid
        embed_dim = state["visual.proj"].shape[1]
    else:
        layers = tuple(
            len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")})
            for b in (1, 2, 3, 4)
        )
        width, patch = int(state["visual.layer1.0.conv1.weight"].shape[0]), None
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = grid * 32
        embed_dim = state["visual.attnpool.c_proj.weight"].shape[0]
    return {
        "embed_dim": int(embed_dim),
        "image_resolution": int(resolution),
        "vision_layers": layers,
        "vision_width": width,
        "vision_patch_size": patch,
        **(text_config(state) or OPENAI_TEXT),
    }


def build_clip(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "<state dict>",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text: bool = True,
) -> clip.model.CLIP:
    """A frozen ``clip.model.CLIP`` in eval mode from its state dict.

    The architecture is read off the keys and shapes (:func:`clip_config`).
    The model is built on the meta device (no memory, no initialization),
    given uninitialized memory on ``device`` (``to_empty``), and the state
    dict's tensors copied in (``load_state_dict``): a memory-mapped file is
    read once, straight into the model, and the model owns its weights.
    Float32 weights stay exact; float16 and bfloat16 go to the layers
    ``clip.model.convert_weights`` converts (norms and embeddings stay
    float32). ``text=False`` builds the image tower only and never reads the
    text weights.
    """
    state = {k.removeprefix("module."): v for k, v in state_dict.items() if k not in METADATA_KEYS}
    has_visual = "visual.proj" in state or "visual.attnpool.positional_embedding" in state
    if not has_visual or (text and "text_projection" not in state):
        raise CheckpointError(
            f"{source} is not a CLIP model: no text_projection and visual.proj "
            "(or visual.attnpool) weights",
            hint="expected an OpenAI CLIP file (e.g. ViT-B-32.pt) or its state dict",
        )
    if not text:
        state = {k: v for k, v in state.items() if not is_text_key(k)}
    if "logit_scale" not in state:  # unused for encoding; image-only files may lack it
        state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    try:
        with torch.device("meta"):
            model = clip.model.CLIP(**clip_config(state))
        if not text:
            release_text(model)
        _materialize(model, state, dtype, device)
    except Exception as exc:
        raise CheckpointError(
            f"{source} does not fit a CLIP architecture: {one_line(exc, 300)}"
        ) from None
    model.requires_grad_(False)
    return model.eval()


def has_text(model: clip.model.CLIP) -> bool:
    """Whether ``model`` has its text tower (see :func:`attach_text`, :func:`release_text`)."""
    return hasattr(model, "text_projection")


def attach_text(model: clip.model.CLIP, state: Mapping[str, torch.Tensor]) -> None:
    """Give an image-only ``model`` its text tower from ``state`` (only its text keys are read).

    The tower is built as ``clip.model.CLIP`` builds it (on the meta device,
    then given memory on the image tower's device), in the image tower's
    dtype and frozen like it. Raises :class:`CheckpointError` naming missing
    or misshapen weights; the model is then left as it was.
    """
    if has_text(model):
        return
    text = {k.removeprefix("module."): v for k, v in state.items()}
    text = {k: v for k, v in text.items() if is_text_key(k)}
    sizes = text_config(text)
    hint = "text guidance needs a CLIP file with its text weights"
    if sizes is None:
        needed = ("text_projection", "ln_final.weight", "positional_embedding")
        missing = [k for k in needed if k not in text] or ["token_embedding.weight"]
        raise CheckpointError(f"cannot build CLIP's text tower: missing keys {missing}", hint=hint)
    weight = model.visual.conv1.weight
    config = {**clip_config(model.state_dict()), **sizes}
    try:
        with torch.device("meta"):
            donor = clip.model.CLIP(**config)
        del donor.visual
        _materialize(donor, {**text, "logit_scale": model.logit_scale}, model.dtype, weight.device)
    except Exception as exc:
        raise CheckpointError(
            f"cannot build CLIP's text tower: {one_line(exc, 300)}", hint=hint
        ) from None
    donor.requires_grad_(weight.requires_grad)
    for name in TEXT_ATTRIBUTES:
        setattr(model, name, getattr(donor, name))
    model.context_length = donor.context_length
    model.vocab_size = donor.vocab_size


def release_text(model: clip.model.CLIP) -> None:
    """Free the text tower of ``model``; image encoding keeps working."""
    for name in TEXT_ATTRIBUTES:
        if hasattr(model, name):
            delattr(model, name)


def _materialize(
    model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype, device: Any
) -> None:
    """Memory for a model built on the meta device, filled from ``state`` (strict).

    The causal attention mask of a text transformer, a plain attribute that
    ``clip.model.CLIP.__init__`` made on the meta device, is made again on ``device``.
    """
    if dtype != torch.float32:
        _convert_weights(model, dtype)
    model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    transformer = getattr(model, "transformer", None)
    if transformer is not None:
        mask = model.build_attention_mask().to(device)
        for block in transformer.resblocks:
            block.attn_mask = mask


def _convert_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """``clip.model.convert_weights`` for any dtype: convolutions, linear layers,
    attention and the two projections; norms and embeddings stay float32 (the
    ``clip`` LayerNorm computes in float32 and needs float32 weights)."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear | nn.MultiheadAttention):
            module.to(dtype)
        for name, param in list(module.named_parameters(recurse=False)):
            if name in ("text_projection", "proj"):
                setattr(module, name, nn.Parameter(param.to(dtype), param.requires_grad))


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


# -- tokenizing ----------------------------------------------------------------------

_SHOWN_CHARS = 60


@functools.cache
def _tokenizer() -> Any:
    return clip.simple_tokenizer.SimpleTokenizer()


def token_count(text: str) -> int:
    """CLIP tokens of ``text``, start and end tokens included (``clip``'s BPE tokenizer)."""
    return len(_tokenizer().encode(text)) + 2


def tokenize(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
) -> torch.Tensor:
    """``clip.tokenize``: prompts -> (N, context_length) int64.

    A prompt longer than ``context_length`` tokens (start and end included)
    raises :class:`ConfigError` naming it, in one line, unless ``truncate``.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    try:
        return clip.tokenize(texts, context_length=context_length, truncate=truncate)
    except RuntimeError:
        for row, text in enumerate(texts, start=1):
            count = token_count(text)
            if count > context_length:
                shown = text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
                raise ConfigError(
                    f"text prompt {row} ({shown!r}) is {count} tokens long; CLIP takes at "
                    f"most {context_length}, start and end tokens included",
                    hint="shorten the prompt",
                ) from None
        raise


# -- preprocessing: the math --------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _paper_matrix_cpu(size: int, kernel: int, factor: int) -> torch.Tensor:
    out = (size * factor) // kernel
    fine = torch.arange(out * kernel)  # pixels of the upsampled axis that the pooling reads
    matrix = torch.zeros(out, size, dtype=torch.float64)
    matrix.index_put_(
        (fine // kernel, fine // factor),
        torch.full_like(fine, 1, dtype=torch.float64),
        accumulate=True,
    )
    return matrix / kernel


def paper_pool_matrix(
    size: int,
    kernel: int,
    *,
    factor: int = PAPER_UPSAMPLE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The 1-D operator of nearest upsampling by ``factor`` then average pooling by ``kernel``.

    Row ``j`` averages upsampled pixels ``[j*k, (j+1)*k)``; upsampled pixel ``i``
    is input pixel ``i // factor``, so entry ``(j, m)`` is the number of them
    that come from input pixel ``m``, divided by ``k``. Each row has at most
    ``ceil(k / factor) + 1`` non-zeros and sums to 1.

    Output: (size * factor // kernel, size).
    """
    if kernel < 1:
        raise ImageError(f"average-pooling kernel must be >= 1, got {kernel}")
    return _paper_matrix_cpu(int(size), int(kernel), int(factor)).to(device=device, dtype=dtype)


def paper_preprocess(image: torch.Tensor, *, kernel: int | None = None) -> torch.Tensor:
    """The original code's CLIP input: ``AvgPool2d(k)(Upsample(scale_factor=7)(image))``.

    ``k`` defaults to ``max(H, W) // 32`` (the original's ``stylegan_size // 32``),
    which maps any multiple of 32 px to 224 px. Computed separably as
    ``A_h @ image @ A_w^T`` (exact up to float rounding; gradients too).

    Input: (n, C, H, W), H and W >= 32 (or any size with ``kernel``).
    Output: (n, C, 7H // k, 7W // k).
    """
    height, width = image.shape[-2:]
    if kernel is None:
        kernel = max(height, width) // 32
        if kernel < 1:
            raise ImageError(
                f"paper preprocessing needs images of at least 32 px, got {height}x{width}",
                hint='use preprocess="clip" for small images',
            )
    rows = paper_pool_matrix(height, kernel, device=image.device, dtype=image.dtype)
    cols = paper_pool_matrix(width, kernel, device=image.device, dtype=image.dtype)
    return rows @ image @ cols.T


def clip_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's own preprocessing, differentiable: the shorter side resized to ``size``
    (bicubic, antialiased like PIL), a centre crop, mean/std normalization.

    Input: (n, 3, H, W) in [-1, 1]. Output: (n, 3, size, size).
    """
    height, width = image.shape[-2:]
    x = (image + 1.0) / 2.0
    # Output size and crop offsets as torchvision's Resize(int) and CenterCrop compute them.
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
        )
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    return normalize(x, x.new_tensor(CLIP_MEAN), x.new_tensor(CLIP_STD))


def random_cutouts(
    image: torch.Tensor,
    count: int,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    degrees: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` random square cutouts per image, each rotated and resized back to full size.

    kornia's ``RandomAffine``: a zoom by ``1 / side`` with the cutout's side a
    fraction ``side`` in ``scale`` of the image's, a shift of up to
    ``(1 - scale[0]) / 2`` of the image, a rotation uniform in
    ``[-degrees, degrees]``, bilinear sampling with reflection at the border:
    one warp, differentiable. The parameters are drawn on the CPU from a seed
    that ``generator`` gives, inside ``torch.random.fork_rng`` (kornia's
    samplers draw from the global RNG and take no generator), so a seed
    reproduces them on any device and the global RNG state is left as it was
    (other threads drawing from it meanwhile would see the seeded state).
    Without ``generator`` they come from the global RNG, as kornia's do.

    Input: (n, C, H, W). Output: (n * count, C, H, W), the cutouts of image ``i``
    at rows ``i * count ... (i + 1) * count - 1``.
    """
    low, high = scale
    shift = (1.0 - low) / 2.0
    augment = RandomAffine(
        degrees=degrees,
        translate=(shift, shift),
        scale=(1.0 / high, 1.0 / low),
        padding_mode="reflection",
        align_corners=False,
        p=1.0,
    )
    source = image.repeat_interleave(count, dim=0)
    if generator is None:
        params = augment.forward_parameters(source.shape)
    else:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            params = augment.forward_parameters(source.shape)
    return augment(source, params=params)


# -- the encoder ----------------------------------------------------------------------


class CLIPEncoder(nn.Module):
    """Text and image encoding with a CLIP model, differentiable w.r.t. the image.

    Args:
        model: a ``clip.model.CLIP`` (see :func:`load_clip`), with or without
            its text tower.
        preprocess: ``"paper"`` (the original code's, the default) or ``"clip"``.
        cutouts: random cutouts per image whose embeddings are averaged; 0 (the
            default) turns augmentation off.
        cutout_scale: range of the cutout side as a fraction of the image side.
        cutout_degrees: maximum rotation of a cutout.
        seed: seeds :attr:`generator`, which draws the cutouts.
        text_loader: returns a state dict holding the text tower's weights; called
            the first time text is encoded while the model has no text tower
            (:meth:`load` with ``lazy_text=True`` passes one that re-reads the file).

    ``encode_image``: (n, 3, H, W) in [-1, 1] -> (n, D).
    ``encode_text``: N prompts -> (N, D). Embeddings are not normalized.
    """

    def __init__(
        self,
        model: clip.model.CLIP,
        *,
        preprocess: PreprocessMode = "paper",
        cutouts: int = 0,
        cutout_scale: tuple[float, float] = (0.6, 1.0),
        cutout_degrees: float = 10.0,
        seed: int = 0,
        text_loader: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        if preprocess not in ("paper", "clip"):
            raise ConfigError(f"unknown CLIP preprocessing {preprocess!r}; available: clip, paper")
        if cutouts < 0:
            raise ConfigError(f"cutouts must be >= 0, got {cutouts}")
        low, high = cutout_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"cutout_scale must satisfy 0 < low <= high <= 1, got {cutout_scale}")
        self.model = model
        self.preprocess_mode: PreprocessMode = preprocess
        self.cutouts = int(cutouts)
        self.cutout_scale = (float(low), float(high))
        self.cutout_degrees = float(cutout_degrees)
        self.generator = torch.Generator().manual_seed(seed)
        self.text_loader = text_loader

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        download_root: str | os.PathLike[str] | None = None,
        trust: bool = False,
        lazy_text: bool = False,
        share: Callable[[tuple[Any, ...], Callable[[], Any]], Any] | None = None,
        **options: Any,
    ) -> CLIPEncoder:
        """:func:`load_clip` then wrap; ``options`` go to the constructor.

        ``lazy_text``: load the image tower only; the text tower is read from
        the file when text is first encoded (never, in a run whose text
        targets are all cached or that has no text source).
        ``share(key, build)`` (e.g. :meth:`RunContext.shared`) may return a
        network loaded before under the same key instead of building one; the
        encoder around it (its cutouts' random generator) is always new.
        """
        from soundguide.core.interfaces import model_key

        path = clip_file(name_or_path, download_root=download_root)

        def build() -> clip.model.CLIP:
            return load_clip(path, device=device, dtype=dtype, trust=trust, text=not lazy_text)

        if share is None:
            model = build()
        else:
            key = model_key(
                "clip", path, device=device, dtype=dtype, trust=trust, text=not lazy_text
            )
            model = share(key, build)
        return cls(
            model, text_loader=functools.partial(read_clip_state, path, trust=trust), **options
        )

    @property
    def input_resolution(self) -> int:
        """Side of the square image the vision tower takes (224 for ViT-B/32)."""
        return int(self.model.visual.input_resolution)

    @property
    def embed_dim(self) -> int:
        """D: the size of text and image embeddings (512 for ViT-B/32)."""
        return int(self.model.visual.output_dim)

    @property
    def context_length(self) -> int:
        """Maximum tokens per prompt, start and end tokens included (77)."""
        return int(self.model.context_length)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Input: (n, 3, H, W) in [-1, 1]. Output: (n, 3, R, R), R = :attr:`input_resolution`."""
        _check_image(image)
        size = self.input_resolution
        if self.preprocess_mode == "clip":
            return clip_preprocess(image, size)
        out = paper_preprocess(image)
        if tuple(out.shape[-2:]) != (size, size):
            raise ImageError(
                f"paper preprocessing maps a {image.shape[-2]}x{image.shape[-1]} image to "
                f"{out.shape[-2]}x{out.shape[-1]}, but this CLIP model takes {size}x{size}",
                hint="paper preprocessing needs square images whose side is a multiple of 32 and a "
                '224 px model; use preprocess="clip" otherwise',
            )
        return out

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Input: (n, 3, H, W) in [-1, 1], any float dtype. Output: (n, D) in the image's dtype."""
        x = self.preprocess(image)
        if self.cutouts:
            x = random_cutouts(
                x,
                self.cutouts,
                scale=self.cutout_scale,
                degrees=self.cutout_degrees,
                generator=self.generator,
            )
        embedding = self.model.encode_image(x)
        if self.cutouts:
            embedding = embedding.view(image.shape[0], self.cutouts, -1).mean(dim=1)
        return embedding.to(image.dtype)

    forward = encode_image

    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts to token ids. Output: (N, context_length) int64 on the model's device.

        Raises :class:`ConfigError` naming the prompt that is empty or too long.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("no text prompts given")
        for i, prompt in enumerate(prompts, start=1):
            if not isinstance(prompt, str):
                raise ConfigError(f"text prompt {i} is a {type(prompt).__name__}, not a string")
            if not prompt.strip():
                raise ConfigError(f"text prompt {i} is empty")
        return tokenize(prompts, context_length=self.context_length).to(
            self.model.logit_scale.device
        )

    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Input: N prompts (a string counts as one). Output: (N, D) float32."""
        tokens = self.tokenize(prompts)
        if not has_text(self.model):
            if self.text_loader is None:
                raise RuntimeError(
                    "this CLIP model has no text tower and the encoder has no text_loader"
                )
            attach_text(self.model, self.text_loader())
        return self.model.encode_text(tokens).float()

    def release_text(self) -> None:
        """Free the text tower (about 40 % of ViT-B/32's weights); image encoding keeps working.

        The engine calls this (as :meth:`after_targets`) once every target is
        computed: the optimization loop only encodes images. With a
        ``text_loader`` a later :meth:`encode_text` loads the tower again.
        """
        release_text(self.model)

    after_targets = release_text


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        got = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(f"CLIP expects a floating-point image tensor, got {got}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ImageError(f"CLIP expects images of shape (n, 3, H, W), got {tuple(image.shape)}")
