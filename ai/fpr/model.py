"""The false-positive reduction network: a small 3-D CNN with the candidate's measurements.

Examples::

    net = FprNet(FprConfig())
    logits = net(torch.zeros(4, 2, 16, 24, 24), torch.zeros(4, len(FEATURES)))  # (4,)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ai.fpr.patches import FEATURES, PATCH_SHAPE

__all__ = ["FprConfig", "FprNet"]


@dataclass(frozen=True)
class FprConfig:
    """Shape of :class:`FprNet`.

    Parameters
    ----------
    in_channels : int
        Patch channels (windowed HU and visibility).
    patch_shape : tuple of int
        ``(z, y, x)`` voxels.
    n_features : int
        Length of the measurement vector.
    widths : tuple of int
        Channels of the three convolutions.
    dropout : float
        Before the last layer.
    """

    in_channels: int = 2
    patch_shape: tuple[int, int, int] = PATCH_SHAPE
    n_features: int = len(FEATURES)
    widths: tuple[int, int, int] = (16, 32, 64)
    dropout: float = 0.3

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class FprNet(nn.Module):
    """Patch ``(n, C, z, y, x)`` and features ``(n, F)`` -> nodule logit ``(n,)``.

    Three 3x3x3 convolutions (batch norm, ReLU), the first with stride 2 and
    max-pooling after the second, then global average pooling (small enough
    to train in minutes on two CPU cores); the measurements pass a small
    linear layer and join the image features before a two-layer head.
    """

    def __init__(self, config: FprConfig | None = None) -> None:
        super().__init__()
        self.config = config or FprConfig()
        w1, w2, w3 = self.config.widths
        self.features = nn.Sequential(
            _conv(self.config.in_channels, w1, stride=2),
            _conv(w1, w2),
            nn.MaxPool3d(2),
            _conv(w2, w3),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.measurements = nn.Sequential(
            nn.Linear(self.config.n_features, 16), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(
            nn.Linear(w3 + 16, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
            nn.Linear(32, 1),
        )

    def forward(self, patches: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(n,)`` (``sigmoid`` gives the probability of a nodule)."""
        joined = torch.cat([self.features(patches), self.measurements(features)], dim=1)
        logits: torch.Tensor = self.head(joined)[:, 0]
        return logits
