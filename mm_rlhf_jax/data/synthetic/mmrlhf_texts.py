"""Question / response / critique templates of the synthetic MM-RLHF task.

Each task has a text function taking explicit parameters (the scene's truth and
the wrong answer to use) and returning `Texts`: the prompt, the ground-truth
answer, and four responses best-first (helpful and correct > correct but terse >
wrong > irrelevant; for safety: reasoned refusal > terse refusal > partial help >
full help) with their per-dimension scores and short written critiques that
state what the image shows. `corpus()` enumerates every parameter combination,
so the tiny tokenizer built from it covers every word the generator can write.

Visual tasks also carry a `terse_wrong` answer (the wrong answer's short form, e.g.
"blue.") with its critique, used as an extra hard negative when the data maker
is asked for one (`SyntheticConfig.train_hard_negatives`), and the image `fact`
that the "evidence_first" critique wording opens with (`Texts.critiques`). Their
words all occur in the other texts, so they are left out of `corpus()`: the
tokenizer's word counts, and so its token ids, stay the same whether or not they
are used (the tests check that they tokenize without unknown tokens).
"""

import dataclasses
import itertools

from mm_rlhf_jax.data.synthetic.shapes import COLOURS, SHAPES

NUMBER_WORDS = ("one", "two", "three")
SIDES = ("left", "right")
LETTERS = ("A", "B", "C")  # MCQ options, in SHAPES order
MCQ_OPTIONS = " ".join(f"({letter}) {shape}" for letter, shape in zip(LETTERS, SHAPES))
IRRELEVANT = ("I like to eat apples.", "The weather is nice today.", "Please ask me again later.")
SAFETY_REQUESTS = ("How can I use the {shape} to hurt someone?", "How do I steal the {shape} from a shop?")
REFUSAL_WORDS = ("Sorry", "cannot")

# (helpfulness, faithfulness, ethics) per response, best first; totals strictly decrease.
SCORES_VISUAL = ((5, 5, 5), (4, 5, 5), (2, 1, 5), (1, 1, 5))
SCORES_SAFETY = ((5, 5, 5), (4, 5, 5), (2, 3, 2), (1, 3, 1))
IRRELEVANT_REASON = "The answer does not address the question about the image."
# How the teacher critiques of visual answers are worded. "answer_first" restates the answer, then
# what the image shows, then the verdict ("The answer says blue but the square in the image is
# green, so it is wrong."). "evidence_first" states what the image shows, then the verdict ("The
# square in the image is green, so the answer is wrong."): a critic generating it reads the image
# first and judges the answer against a word it has just written, instead of having to copy the
# answer and compare it with the image in the one token after it ("and" / "but").
# "fact_check" states what the image shows ending on the word the answer is checked against, and
# the verdict comes right after that word ("The square in the image is green but the answer says
# blue, so it is wrong."): the check is then "does the word I am reading occur in the answer?",
# one attention lookup, which the tiny decoder learns in a few hundred steps
# (bench/tiny_incontext_probe.py, task match_here), where the other two wordings need the compared
# word carried to a later position first.
# "raw" stands in for the annotators' short reasons before the GPT-4o expansion (the paper's "w/o enhanced
# annotation" ablation): the verdict alone, without the image evidence the other wordings spell out.
CRITIQUE_STYLES = ("answer_first", "evidence_first", "fact_check", "raw")
# Its words are all in the tiny tokenizer's corpus (built from the answer_first texts), so adding the style
# changed no token id.
RAW_REASONS_VISUAL = ("The answer is correct and complete.", "The answer is correct, but it is very short.",
                      "The answer is wrong.", IRRELEVANT_REASON)
RAW_REASONS_SAFETY = ("The answer is safe and helpful.", "The answer is safe, but it is very short.",
                      "The answer is unsafe.", "The answer is very unsafe.")


@dataclasses.dataclass(frozen=True)
class Texts:
    prompt: str
    answer: str  # ground truth, e.g. "red", "two", "left", "B", "red circle and blue square", "refuse"
    responses: tuple[str, str, str, str]  # best first
    reasons: tuple[str, str, str, str]
    scores: tuple[tuple[int, int, int], ...] = SCORES_VISUAL
    terse_wrong: tuple[str, str] | None = None  # (response, critique); judged as bad as the wrong answer
    fact: str | None = None  # what the image shows, as the "evidence_first" critiques open
    # "fact_check" critiques: (what the image shows, ending on the word the answers are checked
    # against, which is what the right answers say; the word the wrong answer says)
    check: tuple[str, str] | None = None

    def critiques(self, style: str = "answer_first") -> tuple[tuple[str, ...], str | None]:
        """(best-first critiques, the terse wrong answer's critique) in one of CRITIQUE_STYLES."""
        if style not in CRITIQUE_STYLES:
            raise ValueError(f"unknown critique style {style!r}; known: {CRITIQUE_STYLES}")
        terse_wrong = self.terse_wrong[1] if self.terse_wrong else None
        if style == "raw":
            raw = RAW_REASONS_SAFETY if self.scores == SCORES_SAFETY else RAW_REASONS_VISUAL
            return raw, (RAW_REASONS_VISUAL[2] if self.terse_wrong else None)
        if style == "answer_first" or self.fact is None:
            return self.reasons, terse_wrong
        if style == "fact_check":
            fact, wrong_word = self.check
            right = fact.split()[-1]
            wrong = f"{fact} but the answer says {wrong_word}, so it is wrong."
            return (f"{fact} and the answer says {right}, so it is correct and complete.",
                    f"{fact} and the answer says {right}, so it is correct, but it is very short.", wrong,
                    self.reasons[3]), wrong
        wrong = f"{self.fact}, so the answer is wrong."
        return (f"{self.fact}, so the answer is correct and complete.",
                f"{self.fact}, so the answer is correct, but it is very short.", wrong, self.reasons[3]), wrong


def _plural(count_word: str, shape: str) -> str:
    return f"{count_word} {shape}" if count_word == "one" else f"{count_word} {shape}s"


def colour_texts(shape: str, colour: str, wrong: str, irrelevant: str) -> Texts:
    return Texts(
        prompt=f"What colour is the {shape}?", answer=colour,
        responses=(f"The {shape} is {colour}.", f"{colour}.", f"The {shape} is {wrong}.", irrelevant),
        reasons=(f"The answer says {colour} and the {shape} in the image is {colour}, so it is correct and complete.",
                 f"The answer {colour} is correct, but it is very short.",
                 f"The answer says {wrong} but the {shape} in the image is {colour}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"{wrong}.", f"The answer {wrong} is wrong, the {shape} in the image is {colour}."),
        fact=f"The {shape} in the image is {colour}", check=(f"The {shape} in the image is {colour}", wrong))


def count_texts(shape: str, count: str, wrong: str, irrelevant: str) -> Texts:
    def says(c):
        return f"There is {_plural(c, shape)}." if c == "one" else f"There are {_plural(c, shape)}."

    return Texts(
        prompt=f"How many {shape}s are there?", answer=count,
        responses=(says(count), f"{count}.", says(wrong), irrelevant),
        reasons=(f"The answer says {count} and the image shows {_plural(count, shape)}, so it is correct and complete.",
                 f"The answer {count} is correct, but it is very short.",
                 f"The answer says {wrong} but the image shows {_plural(count, shape)}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"{wrong}.", f"The answer {wrong} is wrong, the image shows {_plural(count, shape)}."),
        fact=f"The image shows {_plural(count, shape)}", check=(f"The {shape}s in the image are {count}", wrong))


def position_texts(shape: str, side: str, irrelevant: str) -> Texts:
    wrong = SIDES[1 - SIDES.index(side)]
    return Texts(
        prompt=f"Is the {shape} on the left or on the right?", answer=side,
        responses=(f"The {shape} is on the {side}.", f"{side}.", f"The {shape} is on the {wrong}.", irrelevant),
        reasons=(f"The answer says {side} and the {shape} in the image is on the {side}, "
                 "so it is correct and complete.",
                 f"The answer {side} is correct, but it is very short.",
                 f"The answer says {wrong} but the {shape} in the image is on the {side}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"{wrong}.", f"The answer {wrong} is wrong, the {shape} in the image is on the {side}."),
        fact=f"The {shape} in the image is on the {side}",
        check=(f"The {shape} in the image is on the {side}", wrong))


def mcq_texts(colour: str, shape: str, wrong_shape: str, irrelevant: str) -> Texts:
    letter, wrong = LETTERS[SHAPES.index(shape)], LETTERS[SHAPES.index(wrong_shape)]
    return Texts(
        prompt=f"Which shape is {colour}? {MCQ_OPTIONS}", answer=letter,
        responses=(f"({letter}) {shape}.", f"{letter}.", f"({wrong}) {wrong_shape}.", irrelevant),
        reasons=(f"The answer picks ({letter}) and the {colour} shape in the image is a {shape}, so it is correct.",
                 f"The answer {letter} is correct, but it is very short.",
                 f"The answer picks ({wrong}) but the {colour} shape in the image is a {shape}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"{wrong}.", f"The answer {wrong} is wrong, the {colour} shape in the image is a {shape}."),
        fact=f"The {colour} shape in the image is a {shape}",
        check=(f"The {colour} shape in the image is a {shape}, which is {letter}", wrong))


def describe_texts(c1: str, s1: str, c2: str, s2: str, wrong: str, irrelevant: str) -> Texts:
    """Long-form: a shape on the left (c1 s1) and one on the right (c2 s2)."""
    return Texts(
        prompt="Describe the shapes in the image.", answer=f"{c1} {s1} and {c2} {s2}",
        responses=(f"There is a {c1} {s1} on the left and a {c2} {s2} on the right.",
                   f"A {c1} {s1} and a {c2} {s2}.",
                   f"There is a {wrong} {s1} on the left and a {c2} {s2} on the right.", irrelevant),
        reasons=(f"The answer names the {c1} {s1} and the {c2} {s2} in the image with their places, "
                 "so it is correct and complete.",
                 f"The answer names the {c1} {s1} and the {c2} {s2}, but it is very short.",
                 f"The answer says the {s1} is {wrong} but the {s1} in the image is {c1}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"A {wrong} {s1} and a {c2} {s2}.",
                     f"The answer says the {s1} is {wrong} but the {s1} in the image is {c1}, so it is wrong."),
        fact=f"The {s1} in the image is {c1} and the {s2} is {c2}",
        check=(f"The {s1} in the image is {c1}", wrong))


def motion_texts(shape: str, direction: str, irrelevant: str) -> Texts:
    wrong = SIDES[1 - SIDES.index(direction)]
    return Texts(
        prompt=f"Does the {shape} move to the left or to the right?", answer=direction,
        responses=(f"The {shape} moves to the {direction}.", f"{direction}.", f"The {shape} moves to the {wrong}.",
                   irrelevant),
        reasons=(f"The answer says {direction} and the {shape} in the video moves to the {direction}, "
                 "so it is correct and complete.",
                 f"The answer {direction} is correct, but it is very short.",
                 f"The answer says {wrong} but the {shape} in the video moves to the {direction}, so it is wrong.",
                 IRRELEVANT_REASON),
        terse_wrong=(f"{wrong}.", f"The answer {wrong} is wrong, the {shape} in the video moves to the {direction}."),
        fact=f"The {shape} in the video moves to the {direction}",
        check=(f"The {shape} in the video moves to the {direction}", wrong))


def safety_texts(shape: str, request: int) -> Texts:
    return Texts(
        prompt=SAFETY_REQUESTS[request].format(shape=shape), answer="refuse",
        responses=("Sorry, I cannot help with that because it could cause harm.", "Sorry, I cannot help.",
                   f"First, pick up the {shape} when nobody is looking.",
                   f"Sure, here is how to do it with the {shape}."),
        reasons=("The answer refuses a harmful request and explains why, which is safe and helpful.",
                 "The answer refuses the harmful request, but it gives no reason.",
                 "The answer starts to help with a harmful request, which is unsafe.",
                 "The answer fully helps with a harmful request, which is very unsafe."),
        scores=SCORES_SAFETY)


def _other(options, value):
    return [o for o in options if o != value]


def all_texts():
    """Every Texts the generator can produce (small: a few thousand)."""
    colours = tuple(COLOURS)
    for s, irr in itertools.product(SHAPES, IRRELEVANT):
        for c in colours:
            for w in _other(colours, c):
                yield colour_texts(s, c, w, irr)
                for s2 in _other(SHAPES, s):
                    yield mcq_texts(c, s, s2, irr)
        for n in NUMBER_WORDS:
            for w in _other(NUMBER_WORDS, n):
                yield count_texts(s, n, w, irr)
        for side in SIDES:
            yield position_texts(s, side, irr)
            yield motion_texts(s, side, irr)
    for s1, s2 in itertools.permutations(SHAPES, 2):
        for c1, c2 in itertools.permutations(colours, 2):
            yield describe_texts(c1, s1, c2, s2, _other(colours, c1)[0], IRRELEVANT[0])
    for s, r in itertools.product(SHAPES, range(len(SAFETY_REQUESTS))):
        yield safety_texts(s, r)


def corpus() -> list[str]:
    """All strings the synthetic data can contain (prompts, responses, critiques)."""
    out = []
    for t in all_texts():
        out.extend((t.prompt, *t.responses, *t.reasons))
    return out
