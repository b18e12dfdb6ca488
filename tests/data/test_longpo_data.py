"""LongPO data: chunking, prompts, filters, multi-turn packing against independent renderings, grain iterator."""

import numpy as np
import pytest

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.longpo import chunking, filters, prompts
from mm_rlhf_jax.data.longpo.pipeline import SampleSource, make_iterator
from mm_rlhf_jax.data.longpo.samples import SampleLayout, tokenize_sample
from mm_rlhf_jax.data.pipeline import PipelineConfig
from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.data.synthetic import longdoc as longdoc_task


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return longdoc_task.build_tokenizer(str(tmp_path_factory.mktemp("longdoc_tok")), prompts.PHRASES)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def words(text):
    return len(text.split())


def test_group_paragraphs_follows_the_released_rule():
    paras = ["a " * 3, "b " * 4, "c " * 2, "d " * 9, "e " * 1, "f " * 20, "g " * 2]
    chunks = chunking.group_paragraphs(paras, words, max_tokens=8, min_tokens=3)
    # a+b = 7 (c would make 9 > 8) -> kept; c alone then d (9 > 8): c has 2 < 3 -> dropped; d alone is 9 > 8
    # -> dropped; e, then f (20) -> e (1) dropped; f dropped; g (2) < 3 dropped.
    assert [c.split() for c in chunks] == [["a"] * 3 + ["b"] * 4]
    # a..e = 19 tokens (f would make 39 > 30); then f + g = 22.
    assert chunking.group_paragraphs(paras, words, max_tokens=30, min_tokens=0) == [
        "\n\n".join(paras[:5]), "\n\n".join(paras[5:])]
    with pytest.raises(ValueError, match="min_tokens=9, max_tokens=8"):
        chunking.group_paragraphs(paras, words, max_tokens=8, min_tokens=9)


def test_chunk_document_at_most_max_chunks_in_order():
    text = "\n\n".join(f"p{i} x x" for i in range(12))
    out = chunking.chunk_document(text, words, np.random.default_rng(0), max_tokens=6, min_tokens=1, max_chunks=4)
    assert len(out) == 4
    idx = [i for i, _ in out]
    assert idx == sorted(idx) and len(set(idx)) == 4
    for i, chunk in out:  # chunk i holds paragraphs 2i and 2i+1
        assert chunk == f"p{2 * i} x x\n\np{2 * i + 1} x x"


def test_extract_questions_released_regex():
    gen = "1: What is A?\n2: How does B relate to C?\n3. **Why D?**\n4 - Explain E."
    assert prompts.extract_questions(gen) == ["What is A?", "How does B relate to C?", "Why D?", "Explain E"]
    assert prompts.extract_questions(" What is the code of Anna ? ", numbered=False) == ["What is the code of Anna ?"]
    assert prompts.extract_questions("   ", numbered=False) == []


@pytest.mark.parametrize("text,expected", [
    ("abcabcabc", True), ("abcabcab", False), ("aaaa", True), ("abab", False), ("a", False), ("", False)])
def test_check_repetitions_kmp(text, expected):
    assert filters.check_repetitions_kmp(text, 3) is expected


def test_answer_problem_reasons():
    cfg = filters.FilterConfig()
    assert filters.answer_problem("The code of Anna is falcon .", False, cfg) is None
    assert filters.answer_problem("Sorry , I cannot find it in the text .", False, cfg) == "refused"
    assert filters.answer_problem("As an AI assistant I will not say.", False, cfg) == "refused"
    assert filters.answer_problem("falcon .", False, cfg) == "short"
    assert filters.answer_problem("The code is falcon falcon falcon and more", False, cfg) == "repetitive"
    assert filters.answer_problem("it is a b c it is a b c it is a b c", False, cfg) == "repetitive"
    assert filters.answer_problem("The code of Anna is falcon .", True, cfg) == "truncated"
    assert filters.has_repeated_ngram("one two one two", 3) is False


def _record():
    return {"prompt": "the old lamp rests near the dark road .\n\nThe code of Anna is falcon .",
            "short_prompts": ["The code of Anna is falcon .", "the old lamp rests near the dark road ."],
            "questions": ["As described in the preceding text, What is the code of Anna ?",
                          "Reflecting on the content above, What is the code of Ben ?"],
            "chosens": ["The code of Anna is falcon .", "Sorry , I cannot find it in the text ."],
            "rejecteds": ["The code of Anna is copper .", "The code of Ben is maple ."],
            "where": ["samples.jsonl", 7]}


def _full_ids(tok, messages):
    return list(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])


def test_tokenize_sample_matches_independent_rendering(tok):
    rec = _record()
    lay = SampleLayout(max_length=128, max_turns=3, max_short_length=40)
    out = tokenize_sample(tok, rec, lay)

    def conv(answers):
        msgs = []
        for i, (q, a) in enumerate(zip(rec["questions"], answers)):
            msgs += [{"role": "user", "content": (rec["prompt"] + "\n\n" + q) if i == 0 else q},
                     {"role": "assistant", "content": a}]
        return msgs

    chosen, rejected = _full_ids(tok, conv(rec["chosens"])), _full_ids(tok, conv(rec["rejecteds"]))
    p, rf = int(out["prompt_last"]) + 1, int(out["rejected_first"])
    ids, pos, br, seg = out["input_ids"], out["positions"], out["branch_ids"], out["segment_ids"]
    n = int(seg.sum())
    assert ids[:rf].tolist() == chosen and rf == len(chosen)
    assert ids[:p].tolist() + ids[rf:n].tolist() == rejected
    assert pos[:rf].tolist() == list(range(rf)) and pos[rf:n].tolist() == list(range(p, len(rejected)))
    assert set(br[:p]) == {0} and set(br[p:rf]) == {1} and set(br[rf:n]) == {2} and not seg[n:].any()
    # The prompt ends with the assistant header; the first answer starts the branches.
    assert tok.decode(ids[p - 2:p].tolist()) == "<|im_start|> assistant"
    decode = lambda m: tok.decode(ids[m > 0].tolist())
    assert decode(out["chosen_mask"]) == ("The code of Anna is falcon . <|im_end|> "
                                          "Sorry , I cannot find it in the text . <|im_end|>")
    assert decode(out["rejected_mask"]) == "The code of Anna is copper . <|im_end|> The code of Ben is maple . <|im_end|>"
    assert out["nll_mask"].tolist() == [0.0] + [1.0] * (rf - 1) + [0.0] * (128 - rf)
    # Reference inputs: chat(C_Si + "\n\n" + I_i, y) per turn and side; the third turn slot is empty.
    for side, field in enumerate(("chosens", "rejecteds")):
        for i in range(2):
            msgs = [{"role": "user", "content": rec["short_prompts"][i] + "\n\n" + rec["questions"][i]},
                    {"role": "assistant", "content": rec[field][i]}]
            full = _full_ids(tok, msgs)
            row, mask = out["ref_input_ids"][side, i], out["ref_loss_mask"][side, i]
            assert row[:len(full)].tolist() == full and out["ref_attention_mask"][side, i].sum() == len(full)
            assert tok.decode(row[mask > 0].tolist()) == rec[field][i] + " <|im_end|>"
        assert not out["ref_attention_mask"][side, 2].any()
    responses = tokenize_sample(tok, rec, SampleLayout(128, 3, 40, nll_tokens="responses"))
    np.testing.assert_array_equal(responses["nll_mask"], out["chosen_mask"])


def test_tokenize_sample_errors_name_record_and_sizes(tok):
    rec = _record()
    with pytest.raises(DataError, match=r"samples.jsonl:7: field 'prompt': packed sample is \d+ tokens .* > "
                                        r"max_length=40"):
        tokenize_sample(tok, rec, SampleLayout(max_length=40, max_turns=2, max_short_length=40))
    with pytest.raises(DataError, match="2 turns > max_turns=1"):
        tokenize_sample(tok, rec, SampleLayout(max_length=128, max_turns=1, max_short_length=40))
    with pytest.raises(DataError, match="field 'short_prompts': turn 0 .* > max_short_length=10"):
        tokenize_sample(tok, rec, SampleLayout(max_length=128, max_turns=2, max_short_length=10))
    with pytest.raises(DataError, match=r"response tokens > max_response_tokens=5"):
        tokenize_sample(tok, rec, SampleLayout(128, 2, 40, nll_tokens="responses", max_response_tokens=5))
    with pytest.raises(ValueError, match="nll_tokens must be one of"):
        SampleLayout(128, 2, 40, nll_tokens="all")


def test_iterator_is_deterministic_and_resumable(tok_dir, tok):
    recs = []
    for i in range(6):
        r = _record()
        r["chosens"] = [f"The code of Anna is {longdoc_task.VALUES[i]} .", r["chosens"][1]]
        recs.append(r)
    ref = np.arange(12, dtype=np.float32).reshape(6, 2)
    lay = SampleLayout(max_length=128, max_turns=2, max_short_length=40)
    cfg = PipelineConfig(batch_size=2, seed=3, num_epochs=None, shard_index=0, shard_count=1)
    it = make_iterator(SampleSource(recs, ref), tok_dir, lay, cfg)
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    later = [next(it) for _ in range(3)]
    it2 = make_iterator(SampleSource(recs, ref), tok_dir, lay, cfg)
    it2.set_state(state)
    for a, b in zip(later, [next(it2) for _ in range(3)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert first[0]["input_ids"].shape == (2, 128) and first[0]["ref_input_ids"].shape == (2, 2, 2, 40)
    # ref_logps travel with their sample: row i's chosen answer names VALUES[i] and its ref row is [2i, 2i+1].
    for batch in first + later:
        for row in range(2):
            i = int(batch["ref_logps"][row, 0]) // 2
            assert longdoc_task.VALUES[i] in tok.decode(batch["input_ids"][row][batch["chosen_mask"][row] > 0].tolist())
    with pytest.raises(ValueError, match=r"ref_logps has shape \(6, 3\), expected \(6, 2\)"):
        SampleSource(recs, np.zeros((6, 3)))


def test_synthetic_task_answers_need_one_passage():
    cfg = longdoc_task.TaskConfig(passages_per_doc=8, facts_per_doc=3)
    docs = longdoc_task.make_documents(0, 3, cfg)
    for d in docs:
        assert len(d.passages) == 8 and len(d.facts) == 3
        names = [n for _, n, _ in d.facts]
        assert len(set(names)) == 3
        for i, name, value in d.facts:
            assert i < 6  # needle span: the first 75% of the passages
            assert longdoc_task.FACT.format(name=name, value=value) in d.passages[i]
            assert d.text.count(f" {name} ") == 1  # only that passage answers the question
        with_facts = {i for i, _, _ in d.facts}
        for j, p in enumerate(d.passages):
            assert ("The code list has" in p) == (j in with_facts)
    recs = longdoc_task.eval_records(docs, 1, chunk_passages=2)
    for r, d in zip(recs, docs):
        assert r["passage"] < 6 and r["short_context"] in r["long_context"]
        assert longdoc_task.FACT.format(name=r["question"].split()[-2], value=r["value"]) in r["short_context"]
    assert longdoc_task.is_correct("The code of Anna is falcon .", "falcon")
    assert not longdoc_task.is_correct("The code of Anna is falcon copper .", "falcon")
    assert not longdoc_task.is_correct("Sorry , I cannot find it in the text .", "falcon")
