"""The dense encoder-decoder hashing network (FCDN, adapted to 2.5-D ROI stacks).

Input ``(n, C, H, W)`` float32 in ``[0, 1]``: ``C`` slices/views through a
nodule centre (default 3 axial), ``H = W = 64`` by default. The encoder is a
stem convolution and three dense blocks of ``BN-ReLU-Conv3x3`` layers (the
paper's 9 convolutions), each followed by a 1x1 transition and max-pooling;
the decoder upsamples bilinearly back to the input size. Heads:

- ``shallow``  hash head on the first dense block (contour, FCDN layer 4);
- ``middle``   hash head on the last encoder block (semantics, FCDN layer 17);
- ``deep``     hash head on a decoder layer at half resolution (size/shape,
  FCDN layer 25);
- ``embedding`` L2-normalised float vector from the last encoder block;
- ``size_logits`` (8 diameter classes) and ``texture_logits`` (3 textures);
- ``reconstruction`` ``(n, C, H, W)`` in ``[0, 1]`` for the pixel loss;
- optional heads, present when the config asks for them (older weights have
  none and load unchanged): ``malignancy_logits`` (benign / malignant, the
  LIDC readers' groups), ``mask_logits`` ``(n, C, H, W)`` (the nodule on
  each plane, from the decoder: FCDN's segmentation output) and
  ``log_diameter`` (the nodule's diameter in mm, as its logarithm).

The config also holds the ROI geometry the network was trained on
(:meth:`HashNetConfig.roi_kwargs`), so that whoever cuts ROIs for a loaded
model (the worker, the evaluations) cuts them as it expects.

Hash heads pool their feature map to ``4 x 4`` (keeping coarse layout), then a
linear layer gives ``K`` relaxed values; the code is their sign.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HashNet", "HashNetConfig", "HashNetOutput"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HashNetConfig:
    """Architecture of :class:`HashNet`.

    Parameters
    ----------
    in_channels : int
        Slices/views per ROI stack ``C``.
    roi_size : int
        ``H = W`` in pixels; a multiple of 8.
    n_bits : int
        Bits per hash layer ``K`` (24, 32, 48 or 64).
    growth : int
        Channels added by each dense layer.
    block_layers : int
        Dense layers per block.
    stem_channels : int
        Channels of the stem convolution.
    embedding_dim : int
        Width of the float embedding.
    n_size_classes, n_textures : int
        Class-head widths.
    n_malignancy : int
        Width of the malignancy head (2: benign, malignant); 0 for none.
    mask_head : bool
        Whether the decoder also predicts the nodule mask of every plane.
    diameter_head : bool
        Whether a head regresses the nodule's log diameter.
    fov_mm : float
        ROI side in mm (``ai.roi.extract_rois``'s ``fov_mm``).
    slice_step_mm : float
        Distance between the ROI's axial planes in mm.
    roi_outside : str
        What ROI samples outside the volume read (``ai.roi.OUTSIDE``).
    """

    in_channels: int = 3
    roi_size: int = 64
    n_bits: int = 64
    growth: int = 12
    block_layers: int = 3
    stem_channels: int = 24
    embedding_dim: int = 128
    n_size_classes: int = 8
    n_textures: int = 3
    n_malignancy: int = 0
    mask_head: bool = False
    diameter_head: bool = False
    fov_mm: float = 48.0
    slice_step_mm: float = 2.0
    roi_outside: str = "air"

    def __post_init__(self) -> None:
        if self.roi_size % 8 or self.roi_size < 16:
            raise ValueError(f"roi_size must be a multiple of 8 and >= 16, got {self.roi_size}")
        if not 8 <= self.n_bits <= 64:
            raise ValueError(f"n_bits must be in 8..64, got {self.n_bits}")
        if self.fov_mm <= 0 or self.slice_step_mm <= 0:
            raise ValueError("fov_mm and slice_step_mm must be positive")

    def roi_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ai.roi.extract_rois`` that cut this network's input."""
        return {
            "fov_mm": self.fov_mm,
            "size": self.roi_size,
            "axial_slices": self.in_channels,
            "slice_step_mm": self.slice_step_mm,
            "outside": self.roi_outside,
        }


class HashNetOutput(NamedTuple):
    """Outputs of :meth:`HashNet.forward` (all float32, batch first)."""

    shallow: torch.Tensor
    """``(n, K)`` relaxed shallow code."""
    middle: torch.Tensor
    """``(n, K)`` relaxed middle code."""
    deep: torch.Tensor
    """``(n, K)`` relaxed deep code."""
    embedding: torch.Tensor
    """``(n, embedding_dim)`` L2-normalised."""
    size_logits: torch.Tensor
    """``(n, n_size_classes)``."""
    texture_logits: torch.Tensor
    """``(n, n_textures)``."""
    reconstruction: torch.Tensor
    """``(n, C, H, W)`` in [0, 1]."""
    malignancy_logits: torch.Tensor | None = None
    """``(n, n_malignancy)`` when the config has a malignancy head."""
    mask_logits: torch.Tensor | None = None
    """``(n, C, H, W)`` nodule-mask logits when the config has a mask head."""
    log_diameter: torch.Tensor | None = None
    """``(n,)`` predicted ``log(diameter_mm)`` when the config has a diameter head."""


class _DenseBlock(nn.Module):
    """``layers`` x (BN-ReLU-Conv3x3), each input the concatenation of all before."""

    def __init__(self, in_channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(in_channels + i * growth),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels + i * growth, growth, 3, padding=1, bias=False),
            )
            for i in range(layers)
        )
        self.out_channels = in_channels + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN-ReLU-Conv1x1 compression then 2x2 max-pooling."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.MaxPool2d(2),
    )


class _Up(nn.Module):
    """Bilinear x2 upsampling, then Conv3x3-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        out: torch.Tensor = self.conv(up)
        return out


class _HashHead(nn.Module):
    """Adaptive average pool to 4x4, flatten, linear to ``n_bits`` relaxed values."""

    def __init__(self, in_channels: int, n_bits: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(in_channels * 16, n_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


class HashNet(nn.Module):
    """Dense encoder-decoder with three hash heads, an embedding and class heads.

    Parameters
    ----------
    config : HashNetConfig
        Architecture.
    """

    def __init__(self, config: HashNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or HashNetConfig()
        self.config = cfg
        g, n_layers = cfg.growth, cfg.block_layers
        # 64 -> 32: stem
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.block1 = _DenseBlock(cfg.stem_channels, g, n_layers)  # H/2: shallow
        c1 = self.block1.out_channels
        self.down1 = _transition(c1, c1 // 2)
        self.block2 = _DenseBlock(c1 // 2, g, n_layers)  # H/4
        c2 = self.block2.out_channels
        self.down2 = _transition(c2, c2 // 2)
        self.block3 = _DenseBlock(c2 // 2, g, n_layers)  # H/8: last encoder layer
        c3 = self.block3.out_channels
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        self.up1 = _Up(c3, 2 * g)  # H/4
        self.up2 = _Up(2 * g, g)  # H/2: deep
        self.up3 = _Up(g, g // 2)  # H
        self.out = nn.Conv2d(g // 2, cfg.in_channels, 1)
        self.hash_shallow = _HashHead(c1, cfg.n_bits)
        self.hash_middle = _HashHead(c3, cfg.n_bits)
        self.hash_deep = _HashHead(g, cfg.n_bits)
        self.embed = nn.Linear(c3, cfg.embedding_dim)
        self.size_head = nn.Linear(c3, cfg.n_size_classes)
        self.texture_head = nn.Linear(c3, cfg.n_textures)
        self.malignancy_head = nn.Linear(c3, cfg.n_malignancy) if cfg.n_malignancy else None
        self.mask_out = nn.Conv2d(g // 2, cfg.in_channels, 1) if cfg.mask_head else None
        self.diameter = (
            nn.Sequential(nn.Linear(c3, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))
            if cfg.diameter_head
            else None
        )

    def forward(self, x: torch.Tensor) -> HashNetOutput:
        """Run the network.

        Parameters
        ----------
        x : torch.Tensor
            ``(n, C, H, W)`` float32 in ``[0, 1]``.
        """
        f1 = self.block1(self.stem(x))
        f3 = self.bottleneck(self.block3(self.down2(self.block2(self.down1(f1)))))
        pooled = torch.flatten(F.adaptive_avg_pool2d(f3, 1), 1)
        u1 = self.up1(f3)
        u2 = self.up2(u1)
        u3 = self.up3(u2)
        recon = torch.sigmoid(self.out(u3))
        return HashNetOutput(
            shallow=self.hash_shallow(f1),
            middle=self.hash_middle(f3),
            deep=self.hash_deep(u2),
            embedding=F.normalize(self.embed(pooled), dim=1),
            size_logits=self.size_head(pooled),
            texture_logits=self.texture_head(pooled),
            reconstruction=recon,
            malignancy_logits=(
                self.malignancy_head(pooled) if self.malignancy_head is not None else None
            ),
            mask_logits=self.mask_out(u3) if self.mask_out is not None else None,
            log_diameter=self.diameter(pooled)[:, 0] if self.diameter is not None else None,
        )

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
