"""vLLM's ``LoRARequest``: which adapter a request runs with (``vllm.lora.request.LoRARequest``)."""

from __future__ import annotations

import msgspec


class LoRARequest(msgspec.Struct, omit_defaults=True, array_like=True):
    """A PEFT adapter for one request: ``lora_name`` (a label), ``lora_int_id`` (>= 1; the engine's key for the
    adapter: one id names one adapter folder for the engine's life) and ``lora_path`` (the folder holding
    ``adapter_config.json`` and ``adapter_model.safetensors``).

    As vLLM's: equality and hash go by ``lora_name``; ``base_model_name`` is metadata only. ``tensorizer_config_dict``
    and ``load_inplace=True`` are vLLM fields pagoda does not honour: a request carrying them is refused when added.
    """

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    tensorizer_config_dict: dict | None = None
    load_inplace: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"LoRARequest {self.lora_name!r}: lora_int_id must be an integer >= 1, got "
                             f"{self.lora_int_id!r}.")
        if not self.lora_path:
            raise ValueError(f"LoRARequest {self.lora_name!r}: lora_path cannot be empty (the PEFT adapter folder).")

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)


def check_lora_request(value: object, enabled: bool) -> LoRARequest | None:
    """A request's ``lora_request`` as the engine takes it: None (the base model) or a :class:`LoRARequest`, the
    latter only on an engine started with ``enable_lora``. Raises ``ValidationError`` naming the field."""
    from pagoda.errors import ValidationError

    if value is None:
        return None
    if not isinstance(value, LoRARequest):
        raise ValidationError(f"lora_request must be a pagoda.lora.request.LoRARequest (or None), got "
                              f"{type(value).__name__}.", "lora_request")
    if not enabled:
        raise ValidationError(f"lora_request {value.lora_name!r}: this engine was started without LoRA; start it "
                              f"with enable_lora=True (--enable-lora), and max_loras / max_lora_rank to fit the "
                              f"adapters.", "lora_request")
    return value
