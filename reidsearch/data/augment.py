"""Batched augmentation on uint8 image tensors, on whatever device the batch lives on.

Why: per-image PIL transforms in DataLoader workers cannot feed a GPU at thousands of images per
second; here flip, pad + crop and random erasing are a handful of tensor ops over the whole batch.
Random numbers are drawn where the generator lives: with one on the batch's device (as the
trainer passes it) a training step copies nothing from the host, a copy that would make the host
wait for the GPU every step. On the CPU the numbers are the same as when every draw was made on
the CPU and copied to the batch's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class BatchAugment:
    """uint8 ``N,H,W,3`` -> float32 ``N,3,height,width``, normalised with the backbone's mean/std.

    Train: resize (if needed), horizontal flip, zero-pad + random crop, random erasing (erased
    pixels become 0 after normalisation, i.e. the mean colour). Eval: resize + normalise.
    """

    def __init__(
        self,
        height: int,
        width: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool = True,
        flip_p: float = 0.5,
        pad: int = 10,
        erasing_p: float = 0.5,
        erasing_area: tuple[float, float] = (0.02, 0.4),
        erasing_ratio: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        self.height, self.width = height, width
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.train = train
        self.flip_p, self.pad, self.erasing_p = flip_p, pad, erasing_p
        self.erasing_area, self.erasing_ratio = erasing_area, erasing_ratio
        # log aspect-ratio bounds as float32 numbers held by Python floats: no tensor to copy
        # to the device each step, and the same float32 arithmetic as with 0-d tensors
        lo, hi = torch.log(torch.tensor(erasing_ratio, dtype=torch.float32))
        self._log_ratio = (float(lo), float(hi - lo))

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a N,H,W,3 batch, got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(
                x,
                size=(self.height, self.width),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            ).clamp_(0, 255)
        if self.train and len(x):
            x = self._flip(x, generator)
            x = self._pad_crop(x, generator)
        mean, std = self._mean_std(x.device)
        x = (x - mean) / std
        if self.train and self.erasing_p > 0 and len(x):
            x = self._erase(x, generator)
        return x.contiguous()

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std on ``device``, copied there once (not every batch)."""
        if device not in self._norm:
            self._norm[device] = (self.mean.to(device), self.std.to(device))
        return self._norm[device]

    @staticmethod
    def _where(g: torch.Generator | None, device: torch.device) -> torch.device:
        return g.device if g is not None else device

    @staticmethod
    def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Numbers drawn by a generator on another device (slow path: a copy per draw)."""
        return t if t.device == device else t.to(device)

    def _rand(self, n: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return self._to(torch.rand(n, generator=g, device=self._where(g, device)), device)

    def _randint(
        self, high: int, n: int, g: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        drawn = torch.randint(0, high, (n,), generator=g, device=self._where(g, device))
        return self._to(drawn, device)

    def _flip(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self.flip_p <= 0:
            return x
        do = self._rand(len(x), g, x.device) < self.flip_p
        return torch.where(do.view(-1, 1, 1, 1), x.flip(-1), x)

    def _pad_crop(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self.pad <= 0:
            return x
        n, c, h, w = x.shape
        pad, dev = self.pad, x.device
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = self._randint(2 * pad + 1, n, g, dev)
        ox = self._randint(2 * pad + 1, n, g, dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev)).view(n, 1, 1, w)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chan = torch.arange(c, device=dev).view(1, c, 1, 1)
        return padded[batch, chan, rows, cols]

    def _erase(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        do = self._rand(n, g, dev) < self.erasing_p
        lo, hi = self.erasing_area
        area = (lo + (hi - lo) * self._rand(n, g, dev)) * (h * w)
        rlo, rspan = self._log_ratio
        ratio = torch.exp(rlo + rspan * self._rand(n, g, dev))
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = (self._rand(n, g, dev) * (h - eh + 1)).floor()
        x0 = (self._rand(n, g, dev) * (w - ew + 1)).floor()
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        inside = (
            (ys >= y0.view(n, 1, 1))
            & (ys < (y0 + eh).view(n, 1, 1))
            & (xs >= x0.view(n, 1, 1))
            & (xs < (x0 + ew).view(n, 1, 1))
        )
        mask = (inside & do.view(n, 1, 1)).unsqueeze(1)
        return x.masked_fill(mask, 0.0)
