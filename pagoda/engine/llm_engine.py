"""The synchronous engine: input processor + in-process engine core + output processor."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from pagoda.config import EngineArgs, EngineConfig
from pagoda.engine import admission
from pagoda.engine.core import EngineCore
from pagoda.engine.input_processor import InputProcessor, PromptType
from pagoda.engine.messages import SchedulerStats
from pagoda.engine.output_processor import OutputProcessor
from pagoda.engine.tokenizer import eos_token_ids, load_tokenizer
from pagoda.errors import ValidationError
from pagoda.lora.request import LoRARequest, check_lora_request
from pagoda.outputs import RequestOutput
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams
from pagoda.worker.cpu_threads import apply_runtime_policy

logger = logging.getLogger("pagoda")


class LLMEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        if cfg.device.type == "cpu":
            apply_runtime_policy()  # torch may have been imported before pagoda: fix what can be fixed
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.core = EngineCore(cfg)
        self.input_processor = InputProcessor(cfg, self.tokenizer, eos_token_ids(cfg, self.tokenizer),
                                              self.core.admission_limits(), cap_to_context=True)
        self.output_processor = OutputProcessor(self.tokenizer, cfg.stream_interval)
        self._ids = itertools.count()
        self.last_stats = SchedulerStats()
        self._shut_down = False

    def shutdown(self) -> None:
        """Free the model, KV caches and CUDA graphs (device memory included); requests still
        queued are dropped. Idempotent; the engine refuses work afterwards."""
        if self._shut_down:
            return
        self._shut_down = True
        self.core.shutdown()

    def _check_open(self) -> None:
        if self._shut_down:
            raise RuntimeError("This engine was shut down (LLM.shutdown() / LLMEngine.shutdown()); create a new "
                               "LLM or LLMEngine.")

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        args.validate()
        if args.data_parallel_size != 1:
            dp = args.data_parallel_size
            raise ValueError(f"data_parallel_size={dp} (--data-parallel-size): the offline engine (LLM, pagoda bench "
                             f"throughput / latency, pagoda chat) runs one engine in this process; serve replicas "
                             f"with `pagoda serve --data-parallel-size {dp}`, or start one LLM per replica (on GPU "
                             f"each in its own process with its own CUDA_VISIBLE_DEVICES).")
        return cls(args.create_config())

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams | None = None, *,
        final_only: bool = False, priority: int = 0, lora_request: LoRARequest | None = None,
    ) -> None:
        """Validate and queue a request. Raises ``ValidationError`` (nothing queued) if invalid.

        ``step()`` reports it as ``params.output_kind`` says (CUMULATIVE, DELTA or FINAL_ONLY). ``final_only``:
        only once, when it finishes, whatever the kind. ``priority``: lower is served first under
        ``--scheduling-policy priority`` (must be 0 under fcfs). ``lora_request``: the LoRA adapter to run with
        (an engine started with ``enable_lora``); a bad adapter raises ``ValidationError`` naming ``lora_request``.
        """
        self._check_open()
        admission.check_request_id_free(request_id, request_id in self.output_processor.parents)
        if isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValidationError("lora_request: pooling requests take no LoRA adapter; pass None.",
                                      "lora_request")
            text, ids, core_req = self.input_processor.process_pooling(request_id, prompt, params, priority)
            self.core.add_request(core_req)
            self.output_processor.add_request(request_id, text, ids, core_req.sampling_params, final_only,
                                              pooling=True)
            return
        text, ids, params, core_reqs = self.input_processor.process(request_id, prompt, params, priority, lora_request)
        added: list[str] = []
        try:
            for r in core_reqs:
                self.core.add_request(r)
                added.append(r.request_id)
        except Exception:
            self.core.abort_requests(added)
            raise
        self.output_processor.add_request(request_id, text, ids, params, final_only, lora_request=lora_request)

    def abort_request(self, request_ids: str | list[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            self.core.abort_requests(self.output_processor.abort(rid))

    def step(self) -> list[RequestOutput]:
        self._check_open()
        outs = self.core.step()
        if outs.stats is not None:
            self.last_stats = outs.stats
        results, to_stop = self.output_processor.process(outs.outputs)
        if to_stop:
            self.core.finish_requests(to_stop)
        return results

    def reset_prefix_cache(self) -> bool:
        """Drop cached prefix blocks nobody holds; True when the prefix cache is empty afterwards."""
        return self.core.reset_prefix_cache()

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """vLLM's ``add_lora``: read and check the adapter now and keep it loaded. Raises ``ValueError`` naming the
        adapter and the problem (also without ``enable_lora``); True otherwise."""
        self._check_open()
        check_lora_request(lora_request, self.cfg.lora is not None)
        assert lora_request is not None
        return self.core.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        """vLLM's ``remove_lora``: drop the adapter from the host cache; True if it was loaded."""
        self._check_open()
        return self.core.remove_lora(lora_id)

    def list_loras(self) -> set[int]:
        """vLLM's ``list_loras``: ids of the adapters loaded in host memory."""
        return self.core.list_loras()

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished() or self.core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        """User requests added and not yet finished nor aborted (vLLM's; a request with ``n > 1`` counts once)."""
        return len(self.output_processor.parents)

    def get_tokenizer(self) -> Any:
        return self.tokenizer
