"""Image augmentation for learning from pixels: random shift (DrQ) and colour jitter.

Applied to training minibatches only, on the learner's device, to the observation's image
leaf (`[B, H, W, C]` or stacked `[B, k, H, W, C]`, uint8 or float): every sample gets its own
shift and jitter, the frames of one stacked sample the same ones. Returns float pixels on the
input's scale (0-255 for uint8), which the pixel encoder scales like the originals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harvest.learners.config import AugmentConfig


def augment_images(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """`images` shifted by up to `cfg.shift` pixels (edges repeated) and jittered in brightness
    and contrast by up to `cfg.brightness` / `cfg.contrast` (fractions)."""
    if cfg.shift == 0 and cfg.brightness == 0 and cfg.contrast == 0:
        return images
    top = 255.0 if images.dtype == torch.uint8 else float(images.max().clamp(min=1.0))
    *lead, height, width, channels = images.shape
    batch = images.shape[0]
    x = images.float().reshape(batch, -1, height, width, channels).permute(0, 1, 4, 2, 3)  # [B, k, C, H, W]
    x = x.reshape(batch, -1, height, width)  # [B, k*C, H, W]
    device = x.device
    if cfg.shift:
        pad = cfg.shift
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=device, generator=generator)
        rows = torch.arange(height, device=device)[None, :] + offsets[:, :1]  # [B, H]
        cols = torch.arange(width, device=device)[None, :] + offsets[:, 1:]  # [B, W]
        index = rows[:, None, :, None] * (width + 2 * pad) + cols[:, None, None, :]  # [B, 1, H, W]
        flat = padded.reshape(batch, padded.shape[1], -1)
        x = torch.gather(flat, 2, index.reshape(batch, 1, -1).expand(-1, flat.shape[1], -1)).reshape(x.shape)
    if cfg.brightness:
        factor = 1 + (torch.rand(batch, 1, 1, 1, device=device, generator=generator) * 2 - 1) * cfg.brightness
        x = x * factor
    if cfg.contrast:
        factor = 1 + (torch.rand(batch, 1, 1, 1, device=device, generator=generator) * 2 - 1) * cfg.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    x = x.clamp(0, top)
    x = x.reshape(batch, -1, channels, height, width).permute(0, 1, 3, 4, 2)
    return x.reshape(*lead, height, width, channels)
