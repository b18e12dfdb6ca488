"""LongPO pair generation: stages, filters, grouping, resume after a crash (the generator itself: tests/rollout)."""

import dataclasses
import json
import os
import re

import pytest

from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.generate import GenerationConfig, generate_samples, load_samples
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.data.synthetic import longdoc as longdoc_task

@dataclasses.dataclass(frozen=True)
class Reply:  # what generate_samples reads of a generation
    text: str
    truncated: bool


# A fact in every passage (8 distinct names per document), so every chunk can be asked about.
TASK = longdoc_task.TaskConfig(passages_per_doc=8, facts_per_doc=8, needle_span=1.0, min_filler=1, max_filler=2)


class FakeModel:
    """A deterministic stand-in for the model: answers from the text it is shown.

    Self-instruct: asks about the first name of the chunk (no question for chunks whose first
    name is in NO_QUESTION). Short answers are right (refusal for names in REFUSE_SHORT). Long
    answers: the fact of the *first* passage of the document (wrong unless the question is
    about it), a refusal for names in REFUSE_LONG, a repetition for names in REPEAT_LONG.
    """

    NO_QUESTION, REFUSE_SHORT, REFUSE_LONG, REPEAT_LONG = (
        {n for i, n in enumerate(longdoc_task.NAMES) if i % 8 == k} for k in range(4))

    def __init__(self, batch_size, crash_after=None):
        self.batch_size, self.crash_after, self.calls, self.items = batch_size, crash_after, 0, 0

    def __call__(self, conversations, seed):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.items += len(conversations)
        return [Reply(self.reply(c[-1]["content"]), False) for c in conversations]

    def reply(self, content):
        facts = re.findall(r"The code list has (\w+) (\w+) \.", content)
        if content.startswith("Context:"):
            name = facts[0][0]
            return "" if name in self.NO_QUESTION else f"What is the code of {name} ?"
        name = re.search(r"What is the code of (\w+) \?$", content).group(1)
        long = len(facts) == TASK.passages_per_doc
        if name in (self.REFUSE_LONG if long else self.REFUSE_SHORT):
            return longdoc_task.REFUSAL
        if long and name in self.REPEAT_LONG:
            return "code code code code code"
        value = facts[0][1] if long else dict(facts)[name]
        return longdoc_task.ANSWER.format(name=name, value=value)


def stage_text(folder):
    """A stage folder's parts concatenated in write order."""
    return "".join((folder / n).read_text() for n in sorted(os.listdir(folder)) if n.startswith("part-"))


def _setup(tmp_path):
    tok = load_tokenizer(longdoc_task.build_tokenizer(str(tmp_path / "tok"), prompts.PHRASES))
    docs = [{"id": d.doc_id, "text": d.text} for d in longdoc_task.make_documents(5, 12, TASK)]
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    cfg = GenerationConfig(max_chunk_tokens=60, min_chunk_tokens=10, max_chunks_per_doc=3, turns_per_doc=2,
                           min_doc_tokens=0, max_doc_tokens=10_000, query_prompt=longdoc_task.SELF_INSTRUCT_PROMPT,
                           numbered_questions=False, num_questions=0, seed=1)
    return docs, count, cfg


def _generate(out_dir, docs, count, cfg, model):
    return generate_samples(docs, str(out_dir), count_tokens=count, question_generator=model,
                            answer_generator=model, cfg=cfg, progress=False)


def test_generation_filters_groups_and_resumes_identically(tmp_path):
    docs, count, cfg = _setup(tmp_path)
    full_model = FakeModel(batch_size=4)
    samples, stats = _generate(tmp_path / "full", docs, count, cfg, full_model)

    # Stage accounting: every chunk is asked; NO_QUESTION chunks yield no question; refused / repetitive
    # answers are dropped with their reason; each document keeps <= turns_per_doc turns.
    assert stats["documents_in_length_range"] == 12 and stats["chunks"] == 36
    assert stats["questions"] == 36 - sum(json.loads(line)["question"] is None
                                          for line in stage_text(tmp_path / "full" / "questions").splitlines())
    drops = stats["dropped"]
    assert set(drops) <= {"chosen_refused", "rejected_refused", "rejected_repetitive", "doc_too_few_turns"}
    assert drops["chosen_refused"] >= 1 and drops["rejected_refused"] + drops["rejected_repetitive"] >= 1
    assert stats["samples"] == len(samples) > 0
    by_id = {d["id"]: d["text"] for d in docs}
    for s in samples:
        assert 1 <= len(s["chosens"]) <= 2 and s["prompt"] == by_id[s["doc_id"]]
        for chunk, q, y_s, y_l in zip(s["short_prompts"], s["questions"], s["chosens"], s["rejecteds"]):
            name = re.search(r"code of (\w+) \?$", q).group(1)
            assert chunk in s["prompt"] and any(q.startswith(p + " ") for p in prompts.PHRASES)
            assert name not in FakeModel.REFUSE_SHORT | FakeModel.REFUSE_LONG | FakeModel.REPEAT_LONG
            truth = dict(re.findall(r"The code list has (\w+) (\w+) \.", chunk))[name]
            assert y_s == f"{name} {truth} ." and y_l.startswith(f"{name} ")
    assert load_samples(str(tmp_path / "full" / "samples.jsonl"))[0]["questions"] == samples[0]["questions"]

    # Crash in the middle of the chosen stage, leave a half-written part (the temporary file of an
    # interrupted write), resume: same files, no repeated work.
    crash = FakeModel(batch_size=4, crash_after=12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _generate(tmp_path / "resumed", docs, count, cfg, crash)
    (tmp_path / "resumed" / "chosen" / ".tmp_interrupted").write_text('{"key": "torn')
    resumed = FakeModel(batch_size=4)
    samples2, stats2 = _generate(tmp_path / "resumed", docs, count, cfg, resumed)
    strip = lambda ss: [{k: v for k, v in s.items() if k != "where"} for s in ss]  # "where" names the file
    assert strip(samples2) == strip(samples) and stats2 == stats
    assert crash.items + resumed.items == full_model.items
    for name in ("questions", "chosen", "rejected"):
        assert stage_text(tmp_path / "full" / name) == stage_text(tmp_path / "resumed" / name), name
        assert sorted(os.listdir(tmp_path / "full" / name)) == [n for n in sorted(os.listdir(tmp_path / "resumed" / name))
                                                              if n.startswith("part-")], name
    assert (tmp_path / "full" / "samples.jsonl").read_text() == (tmp_path / "resumed" / "samples.jsonl").read_text()
    # A finished directory is read back without calling the model.
    idle = FakeModel(batch_size=4, crash_after=0)
    assert strip(_generate(tmp_path / "resumed", docs, count, cfg, idle)[0]) == strip(samples)


def test_keep_refused_rejected_keeps_long_context_refusals(tmp_path):
    docs, count, cfg = _setup(tmp_path)
    released, r_stats = _generate(tmp_path / "released", docs, count, cfg, FakeModel(batch_size=4))
    kept, k_stats = _generate(tmp_path / "kept", docs, count, dataclasses.replace(cfg, keep_refused_rejected=True),
                              FakeModel(batch_size=4))
    assert "rejected_refused" not in k_stats["dropped"]
    assert k_stats["dropped"]["rejected_repetitive"] == r_stats["dropped"]["rejected_repetitive"]
    refusals = [y for s in kept for y in s["rejecteds"] if y == longdoc_task.REFUSAL]
    assert len(refusals) == r_stats["dropped"]["rejected_refused"] > 0
    assert k_stats["turns_in_samples"] == r_stats["turns_in_samples"] + len(refusals)
    assert all(y != longdoc_task.REFUSAL for s in kept for y in s["chosens"])  # refused y_S still drop the turn


def test_load_samples_errors_name_line_and_field(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = {"prompt": "doc", "short_prompts": ["c"], "questions": ["q"], "chosens": ["a"], "rejecteds": ["b"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejecteds": ["b", "c"]}) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:2: field 'rejecteds': must be a list of 1 strings"):
        load_samples(str(path))
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "chosens"}) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:1: field 'chosens': missing"):
        load_samples(str(path))
