"""Video frame folders: MM-RLHF's uniform sampling, per-frame squash to the tile size."""

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil

from mm_rlhf_jax.data import images, video
from mm_rlhf_jax.data.errors import DataError, Where

CFG = images.ImageProcessorConfig(tile_size=32, pinpoints=images.tiny_pinpoints(32),
                                  image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


def test_sample_indices_hand_computed():
    # np.linspace(0, 11, 10) = 0, 1.22, 2.44, 3.67, 4.89, 6.11, 7.33, 8.56, 9.78, 11 -> floor.
    assert video.sample_frame_indices(12, 10).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 11]
    # Fewer frames than requested repeat (as in MM-RLHF): linspace(0, 2, 10).
    assert video.sample_frame_indices(3, 10).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert video.sample_frame_indices(1, 4).tolist() == [0, 0, 0, 0]


def test_frames_match_transformers_base_image(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(12)]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"frame_{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    pv = video.load_video(str(tmp_path), CFG, num_frames=10)
    assert pv.shape == (10, 3, 32, 32) and pv.dtype == np.float32
    # The LLaVA-OV video processor squashes each frame to the tile size; its PIL equivalent is the
    # image processor's first (base) patch.
    proc = LlavaOnevisionImageProcessorPil(**CFG.to_hf_dict())
    for k, idx in enumerate([0, 1, 2, 3, 4, 6, 7, 8, 9, 11]):
        ref = proc(images=[frames[idx]], return_tensors="np")["pixel_values"][0, 0]
        np.testing.assert_allclose(pv[k], ref, atol=1e-5, rtol=0)
    assert video.num_video_tokens(10, CFG, patch_size=8) == 10 * 2 * 2 + 1


def test_missing_and_empty_folders_name_the_field(tmp_path):
    where = Where("pairs.jsonl", 7)
    with pytest.raises(DataError, match="holds no frames") as info:
        video.load_frames(str(tmp_path), where=where)
    assert (info.value.file, info.value.line, info.value.field) == ("pairs.jsonl", 7, "video")
    with pytest.raises(DataError, match="does not exist"):
        video.load_frames(str(tmp_path / "nope"), where=where)
