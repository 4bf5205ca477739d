"""Draft-model speculation keeps within the step budget (a review's finding, CPU, tiny Llama).

A new request's shadow in the draft model catches up its whole prompt before the first proposal. That was one
forward of every new shadow's tokens, whatever ``max_num_batched_tokens`` (a 962-token draft forward under a
64-token budget): the memory and the step latency that chunked prefill bounds for the target were not bounded
for the draft. The catch-up now runs in forwards within the budget; with the target as its own draft every
greedy proposal is still accepted (the chunked catch-up's K/V is the one-forward's), and the tokens are those
without speculation.
"""

from __future__ import annotations

from engine_checks import assert_engine_clean

from pagoda.sampling_params import SamplingParams


def test_draft_catch_up_keeps_within_max_num_batched_tokens(tiny):
    from pagoda import LLM

    path = str(tiny.path("llama"))
    prompts = [" ".join(["alpha beta gamma delta"] * 24), " ".join(["one two three"] * 30) + " four",
               "a short one"]
    p = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in tiny.llm("llama").generate(prompts, p, use_tqdm=False)]
    budget = 64
    llm = LLM(path, dtype="float32", max_num_batched_tokens=budget,
              speculative_config={"model": path, "num_speculative_tokens": 3})
    proposer = llm.llm_engine.core.spec.proposer
    forward_sizes: list[int] = []
    execute = proposer.runner.execute

    def counted(sched, block_ids):
        forward_sizes.append(sum(s.num_new_tokens for s in sched.scheduled))
        return execute(sched, block_ids)

    proposer.runner.execute = counted
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, p, use_tqdm=False)]
    assert got == want
    assert sum(len(llm.get_tokenizer()(q)["input_ids"]) for q in prompts) > 4 * budget  # the catch-up needs chunks
    assert max(forward_sizes) <= budget, forward_sizes
    st = llm.llm_engine.core.scheduler.spec_stats
    assert st.num_drafts > 0 and st.num_accepted_tokens == st.num_draft_tokens  # the target as its own draft
    assert_engine_clean(llm)
    assert not proposer.shadows
    llm.shutdown()
