"""Multi-turn LongPO samples -> fixed-shape arrays: one shared-prompt packed long sequence + short reference inputs.

The long conversations (papers.md §3(c), released `apply_chat_template`):

    chosen   = chat([user: C_L + "\\n\\n" + I_1, assistant: y_S1, user: I_2, assistant: y_S2, ...])
    rejected = the same with y_L1, y_L2, ...

share everything up to the first assistant header (the whole document). We pack
them as one sequence with shared-prompt branches, so the document is read once:

    [ prompt x_L (branch 0) | chosen turns (branch 1) | rejected turns (branch 2) | padding ]
    positions: 0..P-1 | P..P+C-1 | P..P+R-1 (the rejected branch restarts after the prompt)

and attention shows branch 0 to both branches and each branch only to itself
(kernels.attention `branch_ids`). Token t is scored from the hidden state at
t - 1, except the first rejected token, which is scored from the last prompt
token (`prompt_last` -> `rejected_first`).

The reference inputs are the short conversations, one per turn and side:
chat([user: C_Si + "\\n\\n" + I_i, assistant: y]) (`ref_*`, [2, turns, L]).

Arrays of one example (T = max_length, K = max_turns, L = max_short_length):
  input_ids, positions, segment_ids (1 real / 0 pad), branch_ids  int32[T]
  chosen_mask, rejected_mask   f32[T]  assistant tokens (content + end-of-turn) of each branch
  nll_mask                     f32[T]  tokens of the chosen sequence S_L scored by the NLL term:
                                       "sequence" = every chosen token after the first (paper Eq. 14,
                                       released code), "responses" = chosen_mask
  prompt_last, rejected_first  int32[]
  ref_input_ids, ref_attention_mask int32[2, K, L]; ref_loss_mask f32[2, K, L]
"""

import dataclasses

import numpy as np

from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.longpo.prompts import user_turn

NLL_SCOPES = ("sequence", "responses")


@dataclasses.dataclass(frozen=True)
class SampleLayout:
    max_length: int  # T: prompt + both branches
    max_turns: int  # K
    max_short_length: int  # L: one reference conversation
    nll_tokens: str = "sequence"  # "sequence" | "responses"
    max_response_tokens: int = 0  # > 0: chosen + rejected response tokens must fit (response-gather mode)

    def __post_init__(self):
        if self.nll_tokens not in NLL_SCOPES:
            raise ValueError(f"nll_tokens must be one of {NLL_SCOPES}, got {self.nll_tokens!r}")


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def render(tok, messages: list[dict], where: Where, field: str) -> tuple[list[int], list[float]]:
    """(ids, assistant mask) of a conversation, rendered incrementally turn by turn.

    Each assistant turn's tokens are the text the template adds after the
    generation prompt (content + end-of-turn). Raises if the template is not
    prefix-stable (rendering a longer conversation must extend the shorter one).
    """
    pieces = []  # (rendered text so far, weight of the text this piece adds)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            pieces.append((tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True), 0.0))
            pieces.append((tok.apply_chat_template(messages[:i + 1], tokenize=False), 1.0))
        else:
            pieces.append((tok.apply_chat_template(messages[:i + 1], tokenize=False), 0.0))
    ids, mask, text_so_far = [], [], ""
    for text, weight in pieces:
        if not text.startswith(text_so_far):
            raise DataError(where, field, "the chat template is not prefix-stable (a longer conversation does not "
                                          "start with the shorter one's rendering); cannot locate the turns")
        new = _ids(tok, text[len(text_so_far):])
        ids += new
        mask += [weight] * len(new)
        text_so_far = text
    return ids, mask


def conversation(first_context: str, questions, answers) -> list[dict]:
    msgs = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        msgs.append({"role": "user", "content": user_turn(first_context if i == 0 else "", q)})
        msgs.append({"role": "assistant", "content": a})
    return msgs


def tokenize_sample(tok, rec: dict, layout: SampleLayout) -> dict[str, np.ndarray]:
    """Arrays of one multi-turn sample (see the module docstring); raises DataError naming the sample."""
    where = Where(*rec["where"]) if "where" in rec else Where("<memory>", 0)
    k = len(rec["questions"])
    if k > layout.max_turns:
        raise DataError(where, "questions", f"{k} turns > max_turns={layout.max_turns}")
    ids_c, mask_c = render(tok, conversation(rec["prompt"], rec["questions"], rec["chosens"]), where, "chosens")
    ids_r, mask_r = render(tok, conversation(rec["prompt"], rec["questions"], rec["rejecteds"]), where, "rejecteds")
    p = mask_c.index(1.0)  # first assistant token: the prompt is identical for both sides
    if ids_c[:p] != ids_r[:p] or mask_r.index(1.0) != p:
        raise DataError(where, "prompt", "chosen and rejected conversations differ before the first answer")
    b1, b2 = ids_c[p:], ids_r[p:]
    t = p + len(b1) + len(b2)
    if t > layout.max_length:
        raise DataError(where, "prompt", f"packed sample is {t} tokens (prompt {p}, chosen turns {len(b1)}, "
                                         f"rejected turns {len(b2)}) > max_length={layout.max_length}")
    n_resp = int(sum(mask_c) + sum(mask_r))
    if layout.max_response_tokens and n_resp > layout.max_response_tokens:
        raise DataError(where, "chosens", f"{n_resp} response tokens > max_response_tokens="
                                          f"{layout.max_response_tokens}")
    T = layout.max_length
    out = {name: np.zeros(T, np.int32) for name in ("input_ids", "positions", "segment_ids", "branch_ids")}
    out.update({name: np.zeros(T, np.float32) for name in ("chosen_mask", "rejected_mask", "nll_mask")})
    out["input_ids"][:t] = ids_c[:p] + b1 + b2
    out["positions"][:t] = np.concatenate([np.arange(p + len(b1)), p + np.arange(len(b2))])
    out["segment_ids"][:t] = 1
    out["branch_ids"][p:p + len(b1)] = 1
    out["branch_ids"][p + len(b1):t] = 2
    out["chosen_mask"][:p + len(b1)] = mask_c
    out["rejected_mask"][p + len(b1):t] = mask_r[p:]
    if layout.nll_tokens == "sequence":
        out["nll_mask"][1:p + len(b1)] = 1.0
    else:
        out["nll_mask"][:] = out["chosen_mask"]
    out["prompt_last"] = np.int32(p - 1)
    out["rejected_first"] = np.int32(p + len(b1))
    out.update(reference_inputs(tok, rec, layout, where))
    return out


def reference_inputs(tok, rec: dict, layout: SampleLayout, where: Where) -> dict[str, np.ndarray]:
    """ref_input_ids / ref_attention_mask int32[2, K, L], ref_loss_mask f32[2, K, L]: chat(C_Si + I_i, y)."""
    K, L = layout.max_turns, layout.max_short_length
    ids = np.zeros((2, K, L), np.int32)
    att = np.zeros((2, K, L), np.int32)
    loss = np.zeros((2, K, L), np.float32)
    for side, field in enumerate(("chosens", "rejecteds")):
        for i, (chunk, q, a) in enumerate(zip(rec["short_prompts"], rec["questions"], rec[field])):
            seq, mask = render(tok, conversation(chunk, [q], [a]), where, "short_prompts")
            if len(seq) > L:
                raise DataError(where, "short_prompts", f"turn {i} short conversation ({field}) is {len(seq)} tokens "
                                                        f"> max_short_length={L}")
            ids[side, i, :len(seq)] = seq
            att[side, i, :len(seq)] = 1
            loss[side, i, :len(seq)] = mask
    return {"ref_input_ids": ids, "ref_attention_mask": att, "ref_loss_mask": loss}


def collate(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
