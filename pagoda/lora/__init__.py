"""Multi-LoRA adapters (vLLM's ``--enable-lora``): PEFT adapter folders applied per request.

* :mod:`pagoda.lora.request`: :class:`LoRARequest`, vLLM's request type;
* :mod:`pagoda.lora.config`: the engine's limits (``max_loras`` ...) and the start-up checks;
* :mod:`pagoda.lora.peft`: reading and checking one PEFT adapter folder;
* :mod:`pagoda.lora.layers`: the per-layer slot buffers and the delta ``scale * (x A^T) B^T``;
* :mod:`pagoda.lora.manager`: the host cache of loaded adapters, the device slots, the per-step batch.
"""

from pagoda.lora.request import LoRARequest

__all__ = ["LoRARequest"]
