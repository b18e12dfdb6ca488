"""The checker's structures one by one: relations, chains, labels, matrices,
decimal commas, joined boxes, answers in prose (hand-labelled)."""

import pytest

from mm_rlhf_jax.rewards import math as rmath
from mm_rlhf_jax.rewards.math.extract import choice_letter, extract_choice
from mm_rlhf_jax.rewards.math.relations import is_name


@pytest.mark.parametrize("text, answer", [
    (r"\boxed{1} and \boxed{2}", "1, 2"),
    (r"\boxed{1} then \fbox{2}", "2"),
    (r"\boxed{(1, 2)}, \boxed{(2, 1)}", "(1, 2), (2, 1)"),
    (r"(a) \boxed{4} (b) \boxed{7}", "4, 7"),
    (r"$y_1 = \boxed{2x}$ and $y_2 = \boxed{3x}$", "2x, 3x"),
    (r"\boxed{840} but let me check. **Final Answer** \boxed{840}", "840"),
    (r"\boxed{3}, so 3 + 2 = 5 and \boxed{5}", "5"),
    (r"the rest is \boxed{x = 1", "x = 1"),
    (r"\boxed{255} so far. The final answer is $10,455$.", "10,455"),
    (r"\boxed{5}. The answer is consistent.", "5"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: Jane started 3 hours ago.", "3"),
    ("The answer is Evelyn.", "Evelyn"),
    ("Soucis : 2,74 $ a..", "2,74"),
    ("AZYUK2A", None),
    ("The answer is between 3 and 4.", "between 3 and 4"),  # a hedge stays prose
    ("réponse est (35 + 70 = 105).", "105"),
    ("计划的比例为13/28", "13/28"),
    (r"答案：每份应该是 (\frac{2}{5}) 吨。", r"\frac{2}{5}"),
    (r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $", r"\frac{1}{2} \$ = \frac{10}{9}"),
])
def test_extraction(text, answer):
    assert rmath.extract_answer(text) == answer


@pytest.mark.parametrize("text, letter", [
    ("D. it can't be A or B", "D"), ("The answer is for sure D, it can't be A or B", "D"),
    ("Let's think. It's not A, therefore I think it's B", "B"), ("réponse est C non A", "C"),
    ("B。不是 A", "B"), ("B不是 A", "B"),
    ("The answer is not A", None), ("Let us check option C.", None), ("I think it is A triangle", None),
    ("The answer is (B) or (C).", None),
])
def test_choice_commitments(text, letter):
    assert extract_choice(text) == letter


@pytest.mark.parametrize("reference, letter", [
    ("C Cecile", "C"), ("(D) Alina", "D"), ("C. x = 42", "C"), ("A triangle", None), ("Monday", None),
])
def test_choice_references(reference, letter):
    assert choice_letter(reference) == letter


@pytest.mark.parametrize("text, expected", [
    ("x", True), ("x_1", True), ("f(x)", True), ("W(n)", True), ("|AB|", True), ("A:B", True),
    (r"\frac{NO}{BO}", True), ("(p, q)", True), (r"\angle ABC", True), (r"\alpha", True),
    ("2x", False), ("x + y", False), ("x^2", False), ("we find x", False), (r"\sqrt{x}", False),
    ("7", False),
])
def test_names(text, expected):
    assert is_name(text) is expected


@pytest.mark.parametrize("prediction, reference, expected", [
    # chains: the last exact part is the answer
    ("$x = 5+5+1 = 7 = 11$", "$x = 11$", True),
    ("$x = 5+5+1 = 1/3 \\approx 11$", "$x = 1/3$", True),
    ("$x \\approx 11$", "11", True),
    ("$1 = \\zzz = x = 0$", "0", True),
    ("$7 = 11a+c$", "11a+c", False),
    ("$2x + z = 1$", "1", False),
    # labelled values, equations in other forms
    ("$y=-\\frac{1}{2}x+\\frac{3}{4}$", "$2x+4y-3=0$", True),
    ("$y=-\\frac{1}{2}x+\\frac{1}{4}$", "$2x+4y-3=0$", False),
    ("$(3,2,7)$", "$(p,q,r)=(3,2,7)$", True),
    ("$(5,2),(7,2)$", "$p=5,q=2;p=7,q=2$", True),
    ("$(2,5),(7,2)$", "$p=5,q=2;p=7,q=2$", False),
    ("$\\boxed{a_{37} = 19, \\quad a_3 = 2}$", "$a_3 = 2, a_{37} = 19$", True),
    ("$\\boxed{a_{37} = 2, \\quad a_3 = 19}$", "$a_3 = 2, a_{37} = 19$", False),
    ("W(x)=1orW(x)=-1", "\\boxed{W(n) = 1 \\text{ and } W(n) = -1", True),
    # ratios and times
    ("7:32", "$S_{MBCN}:S=7:32$", True), ("$12:00$", "$1:00$", False),
    # relations
    ("$-x >= -1$", "$x <= 1$", True), ("$x > -1$", "$x < 1$", False),
    ("$(0,1)$", "$0<f(x)<1$", True), ("$(0,1]$", "$0<f(x)<1$", False),
    ("$x \\in [-2,7]$", "$-2 \\\\le x \\\\le 7$", True),
    # matrices
    ("The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$",
     "$\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}$", True),
    ("$\\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right]$", "$\\begin{pmatrix}1 & 2 \\\\3 & 4\\end{pmatrix}$", True),
    ("$\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}$", "$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$", False),
    ("$\\begin{pmatrix}2 & 0 \\\\ 0 & 2\\end{pmatrix}^{2}$", "$\\begin{pmatrix}4 & 0 \\\\ 0 & 4\\end{pmatrix}$", True),
    # decimal commas and thousands
    ("1000,99", "1000.99", True), ("0,111", "0.111", True), ("0,111", "111", False),
    ("$\\boxed{11,\\! 111,\\! 111,\\! 100}$", "11111111100", True),
    ("$21,16,11$", "$21,16$ or $11$", True),
    # series
    ("$\\sum_{k=1}^{10} k$", "55", True), ("$\\sum_{i=1}^{3} i^2$", "14", True),
    ("$F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k$", "$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$", True),
    ("$F_n = \\sum_{k=0}^{n-2} F_k F_{n-k-2}$", "$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$", False),
    # choice letters behind markup
    ("\\mathrm{E}", "E", True), ("\\textbf{A}", "A", True), ("C", "C. x = 42", True), ("B", "C. x = 42", False),
])
def test_pairs(prediction, reference, expected):
    assert rmath.is_equivalent(prediction, reference) is expected


def test_check_reports_what_it_understood():
    assert rmath.check(r"\boxed{\frac12}", "0.5") == (True, True)
    assert rmath.check(r"\boxed{0.6}", "0.5") == (False, True)
    assert rmath.check("The answer is (C).", "B") == (False, True)  # a choice is always read
    assert rmath.check("no answer given", "5") == (False, False)
    assert rmath.check(r"$z \in [-2, -1] \cup [1, 2]$", r"$1 \leq |z| \leq 2$") == (False, False)
    assert rmath.check("Monday", "monday") == (True, False)  # equal as text


@pytest.mark.parametrize("prediction", [
    "\\boxed{" * 5000, "\\boxed{1} and " * 3000, "\\begin{pmatrix}" * 200, "1 = " * 2000,
    "x < " * 1500, "the answer is " * 5000, "\\begin{pmatrix}" + "1&" * 5000 + "\\end{pmatrix}",
    r"\begin{pmatrix}2&0\\0&2\end{pmatrix}^{1000}", r"\sum_{k=1}^{10^{9}} k", "answer: " + "x" * 100000,
])
def test_new_structures_stay_bounded(prediction):
    import time
    start = time.monotonic()
    assert rmath.is_equivalent(prediction, "7") is False
    assert time.monotonic() - start < 2.0
