"""The served model names (vLLM's ``OpenAIServingModels``): the base model's and the LoRA adapters'.

A request's ``model`` is one of the base model's names (``--served-model-name``: runs without an adapter), or an
adapter's name (``--lora-modules``, ``POST /v1/load_lora_adapter``: runs with it), else a 404 as vLLM's. Invariants:

* an adapter name is never a base name, and names one adapter at a time;
* every adapter gets a fresh ``lora_int_id`` (1, 2, ...; never reused, not even when a name is loaded again), since
  the engine keys prefix-cache blocks by the id and refuses an id with another folder;
* an adapter is served only once every engine core has read and checked it (``AsyncLLM.add_lora``); an unloaded
  name stops being served at once (requests already running with it finish with it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from pagoda.engine.async_llm import AsyncLLM
from pagoda.entrypoints.openai.lora_modules import LoRAModulePath
from pagoda.entrypoints.openai.protocol import ModelCard, ModelList
from pagoda.entrypoints.openai.serving_engine import ServingError
from pagoda.lora.peft import LoRANotFoundError
from pagoda.lora.request import LoRARequest

logger = logging.getLogger("pagoda.server")


class ServingModels:
    """The names requests may give as ``model`` (module docstring)."""

    def __init__(self, engine: AsyncLLM, base_names: list[str], root: str, max_model_len: int) -> None:
        self.engine = engine
        self.base_names = base_names
        self.root = root
        self.max_model_len = max_model_len
        self.lora_requests: dict[str, LoRARequest] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()  # loads and unloads one at a time: a name is checked and taken atomically

    # ------------------------------------------------------------ requests
    def resolve(self, requested: str | None) -> tuple[str, LoRARequest | None]:
        """The name a response reports and the adapter to run with (None: the base model). No ``model`` is the
        first base name; an unknown one is vLLM's 404."""
        if not requested:
            return self.base_names[0], None
        if requested in self.base_names:
            return requested, None
        lora = self.lora_requests.get(requested)
        if lora is None:
            raise ServingError(404, f"The model `{requested}` does not exist.", "invalid_request_error", "model",
                               "model_not_found")
        return requested, lora

    def base_only(self, requested: str | None, what: str) -> str:
        """:meth:`resolve` for a route that takes no adapter (``what``: pooling): an adapter name is a 400."""
        name, lora = self.resolve(requested)
        if lora is not None:
            raise ServingError(400, f"model `{name}` is a LoRA adapter: {what} takes no LoRA adapter in pagoda; "
                               f"name the base model ({', '.join(self.base_names)}).", param="model")
        return name

    def cards(self) -> ModelList:
        """vLLM's ``/v1/models``: the base names, then each adapter (``root``: its folder, ``parent``: its base
        model's name)."""
        cards = [ModelCard(id=n, root=self.root, max_model_len=self.max_model_len) for n in self.base_names]
        cards += [ModelCard(id=r.lora_name, root=r.lora_path, parent=r.base_model_name or self.base_names[0])
                  for r in self.lora_requests.values()]
        return ModelList(data=cards)

    # ------------------------------------------------------------ adapters
    async def init_static_loras(self, modules: list[LoRAModulePath]) -> None:
        """Load ``--lora-modules``; a bad one raises ``ValueError`` naming the module (a start-up error)."""
        for m in modules:
            where = f"--lora-modules {m.name}={m.path}"
            if m.base_model_name is not None and m.base_model_name not in self.base_names:
                raise ValueError(f"{where}: base_model_name {m.base_model_name!r} is not a served model name "
                                 f"({', '.join(self.base_names)}; --served-model-name sets them).")
            try:
                await self.load(m.name, m.path, m.base_model_name)
            except ServingError as e:
                raise ValueError(f"{where}: {e.message}") from None

    async def load(self, name: str, path: str, base_model_name: str | None = None,
                   load_inplace: bool = False) -> str:
        """vLLM's ``load_lora_adapter``: the engine cores read and check the adapter, then its name is served.
        Returns vLLM's success text; raises ``ServingError`` with vLLM's status (400, 404 when there is no adapter
        at ``path``). ``load_inplace``: replace an adapter served under ``name`` (with a new id)."""
        if not name or not path:
            raise ServingError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput",
                               code=400)
        async with self._lock:
            if name in self.base_names:
                raise ServingError(400, f"The lora adapter '{name}' has the name of the base model; give it another "
                                   f"name.", "InvalidUserInput", param="lora_name", code=400)
            if name in self.lora_requests and not load_inplace:
                raise ServingError(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                   f"adapter in place, set 'load_inplace' to True.", "InvalidUserInput", code=400)
            lora = LoRARequest(name, next(self._ids), path, base_model_name=base_model_name)
            try:
                await self.engine.add_lora(lora)
            except LoRANotFoundError as e:
                raise ServingError(404, str(e), "NotFoundError", code=404) from None
            except ValueError as e:
                raise ServingError(400, str(e), "BadRequestError", code=400) from None
            self.lora_requests[name] = lora
        logger.info("Loaded new LoRA adapter: name '%s', path '%s' (lora_int_id %d)", name, path, lora.lora_int_id)
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload(self, name: str | None, lora_int_id: int | None = None) -> str:
        """vLLM's ``unload_lora_adapter``: the name stops being served at once. ``lora_int_id``, if given, must be
        that adapter's id. Raises ``ServingError``: 400 without a name, 404 for an unknown one."""
        if not name:
            raise ServingError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput",
                               code=400)
        async with self._lock:
            lora = self.lora_requests.get(name)
            if lora is None:
                raise ServingError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError", code=404)
            if lora_int_id is not None and lora_int_id != lora.lora_int_id:
                raise ServingError(400, f"lora_int_id {lora_int_id} is not the id of the lora adapter '{name}' "
                                   f"({lora.lora_int_id}); leave it out or give that id.", "InvalidUserInput",
                                   param="lora_int_id", code=400)
            del self.lora_requests[name]
        logger.info("Removed LoRA adapter: name '%s'", name)
        return f"Success: LoRA adapter '{name}' removed successfully."
