"""parse_score on judge outputs as judges write them (hand-labelled table).

Each expected value is what a reader takes the judge's verdict to be, on the
0-1 scale the GenRM prompt asks for (None: no usable verdict)."""

import pytest

from mm_rlhf_jax.rewards.genrm import parse_score as genrm_parse_score
from mm_rlhf_jax.rewards.judge_score import parse_score

JUDGE_OUTPUTS = [
    # markdown around the label or the number
    ("The response matches the reference in every step.\n\n**Score:** 0.6", 0.6),
    ("**Score: 0.85**", 0.85),
    ("Score: **0.4**", 0.4),
    ("### Evaluation\nThe final answer is wrong.\n\n### Score\n0.1", 0.1),
    ("__Score__: 0.7", 0.7),
    ("> Score: 1.0", 1.0),
    ("`Score: 0.55`", 0.55),
    ("| Criterion | Value |\n|---|---|\n| Score | 0.3 |", 0.3),
    ('{"reasoning": "correct but terse", "score": 0.75}', 0.75),
    ('{"final_score": 0.9}', 0.9),
    # comma decimals
    ("Score: 0,7", 0.7),
    ("La réponse est correcte mais incomplète.\nScore : 0,65", 0.65),
    ("Score: 7,5/10", 0.75),
    # word boundaries: only the word "score"
    ("The variable name uses an underscore: 0 issues found.\nScore: 0.8", 0.8),
    ("underscore: 0", None),
    ("Scoring rubric applied.", None),
    # several candidates: the last labelled one in range wins
    ("Initial impression. Score: 0.2\nAfter checking the algebra again, it holds.\nScore: 0.9", 0.9),
    ("Score: 0.7\nOn a ten-point scale that would be Score: 7", 0.7),
    ("Score: 0.8\nStyle: a score of 3 out of 5 for clarity.", 0.8),
    ("Correctness is fine; I would give a score of 0.6 overall.", 0.6),
    ("The score is 0.35 because the units are missing.", 0.35),
    ("Score: 1.5 (that was a typo)\nScore: 0.5", 0.5),
    # scales
    ("Score: 8/10", 0.8),
    ("Score: 8 / 10", 0.8),
    ("Score: 4 out of 5", 0.8),
    ("Score: 90%", 0.9),
    ("Score (0-10): 7", 0.7),
    ("Score (0 to 1): 0.4", 0.4),
    ("Score (out of 10): 6", 0.6),
    ("Score: .25", 0.25),
    # word-level detokenisation
    ("Score : 0 . 5", 0.5),
    # bare numbers
    ("0.25", 0.25),
    ("**0.8**", 0.8),
    ("0,5.", 0.5),
    ("8/10", 0.8),
    # no usable verdict
    ("Score: 0.6-0.7", None),
    ("Score: 11/10", None),
    ("Score: 7", None),
    ("Score: -0.2", None),
    ("Score: N/A, the response is empty.", None),
    ('I cannot judge this. End with a line of the form "Score: <number>".', None),
    ("The answer is 7", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", JUDGE_OUTPUTS)
def test_judge_outputs(text, expected):
    got = parse_score(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_table_size_and_genrm_uses_this_parser():
    assert len(JUDGE_OUTPUTS) >= 30
    assert genrm_parse_score is parse_score


def test_non_text_raises():
    with pytest.raises(TypeError, match="parse_score: expected str"):
        parse_score(None)


def test_bounded_on_long_hostile_output():
    import time
    start = time.monotonic()
    assert parse_score("score: " * 20000 + "score (" * 5000) is None
    assert parse_score("Score: 0.5 " + "9" * 100000) == 0.5
    assert time.monotonic() - start < 2.0
