"""Image augmentation for pixel learners: random shift and colour jitter, per sample."""

import numpy as np
import pytest
import torch

from harvest.learners.augment import augment_images
from harvest.learners.config import AugmentConfig, BCConfig


def bright_dot(batch: int, frames: int | None = None) -> torch.Tensor:
    shape = (batch, *(() if frames is None else (frames,)), 21, 21, 3)
    images = torch.zeros(shape, dtype=torch.uint8)
    images[..., 10, 10, :] = 200
    return images


def dot_positions(images: torch.Tensor) -> np.ndarray:
    flat = images[..., 0].reshape(-1, 21 * 21).argmax(1).numpy()
    return np.stack([flat // 21, flat % 21], axis=1)


def test_shift_moves_each_sample_by_at_most_the_limit_and_keeps_the_pixels():
    generator = torch.Generator().manual_seed(0)
    shifted = augment_images(bright_dot(64), AugmentConfig(shift=3), generator)
    assert shifted.shape == (64, 21, 21, 3) and shifted.dtype == torch.float32
    offsets = dot_positions(shifted) - 10
    assert np.abs(offsets).max() <= 3 and len({tuple(o) for o in offsets}) > 5, "samples shift independently"
    assert (shifted.amax(dim=(1, 2, 3)) == 200).all() and (shifted.sum(dim=(1, 2, 3)) == 600).all()


def test_stacked_frames_of_one_sample_move_together():
    shifted = augment_images(bright_dot(16, frames=4), AugmentConfig(shift=2), torch.Generator().manual_seed(1))
    positions = dot_positions(shifted.reshape(64, 21, 21, 3)).reshape(16, 4, 2)
    assert (positions == positions[:, :1]).all()


def test_colour_jitter_stays_in_range_and_varies_per_sample():
    images = torch.randint(0, 256, (32, 8, 8, 3), dtype=torch.uint8)
    jittered = augment_images(images, AugmentConfig(brightness=0.3, contrast=0.3), torch.Generator().manual_seed(2))
    assert 0 <= float(jittered.min()) and float(jittered.max()) <= 255
    ratios = jittered.mean(dim=(1, 2, 3)) / images.float().mean(dim=(1, 2, 3))
    assert float(ratios.std()) > 0.05 and float((ratios - 1).abs().max()) <= 0.31


def test_no_augmentation_returns_the_input_untouched():
    images = bright_dot(2)
    assert augment_images(images, AugmentConfig()) is images


@pytest.mark.parametrize("cfg", [AugmentConfig(shift=4, brightness=0.2, contrast=0.2)])
def test_a_pixel_clone_still_learns_with_augmentation(tmp_path, cfg):
    from harvest.learners.bc import BCLearner
    from harvest.learners.config import LearnerConfig
    from tests.learners.test_bc import pixel_square_dataset

    dataset = pixel_square_dataset(tmp_path)
    result = BCLearner(
        LearnerConfig(batch_size=64, hidden_sizes=[32], conv_channels=[16, 32], augment=cfg, bc=BCConfig(epochs=6)),
        str(dataset),
        str(tmp_path / "learner"),
    ).train()
    assert max(record.validation_accuracy for record in result.history) > 0.85
