"""IR-SE building blocks shared by ArcFace and e4e.

TreB1eN's InsightFace_Pytorch defines the improved-residual units with
squeeze-and-excitation (``bottleneck_IR_SE``) that ArcFace IR-SE50
(:mod:`soundguide.encoders.arcface`) and the e4e encoder
(:mod:`soundguide.encoders.e4e`) are built from; pSp and e4e copy them
unchanged, so both checkpoints name these layers the same way:

- :func:`ir_se_input_layer`: 3x3 convolution 3 -> 64, batch norm, PReLU;
- :func:`ir_se50_body`: 24 units in stages of 3, 4, 14 and 3 units of 64, 128,
  256 and 512 channels; each stage's first unit has stride 2, so the body
  divides height and width by 16.

torchvision has no IR-SE network, hence this file.
"""

from __future__ import annotations

import torch
from torch import nn

IR_SE50_STAGES: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))
"""(channels, units) per stage of IR-SE50."""
STEM_CHANNELS = 64
SE_REDUCTION = 16

# Attribute names (shortcut_layer, res_layer, fc1, fc2) and the Sequential
# indices are the key names of model_ir_se50.pth and of e4e's encoder.* keys.


class SEModule(nn.Module):
    """Squeeze-and-excitation: scale channels by a gate computed from their means.

    Input: (n, C, H, W). Output: (n, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """One improved-residual unit with squeeze-and-excitation (``bottleneck_IR_SE``).

    The residual branch is BN, 3x3 conv, PReLU, 3x3 conv (with the stride), BN, SE.
    The shortcut subsamples (1x1 max-pool) when the channels stay, and is a
    strided 1x1 convolution + BN when they change.

    Input: (n, in_channels, H, W). Output: (n, depth, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_input_layer() -> nn.Sequential:
    """The stem: 3x3 convolution 3 -> 64 (no bias), batch norm, PReLU.

    Input: (n, 3, H, W). Output: (n, 64, H, W).
    """
    return nn.Sequential(
        nn.Conv2d(3, STEM_CHANNELS, 3, 1, 1, bias=False),
        nn.BatchNorm2d(STEM_CHANNELS),
        nn.PReLU(STEM_CHANNELS),
    )


def ir_se50_body() -> nn.Sequential:
    """The 24 units of IR-SE50 (indices 0-23 are the checkpoints' ``body.<i>``).

    Input: (n, 64, H, W). Output: (n, 512, H / 16, W / 16).
    """
    units: list[nn.Module] = []
    in_channels = STEM_CHANNELS
    for depth, count in IR_SE50_STAGES:
        for i in range(count):
            units.append(BottleneckIRSE(in_channels, depth, stride=2 if i == 0 else 1))
            in_channels = depth
    return nn.Sequential(*units)
