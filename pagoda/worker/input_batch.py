"""A step's inputs, flattened: what the model runner builds from a :class:`SchedulerOutput`.

Rows are the step's tokens, request after request in scheduling order. Request ``i`` owns rows
``query_start_loc[i] .. query_start_loc[i + 1] - 1`` at positions ``start .. start + n - 1``;
its K/V go to ``slots`` (``block * block_size + offset``). ``logits_rows`` are the rows whose
logits are sampled: the last ``num_sample_rows`` rows of each request that samples, grouped by
request in ``sample_reqs`` order (several for a speculative verify: its last known token and
its ``spec_token_ids`` are the request's last rows). Prompt-logprob jobs name further rows whose logits are needed.

A row whose input token is not known on the host yet (async scheduling: the previous step is
still sampling it) holds 0 and is listed in ``fills`` as ``(row, row of the previous step's
sampled tokens)``; the runner writes it on the device before the forward reads it.

Nothing here touches the device or changes a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.core.request import Request
from pagoda.core.scheduler import ScheduledRequest, SchedulerOutput


@dataclass
class PromptLogprobJob:
    """Logits rows ``row .. row + count - 1`` (positions ``first_pos ..``) give the logprobs of
    prompt tokens ``first_pos + 1 .. first_pos + count``."""

    request: Request
    row: int
    first_pos: int
    count: int


@dataclass
class StepInputs:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    query_start_loc: list[int] = field(default_factory=lambda: [0])
    query_lens: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)
    block_tables: list[list[int]] = field(default_factory=list)  # one per request (its whole list)
    req_ids: list[str] = field(default_factory=list)
    # Per-request adapter (e.g. LoRA) id, None for the base model.
    adapter_ids: list[int | None] = field(default_factory=list)
    logits_rows: list[int] = field(default_factory=list)
    sample_reqs: list[Request] = field(default_factory=list)
    num_sample_rows: list[int] = field(default_factory=list)  # per entry of sample_reqs
    spec_token_ids: list[list[int]] = field(default_factory=list)  # per entry of sample_reqs: proposals verified
    prompt_logprob_jobs: list[PromptLogprobJob] = field(default_factory=list)
    fills: list[tuple[int, int]] = field(default_factory=list)
    # BERT segment ids of every row, when some request of the step has them (else None: all 0).
    token_type_ids: list[int] | None = None

    @property
    def num_reqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return max(self.query_lens) == 1

    def max_num_blocks(self, block_size: int) -> int:
        """Blocks of the longest sequence: the width the block tables need this step."""
        return max(-(-sl // block_size) for sl in self.seq_lens)

    @property
    def samples_one_row_each(self) -> bool:
        return all(n == 1 for n in self.num_sample_rows)


def prepare_inputs(
    sched: SchedulerOutput, block_ids: dict[str, list[int]], block_size: int, prev_rows: dict[str, int]
) -> StepInputs:
    """Flatten a scheduled step. ``prev_rows``: request id -> its row in the previous step's
    sampled tokens (the source of an input token still being sampled).

    One loop with local lists: this runs every step over every request (about 1 µs per request
    matters at batch 256)."""
    b = StepInputs()
    bs = block_size
    ids, positions, slots, qsl = b.input_ids, b.positions, b.slots, b.query_start_loc
    for s in sched.scheduled:
        req = s.request
        rid = req.request_id
        start, n = s.start, s.num_new_tokens
        end = start + n
        row0 = qsl[-1]
        toks = req.all_token_ids[start:end]
        if s.spec_token_ids:  # a verify: the proposals follow the known tokens
            toks.extend(s.spec_token_ids)
        if len(toks) < n:  # the last token is still being sampled by the step in flight
            if len(toks) != n - 1 or rid not in prev_rows:
                raise RuntimeError(f"request {rid}: {n - len(toks)} unknown input tokens")
            b.fills.append((row0 + n - 1, prev_rows[rid]))
            toks.append(0)
        ids.extend(toks)
        positions.extend(range(start, end))
        blocks = block_ids[rid]
        p = start
        while p < end:  # one range of slots per block touched (a decode or a verify: usually one)
            blk = p // bs
            q = min(end, blk * bs + bs)
            off = (blocks[blk] - blk) * bs
            slots.extend(range(p + off, q + off))
            p = q
        qsl.append(row0 + n)
        b.query_lens.append(n)
        b.seq_lens.append(end)
        b.block_tables.append(blocks)
        b.req_ids.append(rid)
        b.adapter_ids.append(req.adapter_id)
        if s.prompt_logprobs is not None:
            first, count = s.prompt_logprobs
            b.prompt_logprob_jobs.append(PromptLogprobJob(req, row0 + first - start, first, count))
        if s.sample:
            _add_sample_rows(b, s, row0)
        if req.token_type_ids is not None or b.token_type_ids is not None:
            if b.token_type_ids is None:
                b.token_type_ids = [0] * row0
            b.token_type_ids.extend(req.token_type_ids[start:end] if req.token_type_ids else [0] * n)
    return b


def _add_sample_rows(b: StepInputs, s: ScheduledRequest, row0: int) -> None:
    k, n = s.num_sample_rows, s.num_new_tokens
    if k == 1:
        b.logits_rows.append(row0 + n - 1)
    elif 1 < k <= n:
        b.logits_rows.extend(range(row0 + n - k, row0 + n))
    else:
        raise ValueError(f"request {s.request.request_id}: {k} sample rows in a chunk of {n} tokens")
    b.sample_reqs.append(s.request)
    b.num_sample_rows.append(k)
    b.spec_token_ids.append(s.spec_token_ids)
