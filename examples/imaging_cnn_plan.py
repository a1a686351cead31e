"""A small CNN as a custom training plan: what a researcher submits for an imaging study.

Cordiale's trainer, DP, secure aggregation and evaluation run around ``build_model``. With
``local_layers = ["bn"]`` in the study spec, the batch-norm layers stay at each site (FedBN), the
usual answer to scanner differences between sites.
"""

import torch
from torch import nn


class LesionNet(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3))).squeeze(-1)


def build_model(num_features: int) -> nn.Module:
    return LesionNet(num_features)  # for images, num_features is the number of channels
