"""CLIP's image and text towers, with the state-dict keys of OpenAI's released models.

A re-implementation of the architecture of OpenAI's ``clip.model`` (ViT and
modified-ResNet image towers, the causal text transformer) that loads the
released files unchanged, with three differences that matter here:

- the towers are built separately: an edit with only audio or image guidance
  never materializes the text tower (about 40 % of ViT-B/32's weights), and
  :meth:`CLIP.attach_text` adds it later when a text target is needed;
- importing it pulls in neither torchvision nor the ``clip`` package (which
  imports torchvision and pkg_resources: about 165 MB of resident memory);
- attention runs through ``F.scaled_dot_product_attention`` in (N, L, D) layout.

Attribute names (``visual.conv1``, ``transformer.resblocks.0.attn.in_proj_weight``,
``ln_final``, ``text_projection``...) are the checkpoint format's and must not change.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from soundguide.core.memory import file_mappings, release_pages

TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
TEXT_PARAMETERS = ("positional_embedding", "text_projection")
METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Integers that OpenAI's TorchScript archives keep beside the weights."""


def is_text_key(key: str) -> bool:
    """Whether a CLIP state-dict key belongs to the text tower."""
    return key.startswith(TEXT_PREFIXES) or key in TEXT_PARAMETERS


@dataclass(frozen=True)
class CLIPConfig:
    """The architecture, as OpenAI's ``build_model`` reads it off a state dict.

    ``vision_layers`` is an int for a ViT and a 4-tuple of block counts for a
    modified ResNet (whose ``vision_patch_size`` is None).
    """

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int | None
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision_layers, int)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> CLIPConfig:
        """Read the architecture off the tensor shapes (KeyError when a needed key is absent)."""
        if "visual.proj" in state:
            width = state["visual.conv1.weight"].shape[0]
            patch = state["visual.conv1.weight"].shape[-1]
            layers: int | tuple[int, ...] = sum(
                1
                for k in state
                if k.startswith("visual.transformer.resblocks.")
                and k.endswith(".attn.in_proj_weight")
            )
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            resolution = patch * grid
            embed_dim = state["visual.proj"].shape[1]
        else:
            layers = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")})
                for b in (1, 2, 3, 4)
            )
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            patch = None
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            resolution = grid * 32
            embed_dim = state["visual.attnpool.c_proj.weight"].shape[0]
        text = text_config(state) or {  # an image-only state dict: OpenAI's text sizes
            "context_length": 77,
            "vocab_size": 49408,
            "transformer_width": 512,
            "transformer_heads": 8,
            "transformer_layers": 12,
        }
        return cls(
            embed_dim=int(embed_dim),
            image_resolution=int(resolution),
            vision_layers=layers if isinstance(layers, int) else tuple(int(n) for n in layers),  # type: ignore[arg-type]
            vision_width=int(width),
            vision_patch_size=None if patch is None else int(patch),
            **{k: int(v) for k, v in text.items()},
        )


def text_config(state: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """The text tower's sizes read off a state dict, or None when it has no text tower."""
    needed = (
        "text_projection",
        "ln_final.weight",
        "positional_embedding",
        "token_embedding.weight",
    )
    if any(k not in state for k in needed):
        return None
    width = state["ln_final.weight"].shape[0]
    layers = {k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}
    return {
        "context_length": int(state["positional_embedding"].shape[0]),
        "vocab_size": int(state["token_embedding.weight"].shape[0]),
        "transformer_width": int(width),
        "transformer_heads": int(width) // 64,
        "transformer_layers": len(layers),
    }


VIT_B_32 = CLIPConfig(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
"""ViT-B/32, the model SoundCLIP was trained against."""


# -- building blocks ----------------------------------------------------------------

_INIT_FUNCTIONS = ("uniform_", "normal_", "kaiming_uniform_", "xavier_uniform_", "ones_", "zeros_")


@contextmanager
def uninitialized() -> Iterator[None]:
    """Build modules whose weights are about to be replaced, without initializing them.

    ``torch.nn.init`` is bypassed, so large weights stay untouched
    ``torch.empty`` memory (no resident pages) until a state dict is assigned.
    (The meta device would do the same, but its first use imports ~900 modules,
    about 150 MB.) Not thread-safe: it swaps functions of ``torch.nn.init``.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype (as OpenAI's, for fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return super().forward(x)
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x), the activation CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


WEIGHT_FIRST_MAX_ROWS = 256
"""Up to this many rows (tokens times batch) :func:`linear` puts the weight first."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` for a few tokens, as ``(W @ x^T)^T`` on a CPU.

    With a few dozen rows (ViT-B/32 has 50 tokens per image) BLAS is 10-25 %
    faster with the weight as the left operand, forward and, through
    autograd, backward. The result is a transposed view, which the next
    linear layer reads as its contiguous right operand. Otherwise (GPUs,
    more than ``WEIGHT_FIRST_MAX_ROWS`` rows, vectors, mixed dtypes)
    ``F.linear``. Input: (..., in). Output: (..., out).
    """
    rows = x.numel() // max(1, x.shape[-1])
    if (
        x.device.type != "cpu"
        or x.dim() < 2
        or x.dtype != weight.dtype
        or rows > WEIGHT_FIRST_MAX_ROWS
    ):
        return F.linear(x, weight, bias)
    tokens = x.reshape(-1, x.shape[-1]).t()  # (in, T)
    y = torch.mm(weight, tokens) if bias is None else torch.addmm(bias[:, None], weight, tokens)
    return y.t().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Input: (N, L, D). Output: (N, L, D); ``causal`` masks future positions.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). (N, L, D) -> (N, L, D)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock`. Input/Output: (N, L, width)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower. Input: (N, 3, R, R), normalized. Output: (N, output_dim)."""

    def __init__(
        self,
        input_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        grid = input_resolution // patch_size
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        for p in (self.class_embedding, self.positional_embedding, self.proj):
            nn.init.normal_(p, std=scale)

    def patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1`` (stride = kernel = patch) as a matrix product over the patches.

        Input: (N, 3, R, R). Output: (N, grid * grid, width). Equal to the
        convolution up to float rounding, and its input gradient is a product
        and a fold instead of a transposed convolution (about 5x faster on CPU).
        """
        n, c, h, w = x.shape
        p = self.conv1.kernel_size[0]
        if h % p or w % p:
            return self.conv1(x).flatten(2).transpose(1, 2)
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, (h // p) * (w // p), c * p * p)
        return patches @ self.conv1.weight.reshape(self.conv1.out_channels, -1).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (N, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class Bottleneck(nn.Module):
    """Modified-ResNet block: anti-aliased strides (average pooling before strided paths)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token attends to all positions. (N, C, H, W) -> (N, output_dim)."""

    def __init__(self, spacial_dim: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(spacial_dim**2 + 1, embed_dim))
        nn.init.normal_(self.positional_embedding, std=embed_dim**-0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(
            x.dtype
        )
        head = c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, t.shape[1], self.heads, head).transpose(1, 2)

        q = split(self.q_proj(x[:, :1]))
        out = F.scaled_dot_product_attention(q, split(self.k_proj(x)), split(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower (3-conv stem, anti-aliased strides, attention pooling).

    Input: (N, 3, R, R), normalized. Output: (N, output_dim).
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        output_dim: int,
        heads: int,
        input_resolution: int = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        out += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


# -- the model ------------------------------------------------------------------------


class CLIP(nn.Module):
    """Image tower, and optionally the text tower, of a CLIP model.

    ``text=False`` builds the image tower only; :meth:`attach_text` adds the
    text tower from a state dict and :meth:`release_text` frees it again.
    ``encode_image``: (N, 3, R, R) normalized -> (N, embed_dim);
    ``encode_text``: token ids (N, context_length) -> (N, embed_dim).
    """

    def __init__(self, config: CLIPConfig, *, text: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.is_vit:
            assert c.vision_patch_size is not None
            self.visual: nn.Module = VisionTransformer(
                c.image_resolution,
                c.vision_patch_size,
                c.vision_width,
                int(c.vision_layers),  # type: ignore[arg-type]
                c.vision_width // 64,
                c.embed_dim,
            )
        else:
            self.visual = ModifiedResNet(
                c.vision_layers,  # type: ignore[arg-type]
                c.embed_dim,
                c.vision_width * 32 // 64,
                c.image_resolution,
                c.vision_width,
            )
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        if text:
            self._build_text()

    def _build_text(self) -> None:
        c = self.config
        self.transformer = Transformer(
            c.transformer_width, c.transformer_layers, c.transformer_heads
        )
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=c.transformer_width**-0.5)

    @property
    def has_text(self) -> bool:
        return "text_projection" in self._parameters

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def input_resolution(self) -> int:
        return self.config.image_resolution

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def attach_text(self, state: Mapping[str, torch.Tensor]) -> None:
        """Build the text tower from ``state`` (a CLIP state dict; only its text keys are read).

        The tensors are taken as they are (no copy), then cast to the image
        tower's dtype and device one by one.
        """
        if self.has_text:
            return
        text = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if is_text_key(key):
                text[key] = value
        device, dtype = self.logit_scale.device, self.dtype
        sizes = text_config(text)
        if sizes is None:
            missing = [k for k in ("text_projection", "ln_final.weight") if k not in text]
            raise RuntimeError(f"missing keys {missing or ['positional_embedding']}")
        self.config = dataclasses.replace(self.config, **sizes)
        with uninitialized():
            self._build_text()
        try:
            missing, unexpected = self.load_state_dict(text, strict=False, assign=True)
            missing = [k for k in missing if is_text_key(k)]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
        except Exception:
            self.release_text()
            raise
        cast_each(self, dtype, device, copy=True)

    def release_text(self) -> None:
        """Free the text tower; image encoding keeps working."""
        for name in ("transformer", "token_embedding", "ln_final"):
            self._modules.pop(name, None)
        for name in TEXT_PARAMETERS:
            self._parameters.pop(name, None)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.has_text:
            raise RuntimeError("this CLIP model has no text tower (attach_text() adds it)")
        x = self.token_embedding(tokens).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        # the end-of-text token has the largest id of the vocabulary
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def forward(
        self, image: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine logits (image x text, text x image), as OpenAI's model returns them."""
        a = F.normalize(self.encode_image(image), dim=-1)
        b = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * a @ b.t()
        return logits, logits.t()


def cast_each(
    model: nn.Module,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    *,
    copy: bool = False,
) -> None:
    """Move floating parameters and buffers to ``dtype`` (and ``device``) one tensor at a time.

    Each old tensor is dropped as soon as its copy exists, so a cast never
    holds the model twice. Integer buffers (``num_batches_tracked``) keep their dtype.
    ``copy`` copies tensors that need no cast too (to own memory-mapped
    weights) and lets the kernel reclaim each source's file pages at once.
    """
    mappings = file_mappings() if copy else []
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is None:
                    continue
                want = dtype if tensor.is_floating_point() else tensor.dtype
                target = device if device is not None else tensor.device
                if tensor.dtype == want and tensor.device == torch.device(target) and not copy:
                    continue
                moved = tensor.detach().to(device=target, dtype=want, copy=copy)
                table[name] = (
                    nn.Parameter(moved, requires_grad=tensor.requires_grad)
                    if isinstance(tensor, nn.Parameter)
                    else moved
                )
                if copy:  # a memory-mapped source leaves the resident set now
                    release_pages(tensor, mappings)
