"""Typed messages between rank 0 and its worker ranks (msgpack through msgspec; nothing is pickled).

Rank 0 -> worker: :class:`AllocateKV` once, then one :class:`ForwardStep` per step, :class:`StopWorker`
at the end. Worker -> rank 0: :class:`WorkerReady` (after loading its shard) or :class:`WorkerFailed`.
A :class:`ForwardStep` carries the step's flattened forward inputs (what
:func:`pagoda.worker.input_batch.prepare_inputs` made of the scheduler output on rank 0) and the KV
block copies to apply first, and the rows whose logits rank 0 computes (the LM head's gather is a
collective): a worker needs nothing else to run the same forward.
"""

from __future__ import annotations

import msgspec


class ForwardStep(msgspec.Struct, tag="step"):
    input_ids: list[int]
    positions: list[int]
    slots: list[int]
    query_start_loc: list[int]
    query_lens: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    block_copies: list[tuple[int, int]]
    # Rows of the step's hidden states rank 0 computes logits for, one list per compute_logits call in rank 0's
    # order: the vocabulary-parallel LM head gathers each call's logits (every rank takes part).
    logits_rows: list[list[int]] = []
    # Async scheduling: (row of input_ids, row of the previous step's sampled tokens) for tokens the host did not
    # know when the step was scheduled; ``shares_sampled``: rank 0 broadcasts this step's sampled tokens after
    # sampling (the workers keep them for the next step's ``fills``).
    fills: list[tuple[int, int]] = []
    shares_sampled: bool = False
    graph: bool = False  # rank 0 replays its decode CUDA graph; the worker replays its own (captured together)


class AllocateKV(msgspec.Struct, tag="alloc"):
    num_blocks: int


class StopWorker(msgspec.Struct, tag="stop"):
    pass


class WorkerReady(msgspec.Struct, tag="ready"):
    rank: int
    num_blocks: int


class WorkerFailed(msgspec.Struct, tag="failed"):
    rank: int
    error: str


ToWorker = ForwardStep | AllocateKV | StopWorker
FromWorker = WorkerReady | WorkerFailed

encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)
