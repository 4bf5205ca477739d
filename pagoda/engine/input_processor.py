"""Front-end input handling: prompts to token ids, sampling defaults, then admission.

Every check a request must pass is in :mod:`pagoda.engine.admission`, called from here
(``process`` for sampling, ``beam_search`` for beam search); a failure raises
:class:`pagoda.errors.ValidationError` naming the field, and nothing reaches the core.
"""

from __future__ import annotations

import time
from typing import Any

from pagoda.beam_search import BeamSearchInstance
from pagoda.config import EngineConfig
from pagoda.engine import admission
from pagoda.engine.messages import AdmissionLimits, EngineCoreRequest
from pagoda.engine.output_processor import child_id
from pagoda.errors import ValidationError
from pagoda.lora.request import LoRARequest, check_lora_request
from pagoda.pooling.inputs import GENERATIVE_ONLY, process_pooling
from pagoda.pooling.params import PoolingParams
from pagoda.reasoning.token_ids import ReasoningTokenIds, reasoning_token_ids
from pagoda.sampling_params import BeamSearchParams, SamplingParams, defaults_from_generation_config
from pagoda.structured_output.params import FIELD as STRUCTURED_FIELD
from pagoda.structured_output.validate import validate as validate_structured_outputs

PromptType = str | dict[str, Any] | list[int]
PROMPT_KEYS = frozenset({"prompt", "prompt_token_ids", "cache_salt"})
"""The keys a prompt dict may hold (vLLM's TextPrompt / TokensPrompt without multimodal inputs)."""


class InputProcessor:
    def __init__(self, cfg: EngineConfig, tokenizer: Any, eos_token_ids: list[int], limits: AdmissionLimits,
                 cap_to_context: bool = False) -> None:
        """``cap_to_context``: a ``max_tokens`` past the context is cut to fit (the offline ``LLM``, as
        vLLM's), not refused (the server, as vLLM's); see :func:`admission.check_length`."""
        self.cfg = cfg
        self.cap_to_context = cap_to_context
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        primary = getattr(tokenizer, "eos_token_id", None)  # vLLM's primary EOS; the others report a stop_reason
        self.secondary_eos_token_ids = [t for t in eos_token_ids if primary is None or t != int(primary)] or None
        self.limits = limits
        self.sampling_defaults = defaults_from_generation_config(cfg.generation_defaults)
        self._reasoning_tags: ReasoningTokenIds | str | None = None

    def default_sampling_params(self) -> SamplingParams:
        """vLLM's ``get_default_sampling_params``: generation-config values over SamplingParams()."""
        return SamplingParams(**self.sampling_defaults) if self.sampling_defaults else SamplingParams()

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """(text, token ids) of a prompt; only its shape is checked here (admission checks the ids)."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt, add_special_tokens=True)
        if isinstance(prompt, dict):
            if "prompt_token_ids" not in prompt and "prompt" not in prompt:
                raise ValidationError("A prompt dict needs 'prompt' or 'prompt_token_ids'.", "prompt")
            unknown = sorted(str(k) for k in prompt if k not in PROMPT_KEYS)
            if unknown:  # e.g. multi_modal_data: never dropped in silence
                raise ValidationError(f"Prompt key(s) {unknown} are not supported (pagoda runs text prompts; a "
                                      f"prompt dict takes {sorted(PROMPT_KEYS)}).", "prompt")
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)):
                    raise ValidationError("prompt_token_ids must be a list of integers.", "prompt")
                return prompt.get("prompt"), list(ids)
            text = prompt["prompt"]
            if not isinstance(text, str):
                raise ValidationError("prompt must be a string.", "prompt")
            return text, self.tokenizer.encode(text, add_special_tokens=True)
        if isinstance(prompt, list) and all(admission.is_token_id(t) for t in prompt):
            return None, list(prompt)
        raise ValidationError(f"Unsupported prompt type {type(prompt).__name__}; use a string, token ids or a dict.",
                              "prompt")

    def process(
        self, request_id: str, prompt: PromptType, params: SamplingParams | None, priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> tuple[str | None, list[int], SamplingParams, list[EngineCoreRequest]]:
        """Tokenize and admit a request; returns (text, ids, params, one core request per sample). ``lora_request``:
        its adapter (checked here as a value; the core reads and checks the adapter itself)."""
        if self.cfg.runner == "pooling":
            raise ValidationError(GENERATIVE_ONLY, "model", code="wrong_runner")
        lora_request = check_lora_request(lora_request, self.cfg.lora is not None)
        text, ids = self.tokenize_prompt(prompt)
        cache_salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        admission.check_cache_salt(cache_salt)
        admission.check_priority(priority, self.cfg.scheduling_policy)
        if params is None:
            params = self.default_sampling_params()
        if params.truncate_prompt_tokens is not None:  # vLLM's left truncation: the last k tokens
            keep = params.truncate_prompt_tokens
            keep = self.limits.max_model_len if keep == -1 else keep
            admission.check_truncate_prompt_tokens(keep, self.limits)
            ids = ids[-keep:]
        if params.bad_words and params.bad_words_token_ids is None:  # a copy: the caller's params stay as given
            params = params.clone(bad_words_token_ids=admission.bad_words_token_ids(params.bad_words, self.tokenizer))
        if params.structured_outputs is not None:  # the spec must build (bounded in time) before anything is queued
            validate_structured_outputs(params.structured_outputs, self.cfg.structured_outputs)
            if not params.structured_outputs._enable_in_reasoning:  # that grammar never looks for the end tag
                self._check_reasoning_tags()
        max_tokens = admission.check_request(ids, params, self.limits, self.cap_to_context)
        params = admission.resolve_all_logprobs(params, self.limits)
        core_reqs = []
        now = time.time()
        for i in range(params.n):
            child_params = params
            if params.n > 1:
                changes: dict[str, Any] = {"n": 1}
                if params.seed is not None:  # child i draws with seed + i, kept a 64-bit seed (never -1, "no seed")
                    changes["seed"] = params.seed + i if i == 0 or 0 <= params.seed + i < 2**64 \
                        else (params.seed + i) % 2**64
                child_params = params.clone(**changes)
            core_reqs.append(
                EngineCoreRequest(
                    child_id(request_id, i, params.n), ids, child_params, self.eos_token_ids, max_tokens, now,
                    cache_salt=cache_salt, priority=priority,
                    fork_of=child_id(request_id, 0, params.n) if i > 0 else None,
                    secondary_eos_token_ids=self.secondary_eos_token_ids, lora_request=lora_request,
                )
            )
        return text, ids, params, core_reqs

    def _check_reasoning_tags(self) -> None:
        """With a reasoning parser the engine core starts the grammar after the end tag's token id: it must
        be one token of this tokenizer (as the core finds at start-up)."""
        name = self.cfg.structured_outputs.reasoning_parser
        if not name:
            return
        if self._reasoning_tags is None:
            self._reasoning_tags = reasoning_token_ids(name, self.tokenizer)
        if isinstance(self._reasoning_tags, str):
            raise ValidationError(f"{{parameter}} with --reasoning-parser is not supported for this model: "
                                  f"{self._reasoning_tags}.", STRUCTURED_FIELD)

    def process_pooling(self, request_id: str, prompt: PromptType, params: PoolingParams, priority: int = 0
                        ) -> tuple[str | None, list[int], EngineCoreRequest]:
        """Tokenize and admit a pooling request (see :mod:`pagoda.pooling.inputs`)."""
        return process_pooling(request_id, prompt, params, self.cfg.pooler, self.tokenizer, self.limits, priority,
                               self.cfg.scheduling_policy)

    def beam_search(self, prompt: PromptType, params: BeamSearchParams,
                    logprobs: int | None = None) -> BeamSearchInstance:
        """Tokenize and admit a beam search; returns its state machine (see :mod:`pagoda.beam_search`)."""
        if self.cfg.runner == "pooling":
            raise ValidationError(GENERATIVE_ONLY, "model", code="wrong_runner")
        text, ids = self.tokenize_prompt(prompt)
        salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        admission.check_cache_salt(salt)
        admission.check_beam_search(ids, params, self.eos_token_ids, self.limits, logprobs)
        return BeamSearchInstance(ids, params, self.eos_token_ids, text, cache_salt=salt)
