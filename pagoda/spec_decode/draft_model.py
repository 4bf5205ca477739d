"""Draft-model proposer: a second, smaller pagoda model in the same process proposes ``k`` tokens.

The draft has its own model runner (eager), its own small paged KV cache and block manager, and
one *shadow* request per target request: the target's known tokens followed by the draft's last
proposals. Each round the shadow is synced with the target's tokens: its computed prefix is cut
back to the longest prefix still equal to the target's (accepted proposals keep their K/V,
rejected ones are recomputed), then one step catches up the new tokens and samples the first
proposal (a catch-up longer than ``max_num_batched_tokens``, a new request's prompt, is first computed in
forwards within that budget, as the target's chunked prefill), and ``k - 1`` single-token steps sample the
rest (greedy: the draft is a point mass, which :mod:`pagoda.layers.rejection_sampler` verifies exactly).
Shadows of requests that stopped running are freed; a shadow that finds no free draft block proposes nothing
this round.

The draft must share the target's vocabulary (checked at start-up, naming the key).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from safetensors import safe_open

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request
from pagoda.core.scheduler import ScheduledRequest, SchedulerOutput
from pagoda.sampling_params import SamplingParams
from pagoda.spec_decode.config import SpeculativeConfig

logger = logging.getLogger("pagoda")

_DRAFT_KV_BYTES_CUDA = 1 << 30  # the target sized its cache first; the draft takes a fixed 1 GiB


def draft_engine_config(spec: SpeculativeConfig, target):
    """The draft model's EngineConfig: the target's device, dtype and context; eager; no prefix caching."""
    from pagoda.config import EngineArgs

    dtype = str(target.dtype).removeprefix("torch.")
    args = EngineArgs(
        model=spec.model, revision=spec.revision, quantization=spec.quantization, dtype=dtype,
        device=str(target.device), max_model_len=spec.max_model_len or target.max_model_len,
        block_size=target.block_size, max_num_seqs=target.max_num_seqs,
        max_num_batched_tokens=target.max_num_batched_tokens, enforce_eager=True, enable_prefix_caching=False,
        seed=target.seed, async_scheduling=False,
        kv_cache_memory_bytes=_DRAFT_KV_BYTES_CUDA if target.device.type == "cuda" else None,
    )
    try:
        cfg = args.create_config()
    except (ValueError, FileNotFoundError) as e:  # the draft's folder, config or flags: named as the key
        raise _named(e, Path(str(spec.model))) from e
    if cfg.max_model_len < target.max_model_len:
        raise ValueError(f"speculative_config.max_model_len: the draft's context ({cfg.max_model_len}) is shorter than "
                         f"the target's max_model_len ({target.max_model_len}); lower --max-model-len.")
    return dataclasses.replace(cfg, speculative_config=None)


def _named(e: ValueError | FileNotFoundError, folder: Path) -> Exception:
    """A draft's load error as one naming ``speculative_config.model`` (of the same kind: a missing folder stays a
    FileNotFoundError), with :func:`_head_hint`."""
    kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
    return kind(f"speculative_config.model: {e}{_head_hint(folder)}")


def _head_hint(folder: Path) -> str:
    """A hint when the draft that failed to load is an EAGLE head (an ``fc`` tensor over the target's hidden
    states, or an Eagle architecture name), which ``method: draft_model`` reads as a whole model."""
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
        names: set[str] = set()
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                names.update(st.keys())
    except Exception:  # only a hint: the load error itself is what is reported
        return ""
    if "fc.weight" in names or any("eagle" in str(a).lower() for a in archs):
        return " (this checkpoint looks like an EAGLE head: give method 'eagle' or 'eagle3')"
    return ""


class DraftModelProposer:
    def __init__(self, spec: SpeculativeConfig, target) -> None:
        from pagoda.worker.model_runner import ModelRunner

        self.cfg = draft_engine_config(spec, target)
        try:
            self.runner = ModelRunner(self.cfg)
        except (ValueError, FileNotFoundError) as e:  # the draft's own checkpoint errors, named as the key
            raise _named(e, self.cfg.model_path) from e
        num_blocks = self.runner.determine_num_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        self.kv = KVCacheManager(num_blocks, self.cfg.block_size)
        self.vocab_size = int(self.runner.model.shape.vocab_size)
        self.shadows: dict[str, Request] = {}
        self._params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, detokenize=False)
        logger.info("Draft model %s: %d KV blocks", spec.model, num_blocks)

    def retain(self, request_ids: set[str]) -> None:
        """Free the shadows of requests no longer running."""
        for rid in [r for r in self.shadows if r not in request_ids]:
            self.kv.free(self.shadows.pop(rid))

    def _sync(self, r: Request) -> Request:
        """The shadow of ``r``, its tokens set to ``r``'s and its computed prefix cut to what still matches."""
        sh = self.shadows.get(r.request_id)
        if sh is None:
            sh = self.shadows[r.request_id] = Request(r.request_id, [], self._params, set(), 1 << 30)
        toks = r.all_token_ids
        n = min(sh.num_computed_tokens, len(toks) - 1)
        old = sh.all_token_ids
        common = next((i for i in range(n) if old[i] != toks[i]), n)
        sh.all_token_ids = list(toks)
        sh.num_computed_tokens = common
        return sh

    def _catch_up(self, shadows: list[Request]) -> None:
        """Compute the shadows' new tokens in forwards of at most ``max_num_batched_tokens`` (the target's step
        budget) until what is left, a token or more each, fits one forward: the first proposal's. A new shadow's
        catch-up is the request's whole prompt, which in one forward would pass the budget the target's chunked
        prefill keeps each step under (its memory and its latency)."""
        budget = self.cfg.max_num_batched_tokens
        while sum(sh.num_tokens - sh.num_computed_tokens for sh in shadows) > budget:
            sched, used = SchedulerOutput(), 0
            for sh in shadows:
                n = min(sh.num_tokens - sh.num_computed_tokens - 1, budget - used)  # the last token samples later
                if n > 0:
                    sched.scheduled.append(ScheduledRequest(sh, n, sh.num_computed_tokens, False))
                    used += n
            if not sched.scheduled:  # one token left each, more shadows than the budget: one forward takes them
                return
            self.runner.execute(sched, {s.request.request_id: self.kv.get_block_ids(s.request.request_id)
                                        for s in sched.scheduled})
            for s in sched.scheduled:
                s.request.num_computed_tokens += s.num_new_tokens

    def propose(self, reqs: list[Request], ks: list[int]) -> list[list[int]]:
        shadows: list[Request | None] = []
        out: list[list[int]] = [[] for _ in reqs]
        for r, k in zip(reqs, ks, strict=True):
            sh = self._sync(r)
            need = sh.num_tokens - sh.num_computed_tokens + k - 1  # catch-up, then the proposals fed back
            shadows.append(sh if self.kv.allocate_slots(sh, need) else None)
        live = [i for i, sh in enumerate(shadows) if sh is not None]
        self._catch_up([sh for sh in shadows if sh is not None])
        for step in range(max(ks)):
            sched = SchedulerOutput()
            for i in live:
                cur = shadows[i]
                assert cur is not None
                if step < ks[i]:
                    start = cur.num_computed_tokens
                    sched.scheduled.append(ScheduledRequest(cur, cur.num_tokens - start, start, True))
            if not sched.scheduled:
                break
            block_ids = {s.request.request_id: self.kv.get_block_ids(s.request.request_id) for s in sched.scheduled}
            res = self.runner.execute(sched, block_ids)
            for s in sched.scheduled:
                sh = s.request
                sh.num_computed_tokens = sh.num_tokens
                sh.all_token_ids.append(res.sampled[sh.request_id][0])
            for i in live:
                if step < ks[i]:
                    out[i].append(shadows[i].all_token_ids[-1])  # type: ignore[union-attr]
        return out
