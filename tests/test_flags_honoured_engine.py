"""Engine flags (and ``LLM(...)`` keywords) that used to be accepted and then did nothing, or something else than
asked: each is now honoured or a start-up error naming it (found by a flag-by-flag pass, session 41).

* ``num_gpu_blocks_override=0`` sized the cache from memory as if unset; a negative one crashed in ``torch.zeros``;
* ``revision`` with a local model (or the embedded default) selected nothing;
* ``attention_backend="triton"`` on CPU without Triton's interpreter failed every request at its first step (the
  offline LLM returned empty outputs);
* ``async_scheduling=True`` with a pooling model was silently off; ``kv_offloading_size`` with one failed after the
  model had loaded, telling the user to drop a ``--no-enable-prefix-caching`` they never gave;
* ``VLLM_BATCH_INVARIANT=false`` (any value but ``0``) turned batch-invariant mode *on*, and a zero or negative
  seconds variable was taken as given.
"""

from __future__ import annotations

import pytest
from pooling_models import build_pooling_model

from pagoda import envs
from pagoda.config import MIN_KV_BLOCKS, EngineArgs


# ------------------------------------------------------------------------------- --num-gpu-blocks-override
@pytest.mark.parametrize("n", [0, -1, 1])
def test_num_gpu_blocks_override_below_the_minimum_is_refused(n):
    with pytest.raises(ValueError, match=rf"--num-gpu-blocks-override\) must be at least {MIN_KV_BLOCKS}.*got {n}"):
        EngineArgs(num_gpu_blocks_override=n).validate()


def test_num_gpu_blocks_override_is_used_exactly(tiny):
    """The smallest accepted value runs, and the engine has exactly that many blocks (one is the null block)."""
    from pagoda import SamplingParams

    llm = tiny.llm("llama", max_model_len=32, num_gpu_blocks_override=MIN_KV_BLOCKS + 2)
    assert llm.llm_engine.core.kv.pool.num_blocks == MIN_KV_BLOCKS + 2
    out = llm.generate("hi", SamplingParams(max_tokens=3, temperature=0), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 3


# ----------------------------------------------------------------------------------------------- --revision
def test_revision_of_a_local_model_is_refused(tiny):
    local = str(tiny.path("llama"))
    with pytest.raises(ValueError, match=r"--revision v2: '.*llama', a local path, has no hub revisions"):
        EngineArgs(model=local, revision="v2").validate()
    with pytest.raises(ValueError, match="--revision v2: the embedded default model has no hub revisions"):
        EngineArgs(revision="v2").validate()
    EngineArgs(model=local).validate()  # no revision: nothing to refuse
    EngineArgs(model="org/model", revision="v2").validate()  # a hub id: the revision applies
    EngineArgs(model=local, tokenizer="org/tokenizer", revision="v2").validate()  # it applies to the tokenizer's id


# -------------------------------------------------------------------------------------- --attention-backend
def test_triton_attention_on_cpu_needs_the_interpreter(tiny, monkeypatch):
    args = dict(model=str(tiny.path("llama")), device="cpu", attention_backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="--attention-backend triton runs on CUDA; on cpu use --attention-backend "
                                         "torch"):
        EngineArgs(**args).create_config()
    assert EngineArgs(**{**args, "attention_backend": "torch"}).create_config().attention_backend == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU tests' setting: the kernels run in the interpreter
    assert EngineArgs(**args).create_config().attention_backend == "triton"


# ---------------------------------------------------------------------------------------------- --device
@pytest.mark.parametrize("device", ["cuda:1", "cuda:3"])
def test_a_gpu_other_than_the_first_is_chosen_with_cuda_visible_devices(tiny, device):
    """``--device cuda:N`` (N > 0) used to be taken while the engine's memory profile, streams and graphs ran on the
    current device (cuda:0) and tensor-parallel ranks on cuda:<rank>; it is refused naming CUDA_VISIBLE_DEVICES
    (checked before whether a GPU is visible, so this machine's CPU says it too)."""
    n = device.split(":")[1]
    with pytest.raises(ValueError, match=rf"--device {device}: .*CUDA_VISIBLE_DEVICES={n} and --device cuda"):
        EngineArgs(model=str(tiny.path("llama")), device=device).create_config()


# ----------------------------------------------------------------------------------- pooling models' flags
@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(build_pooling_model(tmp_path_factory.mktemp("flags_bert") / "bert", "bert"))


@pytest.mark.parametrize("kwargs,flag", [
    ({"async_scheduling": True}, "--async-scheduling"),
    ({"kv_offloading_size": 0.5}, "--kv-offloading-size"),
])
def test_generation_only_flags_are_refused_for_a_pooling_model(bert, kwargs, flag):
    with pytest.raises(ValueError, match=f"^{flag} applies to generative models; a pooling model"):
        EngineArgs(model=bert, device="cpu", **kwargs).create_config()


def test_a_pooling_model_keeps_the_defaults_and_the_explicit_off(bert):
    cfg = EngineArgs(model=bert, device="cpu", async_scheduling=False, kv_offloading_size=0).create_config()
    assert cfg.runner == "pooling" and not cfg.async_scheduling and cfg.kv_offloading_size == 0
    assert EngineArgs(model=bert, device="cpu").create_config().runner == "pooling"


# ------------------------------------------------------------------------------------ environment variables
@pytest.mark.parametrize("value,on", [("0", False), ("1", True), ("2", True), ("false", False), ("FALSE", False),
                                      ("no", False), ("off", False), ("true", True), ("Yes", True), ("on", True),
                                      ("", False)])
def test_switch_variables_read_words_and_integers(monkeypatch, value, on):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", value)
    assert envs.batch_invariant() is on
    monkeypatch.setenv("PAGODA_GC_FREEZE", value)
    assert envs.gc_freeze_enabled() is (on or value == "")  # unset / empty: its default, on


def test_a_malformed_variable_stops_start_up_naming_it(monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "maybe")
    with pytest.raises(ValueError, match="environment variable VLLM_BATCH_INVARIANT must be 0 or 1"):
        EngineArgs().validate()
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    for value in ("0", "-5"):
        monkeypatch.setenv("PAGODA_LOG_STATS_INTERVAL", value)
        with pytest.raises(ValueError, match="PAGODA_LOG_STATS_INTERVAL must be a positive number of seconds"):
            EngineArgs().validate()
    monkeypatch.setenv("PAGODA_LOG_STATS_INTERVAL", "0.5")
    EngineArgs().validate()
    assert envs.log_stats_interval_s() == 0.5


def test_batch_invariant_false_leaves_deterministic_off(tiny, monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "false")
    assert not EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config().deterministic
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "true")
    assert EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config().deterministic
