"""Loading a tokenizer (with its chat template) from a folder, offline.

The folder may be a URL (gs://...): transformers reads local files only, so
it is copied once into the local cache first (storage.local_copy). Any
transformers tokenizer folder works (a LLaVA-OneVision / Qwen2 checkpoint,
or the tiny one from `mm_rlhf_jax.data.synthetic.tiny_tokenizer`), as long as it has a
chat template and, for multimodal data, `<image>` / `<video>` tokens that
encode to a single id each.
"""

import dataclasses
import functools
import json
import os
import threading

from mm_rlhf_jax import storage

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Token ids the data layer needs; image/video are None when the tokenizer lacks them."""

    pad: int
    eos: int
    image: int | None
    video: int | None


# Classes that are plain tokenizer.json wrappers: loading them directly is what AutoTokenizer would
# do, without AutoTokenizer's import of torch (seconds per grain worker process).
_PLAIN_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _tokenizer_class(path: str) -> str | None:
    cfg = os.path.join(path, "tokenizer_config.json")
    if not os.path.exists(cfg):
        return None
    with open(cfg, encoding="utf-8") as f:
        return json.load(f).get("tokenizer_class")


def load_tokenizer(path: str):
    """transformers tokenizer from a folder (local, or a URL copied locally; never a hub download);
    requires a chat template."""
    path = storage.local_copy(path)
    if _tokenizer_class(path) in _PLAIN_CLASSES and os.path.exists(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast as cls
    else:
        from transformers import AutoTokenizer as cls

    tok = cls.from_pretrained(path, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"tokenizer at {path!r} has no chat template (tokenizer_config.json or "
                         "chat_template.jinja); preference data is rendered through it")
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {path!r} has neither a pad nor an eos token")
        # Padding positions are masked out everywhere, so any id works; eos is the usual choice.
        tok.pad_token = tok.eos_token
    return tok


_CACHE: dict[str, object] = {}
_CACHE_LOCK = threading.Lock()


def cached_tokenizer(path: str):
    """One tokenizer per process and path (grain workers call this lazily).

    The lock matters: grain maps elements on a thread pool, and threads importing
    transformers' lazy modules at the same time can see a half-initialised module.
    """
    with _CACHE_LOCK:
        if path not in _CACHE:
            _CACHE[path] = load_tokenizer(path)
        return _CACHE[path]


def _single_id(tok, token: str) -> int | None:
    ids = tok.encode(token, add_special_tokens=False)
    if len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token:
        return ids[0]
    return None


@functools.lru_cache(maxsize=16)
def special_ids(tok) -> SpecialIds:
    return SpecialIds(pad=int(tok.pad_token_id), eos=int(tok.eos_token_id),
                      image=_single_id(tok, IMAGE_TOKEN), video=_single_id(tok, VIDEO_TOKEN))


def resolve_tokenizer(explicit: str, init_from: str, synthetic_path: str, build_synthetic=None) -> str:
    """The one tokenizer rule of every run.

    `explicit` (the data block's tokenizer) if set; else the model checkpoint's
    folder (`init_from`); else, for runs on a bundled synthetic task, that
    task's tokenizer, built once into `synthetic_path` by build_synthetic(path).
    """
    if explicit:
        return explicit
    if init_from:
        return init_from
    if build_synthetic is None:
        raise ValueError("set data.tokenizer or model.init_from (the folder holding the tokenizer)")
    from mm_rlhf_jax.data.synthetic import build_once

    return build_once(synthetic_path, build_synthetic)
