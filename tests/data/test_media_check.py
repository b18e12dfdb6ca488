"""Media checks at load (validation.MediaChecker) and the encoder's decoded-media LRU.

The check must be cheap at every start: headers only (no pixel decode), each
path once however many pairs share it, and nothing opened again on a later
load whose cache says the file (size, mtime) passed before.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from mm_rlhf_jax.data import images as image_lib
from mm_rlhf_jax.data import validation
from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.example import EncoderConfig, ExampleEncoder
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.validation import MediaChecker, load_pairs


def pair(i, image):
    return {"id": f"q{i // 3}", "prompt": "What colour?", "chosen": "red.", "rejected": "blue.", "image": image}


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(tmp_path / name)
    os.makedirs(tmp_path / "vid")
    for k in range(3):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "vid" / f"{k:03d}.jpg")
    # A header PIL identifies, a body that does not decode: the header check passes it (cheap by design).
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 12, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    png = (tmp_path / "n.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
    return tmp_path


def write(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(path)


def test_each_path_is_checked_once_and_cached_across_loads(folder, monkeypatch):
    path = write(folder / "pairs.jsonl", [pair(i, "a.png" if i < 6 else "b.png") for i in range(9)]
                 + [{**pair(9, None), "image": None, "video": "vid"}])
    cache = str(folder / "work" / "media_check.json")
    opened = []
    real = validation.check_image
    monkeypatch.setattr(validation, "check_image", lambda p, *a, **k: (opened.append(os.path.basename(p)),
                                                                         real(p, *a, **k))[1])
    assert len(load_pairs(path, media_cache=cache)) == 10
    assert sorted(opened) == ["000.jpg", "a.png", "b.png"]  # 10 pairs, 3 files: one header read each
    assert set(json.load(open(cache))) == {str(folder / n) for n in ("a.png", "b.png", "vid/000.jpg")}
    opened.clear()
    load_pairs(path, media_cache=cache)
    assert opened == []  # unchanged files: the cache answers
    os.utime(folder / "b.png", (1, 1))  # a changed mtime: checked again
    load_pairs(path, media_cache=cache)
    assert opened == ["b.png"]


def test_header_check_does_not_decode_pixels(folder, monkeypatch):
    Image.init()  # PIL's plugins load (and decode tiny prototype images of their own) before the patch
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("check decoded pixels"))
    assert validation.check_image(str(folder / "truncated.png"), validation.Where()) == (12, 8)
    monkeypatch.undo()
    with pytest.raises(OSError, match="truncated"):  # the file really does not decode
        Image.open(folder / "truncated.png").load()


@pytest.mark.parametrize("image, match", [("missing.png", "unreadable image"), ("pairs.txt", "unreadable image")])
def test_unreadable_media_name_file_line_field(folder, image, match):
    (folder / "pairs.txt").write_text("not an image")
    path = write(folder / "pairs.jsonl", [pair(0, "a.png"), pair(1, image)])
    with pytest.raises(DataError, match=match) as info:
        load_pairs(path, media_cache=str(folder / "cache.json"))
    assert (info.value.file, info.value.line, info.value.field) == (path, 2, "image")


def test_a_damaged_cache_costs_a_recheck_only(folder):
    cache = folder / "cache.json"
    cache.write_text("{not json")
    path = write(folder / "pairs.jsonl", [pair(0, "a.png")])
    checker = MediaChecker(str(cache))
    for rec in load_pairs(path, check_media=False):
        checker.check(rec, str(folder))
    assert checker.opened == 1


def test_encoder_decodes_a_shared_image_once_per_batch(folder, tiny_tok_dir):
    cfg = EncoderConfig(tokenizer_path=tiny_tok_dir, max_length=64, image=image_lib.ImageProcessorConfig(
        tile_size=8, pinpoints=image_lib.tiny_pinpoints(8)), patch_size=4)
    enc = ExampleEncoder(cfg, media_lru=4)
    recs = [PairRecord(id=f"q{i}", prompt="p", chosen="c", rejected="r", image="a.png" if i < 6 else "b.png")
            for i in range(8)]
    arrays = [enc.media_arrays({"record": r, "media_root": str(folder), "image": None, "video": None}, r)[0]
              for r in recs]
    assert enc.decodes == 2  # 8 records, 2 files
    fresh = ExampleEncoder(cfg, media_lru=0)
    want = fresh.media_arrays({"record": recs[7], "media_root": str(folder), "image": None, "video": None},
                              recs[7])[0]
    np.testing.assert_array_equal(arrays[7]["pixel_values"], want["pixel_values"])  # the cache changes nothing
    assert fresh.decodes == 1
    import pickle

    clone = pickle.loads(pickle.dumps(enc))  # grain workers get an encoder without the cached pixels
    assert clone.decodes == 2 and len(clone._lru) == 0
