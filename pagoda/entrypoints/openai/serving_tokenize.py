"""POST /tokenize and /detokenize (vLLM's extensions)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pagoda.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from pagoda.entrypoints.openai.request_fields import check_request_fields
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_engine import OpenAIServing, ServingError
from pagoda.entrypoints.openai.tool_calling import check_tools


def validation_error(e: ValidationError) -> ServingError:
    errs = e.errors()
    if not errs:
        return ServingError(400, "invalid request", param=None)
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ()))
    msg = f"{loc}: {first.get('msg', 'invalid value')}" if loc else str(first.get("msg", "invalid request"))
    return ServingError(400, msg, param=loc or None)


class OpenAIServingTokenization(OpenAIServing):
    def __init__(self, *args: Any, chat: OpenAIServingChat, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat = chat

    def tokenize(self, body: Any) -> TokenizeResponse:
        if not isinstance(body, dict):
            raise ServingError(400, "The request body must be a JSON object.")
        try:
            req: Any = (TokenizeChatRequest if "messages" in body else TokenizeCompletionRequest).model_validate(body)
        except ValidationError as e:
            raise validation_error(e) from None
        check_request_fields(req, "tokenize")
        self.resolve_model(req.model)  # an adapter's name too: adapters share the base model's tokenizer
        if isinstance(req, TokenizeChatRequest):
            _, ids = self.chat.render_prompt(req.messages, req.add_generation_prompt, req.continue_final_message,
                                             req.chat_template, req.chat_template_kwargs, check_tools(req.tools),
                                             req.add_special_tokens)
        else:
            ids = self.encode(req.prompt, req.add_special_tokens)
        strs = self.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.engine.max_model_len, tokens=list(ids),
                                token_strs=strs)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        check_request_fields(req, "detokenize")
        self.resolve_model(req.model)  # an adapter's name too: adapters share the base model's tokenizer
        V = self.engine.vocab_size
        for t in req.tokens:
            if not 0 <= t < V:
                raise ServingError(400, f"Token id {t} is out of vocabulary (vocab size {V}).", param="tokens")
        return DetokenizeResponse(prompt=self.tokenizer.decode(req.tokens))
