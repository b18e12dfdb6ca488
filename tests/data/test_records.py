"""Record parsing and validation: every error names file, line and field."""

import json

import numpy as np
import pytest
from PIL import Image

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.records import PairRecord, parse_pair, parse_query
from mm_rlhf_jax.data.validation import load_pairs, load_queries, write_jsonl


def _response(text, h, f, e):
    return {"text": text, "scores": {"helpfulness": h, "faithfulness": f, "ethics": e}, "reason": f"about {text}"}


def good_query(**over):
    q = {"id": "q1", "prompt": "What colour is the circle?", "category": "short", "image": "img.png",
         "responses": [_response("red.", 4, 5, 5), _response("The circle is red.", 5, 5, 5),
                       _response("blue.", 2, 1, 5), _response("apples.", 1, 1, 5)],
         "ranking": [1, 0, 2, 3], "ties": [False, False, True]}
    q.update(over)
    return q


def good_pair(**over):
    p = {"id": "q1", "prompt": "What colour?", "chosen": "red.", "rejected": "blue.", "image": "img.png",
         "chosen_reason": "right", "rejected_reason": "wrong", "is_tie": False, "ls_factor": 0.39,
         "reference_chosen_logp": -12.5, "reference_rejected_logp": -20.0}
    p.update(over)
    return p


@pytest.fixture
def image_dir(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return tmp_path


def write_lines(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(path)


def expect_error(load, path, line, field, match):
    with pytest.raises(DataError, match=match) as info:
        load(path)
    err = info.value
    assert (err.file, err.line, err.field) == (path, line, field)
    assert f"{path}:{line}" in str(err) and repr(field) in str(err)


def test_query_parse_ranks_and_round_trip():
    q = parse_query(good_query())
    assert q.rank_groups() == [[1], [0], [2, 3]]
    assert q.ranks() == [1, 0, 2, 2]
    assert q.responses[1].total_score() == 15
    again = parse_query(json.loads(json.dumps(q.to_json())))
    assert again == q


def test_pair_parse_round_trip_exact_format():
    obj = good_pair()
    p = parse_pair(obj)
    assert p.ls_factor == 0.39 and p.reference_rejected_logp == -20.0 and p.delta is None
    assert p.to_json() == obj  # the released pair format, field for field
    assert parse_pair({"id": 7, "prompt": "a", "chosen": "b", "rejected": "c"}) == PairRecord(
        id="7", prompt="a", chosen="b", rejected="c")


@pytest.mark.parametrize("mutate, field, match", [
    (lambda q: q.pop("prompt"), "prompt", "missing required field"),
    (lambda q: q["responses"][2]["scores"].pop("faithfulness"), "responses[2].scores.faithfulness", "missing"),
    (lambda q: q["responses"][0].update(text=3), "responses[0].text", "expected str"),
    (lambda q: q["responses"][1]["scores"].update(ethics=6), "responses[1].scores.ethics", "outside 1..5"),
    (lambda q: q["responses"][1]["scores"].update(ethics="5"), "responses[1].scores.ethics", "expected int"),
    (lambda q: q.update(category="poetry"), "category", "unknown category"),
    (lambda q: q.update(ranking=[1, 0, 1, 3]), "ranking[2]", "duplicate response index 1"),
    (lambda q: q.update(ranking=[1, 0, 2, 4]), "ranking[3]", "out of range"),
    (lambda q: q.update(ranking=[1, 0, 2]), "ranking", r"responses \[3\] are not ranked"),
    (lambda q: q.update(ranking=[1, 0, True, 3]), "ranking[2]", "expected a response index"),
    (lambda q: q.update(ties=[False, True]), "ties", "inconsistent tie flags: 2 flags for 4"),
    (lambda q: q.update(ties=[False, 1, False]), "ties[1]", "expected bool"),
    (lambda q: q.update(video="videos/q1"), "image", "not both"),
    (lambda q: q.update(category="video"), "video", "required for, and only for"),
])
def test_query_errors_name_file_line_field(tmp_path, image_dir, mutate, field, match):
    bad = good_query()
    mutate(bad)
    path = write_lines(image_dir / "data.jsonl", [good_query(), good_query(id="q2"), bad])
    expect_error(load_queries, path, 3, field, match)


@pytest.mark.parametrize("mutate, field, match", [
    (lambda p: p.pop("rejected"), "rejected", "missing required field"),
    (lambda p: p.update(is_tie="no"), "is_tie", "expected bool"),
    (lambda p: p.update(ls_factor=True), "ls_factor", "expected int/float"),
    (lambda p: p.pop("reference_rejected_logp"), "reference_rejected_logp", "both or neither"),
    (lambda p: p.pop("chosen_reason"), "chosen_reason", "both chosen_reason and rejected_reason"),
    (lambda p: p.update(image="bad.png"), "image", "unreadable image"),
    (lambda p: p.update(image="missing.png"), "image", "unreadable image"),
    (lambda p: (p.pop("image"), p.update(video="no_such_dir")), "video", "does not exist"),
    (lambda p: p.update(image=["img.png", "img.png"]), "image", "a list of 2 entries.*one image per record"),
    (lambda p: p.update(image=[]), "image", "a list of 0 entries"),
    (lambda p: p.update(image=[3]), "image", "a list of 1 entries"),
])
def test_pair_errors_name_file_line_field(image_dir, mutate, field, match):
    bad = good_pair()
    mutate(bad)
    path = write_lines(image_dir / "dpo_pairs.jsonl", [good_pair(), bad])
    expect_error(load_pairs, path, 2, field, match)


def test_invalid_json_and_blank_lines(image_dir):
    path = image_dir / "dpo_pairs.jsonl"
    path.write_text(json.dumps(good_pair()) + "\n\n" + '{"id": "q2", "prompt": \n')
    expect_error(load_pairs, str(path), 3, "<json>", "invalid JSON")


def test_media_checks_can_be_skipped_and_write_round_trip(image_dir):
    path = write_lines(image_dir / "dpo_pairs.jsonl", [good_pair(image="missing.png")])
    (rec,) = load_pairs(path, check_media=False)
    assert rec.image == "missing.png" and (rec.where.file, rec.where.line) == (path, 1)
    out = str(image_dir / "copy.jsonl")
    write_jsonl(out, [rec])
    assert load_pairs(out, check_media=False) == [rec]


def test_release_variants_list_image_and_missing_id(image_dir):
    """The released loader accepts `image` as a list; `id` is unverified in the release (papers.md §1(c))."""
    listed = good_pair(image=["img.png"])
    no_id = {k: v for k, v in good_pair().items() if k != "id"}
    other = {**no_id, "prompt": "What shape?"}
    path = write_lines(image_dir / "dpo_pairs.jsonl", [good_pair(), listed, no_id, no_id, other])
    plain, from_list, a, b, c = load_pairs(path)
    assert from_list.image == plain.image == "img.png" and from_list.to_json() == plain.to_json()
    # Without ids, pairs of the same prompt and image are pairs of one query; another prompt is another query.
    assert a.id == b.id != c.id and a.id.startswith("derived:")
