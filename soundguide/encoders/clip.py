"""CLIP: loading, text and image encoding, and differentiable image preprocessing.

Two ways to turn a generator image (n, 3, H, W) in [-1, 1] into CLIP's input:

- ``"paper"``: what the original code did: nearest-neighbour upsampling x7,
  then average pooling with kernel ``size // 32`` (256 px -> 224), no mean/std
  normalization, the image unclamped. :func:`paper_preprocess` computes it
  exactly as ``A_h @ image @ A_w^T`` with small averaging matrices, without
  materializing the 7x image (at 1024 px that would be 3 x 7168 x 7168 per image).
- ``"clip"``: what CLIP was trained on: [-1, 1] -> [0, 1], antialiased bicubic
  resize of the shorter side to the model's input resolution (PIL-like, as
  CLIP's own ``Resize(BICUBIC)``), centre crop, CLIP mean/std normalization.

Optional random cutouts (crop + rotation, averaged embeddings) make guidance
more robust; they are off by default and drawn from the encoder's own seeded
``torch.Generator``.
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
from torch import nn

from soundguide.core.checkpoints import load_checkpoint
from soundguide.core.errors import CheckpointError, ConfigError, ImageError, WeightsError
from soundguide.core.torchscript import read_torchscript_state_dict
from soundguide.encoders.clip_model import (
    CLIP,
    METADATA_KEYS,
    CLIPConfig,
    cast_each,
    is_text_key,
    uninitialized,
)
from soundguide.encoders.clip_weights import CLIP_CACHE, CLIP_MODELS, CLIP_URL

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAPER_UPSAMPLE = 7

PreprocessMode = Literal["paper", "clip"]
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
) -> CLIP:
    """Load a CLIP model, frozen (no parameter requires grad) and in eval mode.

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
                f"cannot read CLIP TorchScript archive {path}: {_first_line(exc)}"
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


def build_clip(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "<state dict>",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text: bool = True,
) -> CLIP:
    """A frozen :class:`~soundguide.encoders.clip_model.CLIP` from its state dict.

    The architecture is read off the keys and shapes. Memory-frugal: the
    module is built uninitialized (nothing allocated is touched), takes the
    state dict's tensors, then copies or casts them one at a time into its
    own memory (a memory-mapped file's pages are let go with the state dict).
    Float32 weights stay exact. ``text=False`` builds the image tower only
    and never reads the text weights.
    """
    state = {
        k[len("module.") :] if k.startswith("module.") else k: v
        for k, v in state_dict.items()
        if k not in METADATA_KEYS
    }
    has_visual = "visual.proj" in state or "visual.attnpool.positional_embedding" in state
    if not has_visual or (text and "text_projection" not in state):
        raise CheckpointError(
            f"{source} is not a CLIP model: no text_projection and visual.proj "
            "(or visual.attnpool) weights",
            hint="expected an OpenAI CLIP file (e.g. ViT-B-32.pt) or its state dict",
        )
    try:
        config = CLIPConfig.from_state_dict(state)
        if not text:
            state = {k: v for k, v in state.items() if not is_text_key(k)}
        with uninitialized():
            model = CLIP(config, text=text)
        if "logit_scale" not in state:  # unused for encoding; image-only files may lack it
            state["logit_scale"] = torch.full((), math.log(1 / 0.07))
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        raise CheckpointError(
            f"{source} does not fit a CLIP architecture: {_first_line(exc)}"
        ) from None
    del state
    # own copies: memory-mapped pages of a file can be evicted under the
    # model's feet (and re-read every step); the text weights of an
    # image-only model are never read at all
    cast_each(model, dtype, device, copy=True)
    model.requires_grad_(False)
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _first_line(exc: object, limit: int = 160) -> str:
    text = str(exc).strip()
    line = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_cutouts(
    image: torch.Tensor,
    count: int,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    degrees: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` random square crops per image, each rotated and resized back to full size.

    The crop side is a ``scale`` fraction of the image side, its centre keeps the
    unrotated crop inside the image, the rotation is uniform in
    ``[-degrees, degrees]``; sampling is bilinear with reflection at the border
    (one ``affine_grid`` + ``grid_sample``: differentiable). Parameters are drawn
    on the CPU from ``generator``, so a seed reproduces them on any device.

    Input: (n, C, H, W). Output: (n * count, C, H, W), the cutouts of image ``i``
    at rows ``i * count ... (i + 1) * count - 1``.
    """
    n = image.shape[0] * count
    low, high = scale
    rand = torch.rand(4, n, generator=generator, dtype=torch.float64)
    side = low + (high - low) * rand[0]
    angle = math.radians(degrees) * (2 * rand[1] - 1)
    shift_x = (1 - side) * (2 * rand[2] - 1)
    shift_y = (1 - side) * (2 * rand[3] - 1)
    cos, sin = side * torch.cos(angle), side * torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], dim=-1), torch.stack([sin, cos, shift_y], dim=-1)],
        dim=1,
    ).to(device=image.device, dtype=image.dtype)
    source = image.repeat_interleave(count, dim=0)
    grid = F.affine_grid(theta, list(source.shape), align_corners=False)
    return F.grid_sample(
        source, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


# -- the encoder ----------------------------------------------------------------------


class CLIPEncoder(nn.Module):
    """Text and image encoding with a CLIP model, differentiable w.r.t. the image.

    Args:
        model: a :class:`~soundguide.encoders.clip_model.CLIP` (see :func:`load_clip`),
            with or without its text tower.
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
        model: CLIP,
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
        **options: Any,
    ) -> CLIPEncoder:
        """:func:`load_clip` then wrap; ``options`` go to the constructor.

        ``lazy_text``: load the image tower only; the text tower is read from
        the file when text is first encoded (never, in a run whose text
        targets are all cached or that has no text source).
        """
        path = clip_file(name_or_path, download_root=download_root)
        model = load_clip(path, device=device, dtype=dtype, trust=trust, text=not lazy_text)
        return cls(
            model, text_loader=functools.partial(read_clip_state, path, trust=trust), **options
        )

    @property
    def input_resolution(self) -> int:
        """Side of the square image the vision tower takes (224 for ViT-B/32)."""
        return self.model.config.image_resolution

    @property
    def embed_dim(self) -> int:
        """D: the size of text and image embeddings (512 for ViT-B/32)."""
        return self.model.config.embed_dim

    @property
    def context_length(self) -> int:
        """Maximum tokens per prompt, start and end tokens included (77)."""
        return self.model.config.context_length

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
        from soundguide.encoders.clip_tokenizer import tokenize

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
        if not self.model.has_text:
            if self.text_loader is None:
                raise RuntimeError(
                    "this CLIP model has no text tower and the encoder has no text_loader"
                )
            try:
                self.model.attach_text(self.text_loader())
            except RuntimeError as exc:
                raise CheckpointError(
                    f"cannot build CLIP's text tower: {_first_line(exc)}",
                    hint="text guidance needs a CLIP file with its text weights",
                ) from None
            self.model.requires_grad_(False)
        return self.model.encode_text(tokens).float()

    def release_text(self) -> None:
        """Free the text tower (about 40 % of ViT-B/32's weights); image encoding keeps working.

        The engine calls this (as :meth:`after_targets`) once every target is
        computed: the optimization loop only encodes images. With a
        ``text_loader`` a later :meth:`encode_text` loads the tower again.
        """
        self.model.release_text()

    after_targets = release_text


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        got = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(f"CLIP expects a floating-point image tensor, got {got}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ImageError(f"CLIP expects images of shape (n, 3, H, W), got {tuple(image.shape)}")
