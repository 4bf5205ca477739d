"""pagoda: a paged-KV-cache, continuously batching LLM inference and serving engine."""

# First, as the ``pagoda`` command: a Ctrl-C from here until uvicorn takes the signals ends the process cleanly
# (pagoda/entrypoints/startup_sigint.py).
from pagoda.entrypoints import startup_sigint

startup_sigint.install_if_cli()

# Then, before anything imports torch: the CPU thread policy for shared machines (the OpenMP
# runtime reads it when torch loads). It only adds variables the user has not set.
from pagoda.worker.cpu_threads import apply_env_policy  # noqa: E402

apply_env_policy()

from pagoda.outputs import CompletionOutput, Logprob, RequestOutput  # noqa: E402
from pagoda.pooling.params import PoolingParams  # noqa: E402
from pagoda.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name: str):
    # Import the engine lazily: ``import pagoda`` stays cheap for the CLI and server.
    if name == "LLM":
        from pagoda.entrypoints.llm import LLM

        return LLM
    if name in ("EngineArgs", "AsyncEngineArgs"):  # vLLM's AsyncEngineArgs: the same arguments here
        from pagoda.config import EngineArgs

        return EngineArgs
    if name in ("AsyncLLM", "AsyncLLMEngine"):  # vLLM's AsyncLLMEngine is its AsyncLLM
        from pagoda.engine.async_llm import AsyncLLM

        return AsyncLLM
    if name == "LLMEngine":
        from pagoda.engine.llm_engine import LLMEngine

        return LLMEngine
    if name == "ModelRegistry":
        from pagoda.models.registry import ModelRegistry

        return ModelRegistry
    if name in ("BeamSearchOutput", "BeamSearchSequence"):
        import pagoda.beam_search

        return getattr(pagoda.beam_search, name)
    if name in _POOLING_OUTPUTS:
        import pagoda.pooling.outputs

        return getattr(pagoda.pooling.outputs, name)
    raise AttributeError(name)


_POOLING_OUTPUTS = ("PoolingRequestOutput", "EmbeddingRequestOutput", "ClassificationRequestOutput",
                    "ScoringRequestOutput", "PoolingOutput", "EmbeddingOutput", "ClassificationOutput", "ScoringOutput")


__all__ = ["LLM", "SamplingParams", "BeamSearchParams", "BeamSearchOutput", "BeamSearchSequence", "RequestOutput",
           "RequestOutputKind", "CompletionOutput", "Logprob", "EngineArgs", "AsyncEngineArgs", "LLMEngine", "AsyncLLM",
           "AsyncLLMEngine", "ModelRegistry", "PoolingParams", *_POOLING_OUTPUTS]
