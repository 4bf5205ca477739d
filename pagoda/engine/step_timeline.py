"""An opt-in per-step timeline of the engine core: where a run's time goes, step by step.

Attach a :class:`StepTimeline` to ``EngineCore.step_timeline`` (``pagoda bench throughput|latency
--step-timeline PATH`` do; ``PAGODA_STEP_TIMELINE`` does it in a server's engine-core process) and
every ``EngineCore.step()`` call that launched or waited for a step writes one JSON line. Detached
(``None``, the default), the core pays one attribute test per call and per launch, nothing else.

Fields of a line (times from ``time.perf_counter()`` on the host, in seconds):

* ``step``: index of the call among those recorded; ``run``: the label the recorder was given;
* ``t0``, ``t1``: entry to and exit from ``step()``; ``wall_t1``: ``t1`` on the wall clock (``time.time()``, from one
  offset taken when the recorder was made), to join the lines with a server's ``PAGODA_REQUEST_TRACE``;
* ``num_reqs``, ``prefill_tokens``, ``decode_tokens``: the step launched by this call (0, 0, 0 when it
  launched none, e.g. the call that only drains the last step in flight). A scheduled entry is a
  decode when it starts at or after the end of its prompt and carries one token plus its speculative
  proposals; every other entry (prompt chunks, recomputation after preemption) counts as prefill;
* ``path``: the forward path of that step (``decode_graph``, ``verify_graph``, ``chunk_graph``,
  ``eager``; ``None`` when none was launched), as ``ModelRunner._forward_path`` chose it;
* ``wait_s``: time this call blocked waiting for a device result (``StepHandle.result()``: the
  sampled tokens reaching the host). With async scheduling that is the previous step's result, so
  ``t1 - t0 - wait_s`` is the host's own work (schedule, prepare, launch, update) in the call (with
  pipeline parallelism ``result()`` also runs the last stage, so its compute counts as wait);
* ``out_tokens``: tokens the call returned (with async scheduling, those of the previous step);
* ``num_running``, ``num_waiting``: the scheduler's queues after the call.
"""

from __future__ import annotations

import json
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagoda.core.scheduler import SchedulerOutput
    from pagoda.engine.messages import EngineCoreOutputs


def step_token_counts(sched: SchedulerOutput) -> tuple[int, int]:
    """(prefill tokens, decode tokens) of a scheduled step (rule in the module docstring)."""
    prefill = decode = 0
    for s in sched.scheduled:
        if s.start >= s.request.num_prompt_tokens and s.num_new_tokens <= 1 + len(s.spec_token_ids):
            decode += s.num_new_tokens
        else:
            prefill += s.num_new_tokens
    return prefill, decode


class StepTimeline:
    """Writes one JSON line per recorded ``EngineCore.step()`` call to ``path`` (line-buffered, so a
    process that ends with ``os._exit`` loses nothing). ``append``: add to an existing file."""

    def __init__(self, path: str, run: str = "", append: bool = False) -> None:
        self.run = run
        self._f: IO[str] | None = open(path, "a" if append else "w", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._n = 0
        self._wall_offset = time.time() - time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self._t0 = 0.0
        self._wait = 0.0
        self._launched: tuple[int, int, int, str] | None = None

    # ---- called by the engine core
    def begin(self) -> None:
        self._reset()
        self._t0 = time.perf_counter()

    def launched(self, sched: SchedulerOutput, path: str) -> None:
        prefill, decode = step_token_counts(sched)
        self._launched = (len(sched.scheduled), prefill, decode, path)

    def waited(self, seconds: float) -> None:
        self._wait += seconds

    def end(self, out: EngineCoreOutputs) -> None:
        t1 = time.perf_counter()
        if self._launched is None and self._wait == 0.0:
            return  # an idle call: nothing ran
        n, prefill, decode, path = self._launched or (0, 0, 0, None)
        stats = out.stats
        rec: dict[str, Any] = {
            "step": self._n, "run": self.run, "t0": self._t0, "t1": t1, "wall_t1": t1 + self._wall_offset,
            "num_reqs": n, "prefill_tokens": prefill, "decode_tokens": decode, "path": path,
            "wait_s": self._wait,
            "out_tokens": stats.num_generation_tokens if stats is not None else 0,
            "num_running": stats.num_running if stats is not None else None,
            "num_waiting": stats.num_waiting if stats is not None else None,
        }
        self._n += 1
        if self._f is not None:
            self._f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_timeline(path: str) -> list[dict[str, Any]]:
    """The records of a timeline file, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
