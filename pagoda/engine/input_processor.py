"""Front-end input handling: prompts to token ids, sampling defaults, admission checks.

Everything a user can get wrong is caught here (or in the core's admission check) and
raised as ``ValueError`` with the field and the limit; nothing reaches the model.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from pagoda.config import EngineConfig
from pagoda.engine.messages import EngineCoreRequest
from pagoda.engine.output_processor import child_id
from pagoda.sampling_params import SamplingParams, defaults_from_generation_config

PromptType = str | dict[str, Any] | list[int]


class InputProcessor:
    def __init__(self, cfg: EngineConfig, tokenizer: Any, eos_token_ids: list[int]) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.sampling_defaults = defaults_from_generation_config(cfg.generation_defaults)

    def default_sampling_params(self) -> SamplingParams:
        """vLLM's ``get_default_sampling_params``: generation-config values over SamplingParams()."""
        return SamplingParams(**self.sampling_defaults) if self.sampling_defaults else SamplingParams()

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text = prompt
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        elif isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                text = prompt.get("prompt")
                ids = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                text = prompt["prompt"]
                if not isinstance(text, str):
                    raise ValueError("prompt must be a string.")
                ids = self.tokenizer.encode(text, add_special_tokens=True)
            else:
                raise ValueError("A prompt dict needs 'prompt' or 'prompt_token_ids'.")
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            text, ids = None, list(prompt)
        else:
            raise ValueError(f"Unsupported prompt type {type(prompt).__name__}; use a string, token ids or a dict.")
        if not ids:
            raise ValueError("The prompt is empty; it must hold at least one token.")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids must be a list of integers.")
        return text, ids

    def process(
        self, request_id: str, prompt: PromptType, params: SamplingParams | None
    ) -> tuple[str | None, list[int], SamplingParams, list[EngineCoreRequest]]:
        text, ids = self.tokenize_prompt(prompt)
        cache_salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
            raise ValueError("cache_salt must be a non-empty string.")
        if params is None:
            params = self.default_sampling_params()
        else:
            params.__post_init__()  # re-check: fields may have been set after construction (n=0 hung)
        if params.logprobs is not None and params.logprobs > self.cfg.max_logprobs:
            raise ValueError(f"logprobs must be at most max_logprobs={self.cfg.max_logprobs}, got {params.logprobs}.")
        if params.prompt_logprobs is not None and params.prompt_logprobs > self.cfg.max_logprobs:
            raise ValueError(
                f"prompt_logprobs must be at most max_logprobs={self.cfg.max_logprobs}, got {params.prompt_logprobs}."
            )
        if params.logit_bias:
            vocab = int(self.cfg.hf_config.get("vocab_size") or 0)
            bad = sorted(t for t in params.logit_bias if not 0 <= t < vocab)
            if vocab and bad:
                raise ValueError(
                    f"token_id(s) {bad[:8]} in logit_bias contain out-of-vocab token ids. Vocabulary size: {vocab}."
                )
        L = self.cfg.max_model_len
        if len(ids) >= L:
            raise ValueError(
                f"This model's maximum context length is {L} tokens. However, you requested {len(ids) + (params.max_tokens or 1)} "
                f"tokens ({len(ids)} in the prompt, {params.max_tokens or 1} in the completion). "
                f"Please reduce the length of the prompt."
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else L - len(ids)
        core_reqs = []
        now = time.time()
        for i in range(params.n):
            child_params = params
            if params.n > 1:
                changes: dict[str, Any] = {"n": 1}
                if params.seed is not None:
                    changes["seed"] = params.seed + i
                child_params = params.clone(**changes)
            sp = {f.name: getattr(child_params, f.name) for f in fields(child_params) if f.name != "_explicit"}
            core_reqs.append(
                EngineCoreRequest(
                    child_id(request_id, i, params.n), ids, sp, self.eos_token_ids, max_tokens, now,
                    cache_salt=cache_salt,
                    fork_of=child_id(request_id, 0, params.n) if i > 0 else None,
                )
            )
        return text, ids, params, core_reqs
