"""Synthetic MM-RLHF data: valid, consistent, deterministic, and answerable only from the pixels."""

import collections
import dataclasses
import filecmp
import os

import numpy as np
import scipy.ndimage

from mm_rlhf_jax.data.pairs import preference_pairs
from mm_rlhf_jax.data.images import load_image
from mm_rlhf_jax.data.validation import list_frames, load_pairs, load_queries
from mm_rlhf_jax.data.synthetic import mmrlhf as S
from mm_rlhf_jax.data.synthetic.shapes import BACKGROUND, COLOURS, SHAPES
from mm_rlhf_jax.data.synthetic.mmrlhf_texts import IRRELEVANT_REASON, LETTERS, NUMBER_WORDS


def split(synthetic_dir, name):
    folder = os.path.join(synthetic_dir, name)
    return (folder, load_queries(os.path.join(folder, "data.jsonl")),
            load_pairs(os.path.join(folder, "dpo_pairs.jsonl")))


def foreground(img):
    return (img != np.asarray(BACKGROUND, np.uint8)).any(-1)


def test_valid_and_consistent(synthetic_dir):
    folder, queries, pairs = split(synthetic_dir, "train")  # loading validates fields and opens all media
    assert len(queries) == 40
    # Every query has 4 responses: C(4, 2) = 6 pairs, ties included (flagged).
    assert len(pairs) == 6 * len(queries)
    n_ties = sum(sum(q.ties) for q in queries)
    assert n_ties > 0 and sum(p.is_tie for p in pairs) == n_ties
    assert len(preference_pairs(pairs)) == 6 * len(queries) - n_ties
    for q in queries:
        totals = [q.responses[i].total_score() for i in q.ranking]
        for k, tied in enumerate(q.ties):
            assert totals[k] == totals[k + 1] if tied else totals[k] > totals[k + 1], q.id
    for p in pairs:
        assert p.delta is not None and (p.delta == 0) == p.is_tie and p.delta >= 0
    assert {q.category for q in queries} == {"short", "mcq", "long", "safety", "video"}
    sizes = {load_image(os.path.join(folder, q.image)).shape[:2] for q in queries if q.image}
    assert sizes == set(S.IMAGE_SIZES)


def components(img):
    """(kind, colour, centre x) of every shape, recognised from the pixels alone."""
    labels, n = scipy.ndimage.label(foreground(img))
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        kind = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        rgb = tuple(int(v) for v in img[ys[0], xs[0]])
        colour = [c for c, v in COLOURS.items() if v == rgb][0]
        out.append((kind, colour, xs.mean()))
    return out


def asked_shape(prompt):
    return [s for s in SHAPES if s in prompt][0]


def test_answers_depend_on_the_image(synthetic_dir):
    folder, queries, _ = split(synthetic_dir, "train")
    _, held, _ = split(synthetic_dir, "heldout")
    answers = collections.defaultdict(set)
    for q in queries + held:
        answers[q.prompt].add(S.ground_truth(q))
    repeated = [p for p, a in answers.items() if len(a) > 1]
    assert len(repeated) >= 5, answers  # the same question has different correct answers across images
    checked = collections.Counter()
    for q in queries + held:
        task, answer = q.meta["task"], S.ground_truth(q)
        folder = os.path.dirname(q.where.file)
        if q.image:
            img = load_image(os.path.join(folder, q.image))
            shapes = components(img)
            if task in ("colour", "count", "position"):
                asked = [s for s in shapes if s[0] == asked_shape(q.prompt)]
        if task == "colour":
            assert [s[1] for s in asked] == [answer], (q.id, shapes)
        elif task == "count":
            assert NUMBER_WORDS[len(asked) - 1] == answer, (q.id, shapes)
        elif task == "position":
            assert [("left" if s[2] < img.shape[1] / 2 else "right") for s in asked] == [answer], (q.id, shapes)
        elif task == "mcq":
            colour = q.prompt.split()[3].rstrip("?")
            (kind,) = [s[0] for s in shapes if s[1] == colour]
            assert LETTERS[SHAPES.index(kind)] == answer, (q.id, shapes)
        elif task == "describe":
            left, right = sorted(shapes, key=lambda s: s[2])
            assert answer == f"{left[1]} {left[0]} and {right[1]} {right[0]}", (q.id, shapes)
        elif task == "motion":
            frames = [load_image(f) for f in list_frames(os.path.join(folder, q.video))]
            xs = [np.nonzero(foreground(f))[1].mean() for f in frames]
            assert (xs[-1] > xs[0]) == (answer == "right") and len(frames) == 12, q.id
        checked[task] += 1
    assert set(checked) == set(S.TASK_CATEGORY), checked


def test_ground_truth_grades_the_ranked_responses(synthetic_dir):
    _, held, _ = split(synthetic_dir, "heldout")
    for q in held:
        best_first = [q.responses[i].text for i in q.ranking]
        grades = [S.is_correct(t, q) for t in best_first]
        # helpful and terse answers (or refusals) are right; the wrong / harmful and irrelevant ones are not
        assert grades == [True, True, False, False], (q.id, best_first, S.ground_truth(q))


def test_deterministic_from_seed(tmp_path):
    cfg = S.SyntheticConfig(num_train=6, num_heldout=2, seed=11)
    a, b = S.write_dataset(str(tmp_path / "a"), cfg), S.write_dataset(str(tmp_path / "b"), cfg)
    c = S.write_dataset(str(tmp_path / "c"), S.SyntheticConfig(num_train=6, num_heldout=2, seed=12))
    for name in ("data.jsonl", "dpo_pairs.jsonl"):
        assert filecmp.cmp(os.path.join(a["train"], name), os.path.join(b["train"], name), shallow=False)
        assert not filecmp.cmp(os.path.join(a["train"], name), os.path.join(c["train"], name), shallow=False)
    (q,) = [q for q in load_queries(os.path.join(a["train"], "data.jsonl")) if q.image][:1]
    np.testing.assert_array_equal(load_image(os.path.join(a["train"], q.image)),
                                  load_image(os.path.join(b["train"], q.image)))


def test_hard_negatives_only_add_a_tied_terse_wrong_answer(tmp_path, tiny_tok_dir):
    from transformers import AutoTokenizer

    base = S.SyntheticConfig(num_train=30, num_heldout=8, seed=5)
    plain = S.write_dataset(str(tmp_path / "plain"), base)
    hard = S.write_dataset(str(tmp_path / "hard"), dataclasses.replace(base, train_hard_negatives=True))
    for name in ("data.jsonl", "dpo_pairs.jsonl"):  # held-out split untouched
        assert filecmp.cmp(os.path.join(plain["heldout"], name), os.path.join(hard["heldout"], name), shallow=False)
    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    plain_q = load_queries(os.path.join(plain["train"], "data.jsonl"))
    hard_q = load_queries(os.path.join(hard["train"], "data.jsonl"))
    hard_pairs = load_pairs(os.path.join(hard["train"], "dpo_pairs.jsonl"))  # loading validates
    slots = collections.Counter()
    for p, h in zip(plain_q, hard_q):
        assert (p.id, p.prompt, p.image, p.video, p.meta) == (h.id, h.prompt, h.image, h.video, h.meta)
        p_best_first = [p.responses[i] for i in p.ranking]
        h_best_first = [h.responses[i] for i in h.ranking]
        if p.meta["task"] == "safety":
            assert h == p
            continue
        # best-first: helpful, terse, wrong, terse wrong, irrelevant; the new one is tied with the wrong one
        extra = h_best_first.pop(3)
        assert h_best_first == p_best_first and h.ties[:2] + h.ties[3:] == p.ties and h.ties[2], h.id
        assert extra.scores == p_best_first[2].scores and not S.is_correct(extra.text, h), (h.id, extra.text)
        assert len(extra.text) < len(p_best_first[2].text)
        assert tok.unk_token_id not in tok(extra.text + " " + extra.reason)["input_ids"], extra
        slots[h.responses.index(extra)] += 1
        # the held-out rule "helpful and terse right, the rest not" holds with the extra answer too
        assert [S.is_correct(r.text, h) for r in [h.responses[i] for i in h.ranking]] == [True, True] + [False] * 3
    assert len(slots) >= 3, slots  # not always stored in the same place
    n_hard = sum(len(q.responses) == 5 for q in hard_q)
    assert n_hard > 0 and len(hard_pairs) == sum(len(q.responses) * (len(q.responses) - 1) // 2 for q in hard_q)


def styled_visual_critiques(tmp_path, tok_dir, style, **cfg):
    """Yield (query, response) for each visual critique of data written with critique wording `style`.

    On the way, checks against the same data in the default wording that only the critiques change
    (same answers, scores, ranking and ties) and that every critique tokenizes without unknown tokens.
    """
    from transformers import AutoTokenizer

    base = S.SyntheticConfig(num_train=30, num_heldout=8, seed=5, **cfg)
    plain = S.write_dataset(str(tmp_path / "plain"), base)
    styled = S.write_dataset(str(tmp_path / style), dataclasses.replace(base, critique_style=style))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for split_name in ("train", "heldout"):
        plain_q = load_queries(os.path.join(plain[split_name], "data.jsonl"))
        styled_q = load_queries(os.path.join(styled[split_name], "data.jsonl"))
        for p, e in zip(plain_q, styled_q):
            assert [(r.text, r.scores) for r in p.responses] == [(r.text, r.scores) for r in e.responses]
            assert (p.ranking, p.ties) == (e.ranking, e.ties)
            for r in e.responses:
                assert tok.unk_token_id not in tok(r.reason)["input_ids"], r.reason
                if e.meta["task"] != "safety" and r.reason != IRRELEVANT_REASON:
                    yield e, r


def test_evidence_first_critiques_state_the_image_then_judge(tmp_path, tiny_tok_dir):
    n_visual = 0
    for e, r in styled_visual_critiques(tmp_path, tiny_tok_dir, "evidence_first"):
        truth = S.ground_truth(e)
        fact, verdict = r.reason.split(", so the answer is ")
        # the fact names the ground truth (for describe: both colours and shapes), whatever the answer
        expected = [SHAPES[LETTERS.index(w)] if w in LETTERS else w for w in truth.split() if w != "and"]
        assert all(word in fact.split() for word in expected), (e.id, fact, truth)
        assert verdict.startswith("correct") == S.is_correct(r.text, e), (e.id, r.text, r.reason)
        n_visual += 1
    assert n_visual > 50


def test_fact_check_critiques_end_the_fact_on_the_checked_word(tmp_path, tiny_tok_dir):
    """"<fact ending on word W> and|but the answer says V, so ...": W is the truth, V is in the answer."""
    import re

    verdicts = collections.Counter()
    for e, r in styled_visual_critiques(tmp_path, tiny_tok_dir, "fact_check", train_hard_negatives=True):
        truth = S.ground_truth(e)
        m = re.fullmatch(r"(.*) (and|but) the answer says (\w+), so it is (correct|wrong)(.*)\.", r.reason)
        assert m, (e.id, r.reason)
        fact, link, said, verdict = m.group(1), m.group(2), m.group(3), m.group(4)
        right = S.is_correct(r.text, e)
        # the fact's last word is the truth (describe: the first shape's colour) ...
        assert fact.split()[-1] == truth.split()[0], (e.id, fact, truth)
        # ... the answer's own word follows, and the verdict comes right after the fact
        assert said in re.findall(r"\w+", r.text), (e.id, said, r.text)
        assert (link == "and") == (verdict == "correct") == right == (said == truth.split()[0]), (e.id, r)
        verdicts[link] += 1
    assert verdicts["and"] > 30 and verdicts["but"] > 30, verdicts


def test_raw_reasons_carry_the_verdict_without_the_image_evidence(tmp_path, tiny_tok_dir):
    """The "w/o enhanced annotation" stand-in: every visual critique is one of the verdict-only reasons,
    right about the answer, and names nothing the image shows (no colour, shape, count or side)."""
    from mm_rlhf_jax.data.synthetic.mmrlhf_texts import RAW_REASONS_VISUAL

    image_words = set(COLOURS) | set(SHAPES) | set(NUMBER_WORDS) | {"left", "right", "image", "video"}
    n = 0  # (the irrelevant answer's reason is the same in every wording and is not yielded)
    for e, r in styled_visual_critiques(tmp_path, tiny_tok_dir, "raw", train_hard_negatives=True):
        assert r.reason in RAW_REASONS_VISUAL[:3], r.reason
        assert not image_words & set(r.reason.rstrip(".").replace(",", "").split()), r.reason
        assert ("correct" in r.reason) == S.is_correct(r.text, e), (e.id, r.text, r.reason)
        n += 1
    assert n > 50
