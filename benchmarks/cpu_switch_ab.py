"""A/B of a CPU-path switch on the default model, two engines in one process taking turns on the same prompts.

``--switch fused``: the native norm/rotary kernels (``pagoda.layers.cpu_fused.ENABLED``, read at load);
``--switch one-thread``: small steps' forward on one thread under the passive wait policy
(``ModelRunner.small_steps_one_thread``, pagoda/worker/cpu_threads.py);
``--switch det-native``: both engines ``--deterministic``, the attention by the native per-row kernel
(``pagoda.attention.cpu_det_native.ENABLED``, read at each call) or by the torch path;
``--switch deterministic``: ``--deterministic`` against the default mode (the cost of the mode);
``--switch decode-native``: the default mode's decode rows and few-row runs by the native kernel
(``pagoda.attention.cpu_decode_native.ENABLED``, read at each call) or by gathers + SDPA;
``--switch int4-dot``: 4-bit linears by the bf16-dot kernel (``pagoda.quantization.kernels.cpu_int4_dot.ENABLED``,
read at each call; AVX512-BF16 CPUs) or by torch's int4pack arithmetic (``cpu_int4_native`` / torch's kernel);
``--switch int4-amx``: those 4-bit linears by the kernel's AMX build or its vdpbf16ps build
(``cpu_int4_dot.AMX``, bound when an engine loads and read at each general-path call; AMX-BF16 CPUs; the bits differ);
``--switch bound-calls``: that kernel called through each weight's bound call or through the general path
(``cpu_int4_dot.BOUND_CALLS``, read at each call; the same values);
``--switch decoder-stack``: a small step's layers in one native call or from Python
(``pagoda.models.cpu_decoder_stack.ENABLED``, read at each step; the same values);
``--switch stack-team``: that call's matmuls and attention split over its own threads or run on one
(``cpu_decoder_stack.THREADS`` 0 or 1, read at each step; the same values);
``--switch head-dot``: the LM head of up to 8 rows by the bf16-dot kernel, float32 logits, or by oneDNN's bf16 head
with the leading logits refined (``pagoda.layers.cpu_head_dot.ENABLED``, read at each call; AVX512-BF16 CPUs);
``--switch head-q8``: the LM head of up to 8 rows from the Q8_0 table's codes, or from its bf16 copy by the heads
above (``pagoda.layers.cpu_head_q8.ENABLED``, read at each call; AVX-512 VNNI CPUs; the logits differ: exact
weights against bf16-rounded ones, so greedy tokens may part where two candidates are close);
``--switch pos-chunk``: the decode attention's items split by chunks of 256 positions, or not
(``pagoda.attention.cpu_decode_native.set_pos_chunk``; meaningful with ``--prompt-len`` of several hundred tokens and
more; the bits of rows past 256 positions differ between the arms).
Greedy, ``--max-tokens`` new tokens, EOS ignored, at each batch size; prints each arm's output tok/s per round
(arms alternate which goes first), the ratio of medians, and where the arms' greedy tokens first differ.

    PYTHONPATH=. python benchmarks/cpu_switch_ab.py
        --switch fused|one-thread|det-native|deterministic|decode-native|int4-dot|int4-amx|bound-calls|
            decoder-stack|stack-team|head-dot|head-q8|pos-chunk
        [--rounds 3]
        [--batch-sizes 1 32] [--max-tokens 64] [--prompt-len N (random token ids instead of the short prompts)]
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = ["Tell me about the sea.", "Write a haiku about autumn leaves.", "What is the capital of France?",
           "Explain how a bicycle works.", "List three uses of copper.", "Why is the sky blue?",
           "Describe a busy market.", "How do bees make honey?"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", required=True,
                    choices=["fused", "one-thread", "det-native", "deterministic", "decode-native", "int4-dot",
                             "int4-amx", "bound-calls", "decoder-stack", "stack-team", "head-dot", "head-q8",
                             "pos-chunk"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=0, help="prompts of this many random token ids (0: short text)")
    args = ap.parse_args()

    import torch

    from pagoda import LLM, SamplingParams
    from pagoda.attention import cpu_decode_native, cpu_det_native
    from pagoda.layers import cpu_fused, cpu_head_dot, cpu_head_q8
    from pagoda.models import cpu_decoder_stack
    from pagoda.quantization.kernels import cpu_int4_dot

    arms = {}
    for name, on in (("on", True), ("off", False)):
        cpu_fused.ENABLED = on or args.switch != "fused"
        cpu_int4_dot.AMX = on or args.switch != "int4-amx"
        det = args.switch == "det-native" or (args.switch == "deterministic" and on)
        arms[name] = LLM(max_num_seqs=max(args.batch_sizes), deterministic=det)
        if args.switch == "one-thread":
            runner = arms[name].llm_engine.core.runner
            assert runner.small_steps_one_thread or not on, "the passive wait policy is not in effect"
            runner.small_steps_one_thread = on
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    for bs in args.batch_sizes:
        gen = torch.Generator().manual_seed(0)
        prompts = [{"prompt_token_ids": torch.randint(100, 40000, (args.prompt_len,), generator=gen).tolist()}
                   for _ in range(bs)] if args.prompt_len else [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        rates: dict[str, list[float]] = {n: [] for n in arms}
        tokens: dict[str, list[list[int]]] = {}
        for r in range(args.rounds):
            for name in (arms if r % 2 == 0 else reversed(list(arms))):
                cpu_det_native.ENABLED = name == "on" or args.switch != "det-native"
                cpu_decode_native.ENABLED = name == "on" or args.switch != "decode-native"
                cpu_int4_dot.ENABLED = name == "on" or args.switch != "int4-dot"
                cpu_int4_dot.BOUND_CALLS = name == "on" or args.switch != "bound-calls"
                cpu_int4_dot.AMX = name == "on" or args.switch != "int4-amx"
                cpu_decoder_stack.ENABLED = name == "on" or args.switch != "decoder-stack"
                cpu_decoder_stack.THREADS = 1 if name == "off" and args.switch == "stack-team" else 0
                cpu_head_dot.ENABLED = name == "on" or args.switch != "head-dot"
                cpu_head_q8.ENABLED = name == "on" or args.switch != "head-q8"
                cpu_decode_native.set_pos_chunk(256 if args.switch == "pos-chunk" and name == "on" else 0)
                t = time.perf_counter()
                outs = arms[name].generate(prompts, sp, use_tqdm=False)
                rates[name].append(bs * args.max_tokens / (time.perf_counter() - t))
                tokens.setdefault(name, [list(o.outputs[0].token_ids) for o in outs])
        diverged = [next(i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b)
                    for x, y in zip(tokens["on"], tokens["off"], strict=True) if x != y]
        med = {n: statistics.median(v) for n, v in rates.items()}
        print(f"batch {bs}: " + "  ".join(f"{n} {' '.join(f'{x:.1f}' for x in v)} tok/s" for n, v in rates.items())
              + f"  on/off {med['on'] / med['off']:.3f}x"
              + f"  greedy outputs: {len(diverged)} of {bs} differ"
              + (f" (first at tokens {diverged})" if diverged else ""))


if __name__ == "__main__":
    main()
