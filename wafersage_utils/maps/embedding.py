"""A learned embedding of wafer maps: a small CNN trained on the (noisy) labels, as the paper's ViT.

Maps are pooled to a fixed size (fail fraction and die fraction channels, area averaging), the network
is trained with rotation and flip augmentation, and its penultimate layer is the embedding.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .conventions import FAIL

log = logging.getLogger(__name__)


def pooled_maps(maps, size: int = 32) -> np.ndarray:
    """(N, 2, size, size) float32: fail fraction and die fraction of each map, area-pooled."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(maps):
        groups[m.shape].append(i)
    out = np.zeros((len(maps), 2, size, size), dtype=np.float32)
    for idx in groups.values():
        stack = torch.from_numpy(np.stack([maps[i] for i in idx]))
        chans = torch.stack([(stack == FAIL).float(), (stack > 0).float()], dim=1)  # (n, 2, H, W)
        out[idx] = F.adaptive_avg_pool2d(chans, size).numpy()
    return out


class MapNet(nn.Module):
    """Three conv blocks, global pooling, an embedding layer and a class head."""

    def __init__(self, n_classes: int, dim: int = 64):
        super().__init__()
        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(block(2, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(64, dim), nn.ReLU())
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(self.body(x))  # (B, dim)
        return z, self.head(z)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if torch.rand(1, generator=gen) < 0.5 else x


def _fit(net: MapNet, x: np.ndarray, target: torch.Tensor, loss_fn, epochs: int, lr: float, batch_size: int,
         seed: int) -> list[float]:
    """Train `net` with AdamW and rotation/flip augmentation; returns the mean loss per epoch."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    x_all = torch.from_numpy(x)
    losses = []
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for s in range(0, len(perm), batch_size):
            b = perm[s: s + batch_size]
            _, out = net(_augment(x_all[b], gen))
            loss = loss_fn(out, target[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        losses.append(total / len(x_all))
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, losses[-1])
    net.eval()
    return losses


def _forward_all(net: MapNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.from_numpy(x)
    with torch.no_grad():
        parts = [net(xt[s: s + 512]) for s in range(0, len(xt), 512)]
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


def train_embedding(pooled: np.ndarray, y: np.ndarray, epochs: int = 8, dim: int = 64, lr: float = 3e-3,
                    batch_size: int = 128, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Train :class:`MapNet` on integer labels y; return the embedding (N, dim) and per-epoch losses."""
    torch.manual_seed(seed)
    net = MapNet(int(y.max()) + 1, dim)
    losses = _fit(net, pooled, torch.from_numpy(y.astype(np.int64)), F.cross_entropy, epochs, lr, batch_size, seed)
    return _forward_all(net, pooled)[0], losses


def pattern_net_probabilities(train_x: np.ndarray, train_Y: np.ndarray, test_x: np.ndarray, epochs: int = 10,
                              seed: int = 0) -> np.ndarray:
    """Train :class:`MapNet` with one sigmoid output per pattern; presence probabilities (N, K) of test_x."""
    torch.manual_seed(seed)
    net = MapNet(train_Y.shape[1])
    _fit(net, train_x, torch.from_numpy(train_Y.astype(np.float32)), F.binary_cross_entropy_with_logits,
         epochs, 3e-3, 128, seed)
    return 1.0 / (1.0 + np.exp(-_forward_all(net, test_x)[1]))
