"""Feature extraction for evaluation: no grad, fp16 autocast on CUDA, optional flip TTA.

fp16, not the bf16 that training uses: bf16 keeps 8 mantissa bits, so a GPU trial's features
(and its mAP) would differ from ``reidsearch eval``'s fp32 ones in the third digit; fp16 keeps
11, and the normalised features are accumulated and returned in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def extract_features(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    *,
    flip: bool = False,
    device: str | torch.device | None = None,
    amp: bool = True,
) -> torch.Tensor:
    """L2-normalised float32 (N, D) features, on the device the model ran on (the metrics and
    re-ranking run there too).

    ``flip`` averages each image's feature with its horizontal mirror's before normalising.
    Autocast (fp16) runs only on CUDA: CPU half precision is slow on most CPUs.
    """
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for x in batches:
            if device is not None:
                x = x.to(device, non_blocking=True)
            use_amp = amp and x.device.type == "cuda"
            with torch.autocast(x.device.type, dtype=torch.float16, enabled=use_amp):
                f = feature_fn(x).float()
                if flip:
                    f = f + feature_fn(torch.flip(x, dims=[3])).float()
            out.append(F.normalize(f.flatten(1), dim=1))
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
