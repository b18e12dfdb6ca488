"""tensorflow-datasets builder for MM-RLHF pair data: array_record files, no TensorFlow needed.

`MmRlhfPairs(data_dir=..., source_dir=...)` reads `<source_dir>/<split>/dpo_pairs.jsonl`
(the synthetic layout; any folder of such split files works), validates every
line, decodes the media and writes array_record shards. Images are stored as
uint8 Tensor features (tfds' Image feature needs TensorFlow to encode, env.md §6),
videos as all their frames, uint8[N, H, W, 3]. Reading uses `as_data_source`
(random access; `as_dataset` is tf.data and unsupported for array_record), and
`TfdsPairSource` adapts it to the element format of sources.py so the same grain
pipeline runs on it.

Absent values are stored as sentinels: "" for missing text, NaN for missing
floats, an empty (0, 0, 3) image / (0, 0, 0, 3) video when there is no media.
"""

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mm_rlhf_jax.data.errors import Where
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.sources import query_index
from mm_rlhf_jax.data.validation import list_frames, load_pairs

_TEXT = ("id", "prompt", "chosen", "rejected", "chosen_reason", "rejected_reason", "category",
         "image_path", "video_path", "source_file")
_FLOAT = ("ls_factor", "reference_chosen_logp", "reference_rejected_logp", "delta")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class MmRlhfPairs(tfds.core.GeneratorBasedBuilder):
    """MM-RLHF `dpo_pairs.jsonl` splits with decoded media."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Pairs with uint8 image/video tensors, array_record."}
    # tfds derives this through importlib_resources for builders that live in a package, which
    # this environment lacks; the plain file path is what tfds falls back to anyway.
    code_path = epath.Path(__file__)

    def __init__(self, *, source_dir: str | None = None, splits: tuple[str, ...] = ("train", "heldout"),
                 file_format: str = "array_record", **kwargs):
        self._source_dir = source_dir
        self._splits = tuple(splits)
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo(builder=self) directly: dataset_info_from_configs reads metadata files next to the
        # builder's module, which a library module does not ship (env.md §6).
        feats = {k: tfds.features.Text() for k in _TEXT}
        feats.update({k: tfds.features.Scalar(dtype=np.float32) for k in _FLOAT})
        feats.update(
            is_tie=tfds.features.Scalar(dtype=np.bool_),
            query_id=tfds.features.Scalar(dtype=np.int32),
            source_line=tfds.features.Scalar(dtype=np.int32),
            image=tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
            video=tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib"),
        )
        return tfds.core.DatasetInfo(builder=self, description=__doc__.splitlines()[0],
                                     features=tfds.features.FeaturesDict(feats))

    def _split_generators(self, dl_manager):
        if self._source_dir is None:
            raise ValueError("MmRlhfPairs needs source_dir=<folder with <split>/dpo_pairs.jsonl> to build")
        return {s: self._generate_examples(os.path.join(self._source_dir, s, "dpo_pairs.jsonl"))
                for s in self._splits}

    def _generate_examples(self, path: str):
        from mm_rlhf_jax.data.images import load_image  # PIL decoding at build time only

        root = os.path.dirname(os.path.abspath(path))
        records = load_pairs(path, media_root=root)
        qids = query_index(r.id for r in records)
        for k, rec in enumerate(records):
            image = np.zeros((0, 0, 3), np.uint8)
            video = np.zeros((0, 0, 0, 3), np.uint8)
            if rec.image is not None:
                image = load_image(os.path.join(root, rec.image))
            if rec.video is not None:
                video = np.stack([load_image(f) for f in list_frames(os.path.join(root, rec.video), rec.where)])
            nan = np.float32(np.nan)
            yield k, {
                "id": rec.id, "prompt": rec.prompt, "chosen": rec.chosen, "rejected": rec.rejected,
                "chosen_reason": rec.chosen_reason or "", "rejected_reason": rec.rejected_reason or "",
                "category": rec.category or "", "image_path": rec.image or "", "video_path": rec.video or "",
                "source_file": rec.where.file, "source_line": rec.where.line,
                "ls_factor": nan if rec.ls_factor is None else rec.ls_factor,
                "reference_chosen_logp": nan if rec.reference_chosen_logp is None else rec.reference_chosen_logp,
                "reference_rejected_logp": nan if rec.reference_rejected_logp is None else rec.reference_rejected_logp,
                "delta": nan if rec.delta is None else rec.delta,
                "is_tie": rec.is_tie, "query_id": qids[rec.id], "image": image, "video": video,
            }


def record_from_example(ex: dict) -> PairRecord:
    """Rebuild the PairRecord (with the original file:line provenance) from a stored example."""

    def opt_text(key):
        value = _text(ex[key])
        return value or None

    def opt_float(key):
        value = float(ex[key])
        return None if np.isnan(value) else value

    has_critique = bool(_text(ex["chosen_reason"]) or _text(ex["rejected_reason"]))
    return PairRecord(
        id=_text(ex["id"]), prompt=_text(ex["prompt"]), chosen=_text(ex["chosen"]), rejected=_text(ex["rejected"]),
        image=opt_text("image_path"), video=opt_text("video_path"),
        chosen_reason=_text(ex["chosen_reason"]) if has_critique else None,
        rejected_reason=_text(ex["rejected_reason"]) if has_critique else None,
        is_tie=bool(ex["is_tie"]), ls_factor=opt_float("ls_factor"),
        reference_chosen_logp=opt_float("reference_chosen_logp"),
        reference_rejected_logp=opt_float("reference_rejected_logp"),
        delta=opt_float("delta"), category=opt_text("category"),
        where=Where(_text(ex["source_file"]), int(ex["source_line"])))


class TfdsPairSource:
    """A built MmRlhfPairs split as a grain source (elements as in sources.py, media decoded).

    Dropping ties (`include_ties=False`) reads every example once at construction.
    """

    def __init__(self, data_dir: str, split: str, *, include_ties: bool):
        self.data_dir, self.split = data_dir, split
        self._ds = MmRlhfPairs(data_dir=data_dir).as_data_source(split=split)
        n = len(self._ds)
        self._index = list(range(n)) if include_ties else [i for i in range(n) if not bool(self._ds[i]["is_tie"])]
        if not self._index:
            raise ValueError(f"tfds {data_dir}/{split}: no pairs left (include_ties={include_ties}, {n} stored)")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict:
        ex = self._ds[self._index[index]]
        image, video = np.asarray(ex["image"]), np.asarray(ex["video"])
        return {"record": record_from_example(ex), "query_id": int(ex["query_id"]), "media_root": "",
                "image": image if image.size else None, "video": video if video.size else None}

    def __repr__(self) -> str:
        return f"TfdsPairSource({self.data_dir!r}, split={self.split!r}, {len(self)} pairs)"
