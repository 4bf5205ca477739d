"""Overhead of structured outputs: decode tokens/s with a JSON schema vs unconstrained, same run, and the
compile time of a 50-field schema.

    PYTHONPATH=. python benchmarks/structured_outputs.py --batch 1 32 --max-tokens 64

Both arms generate exactly ``--max-tokens`` tokens per request (the schema arm's strings are unbounded, so the
grammar never ends early; min_tokens is not used, as it would change sampling).
"""

from __future__ import annotations

import argparse
import json
import time


def fifty_field_schema() -> dict:
    kinds = [{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
             {"enum": ["a", "bb", "ccc"]}, {"type": "array", "items": {"type": "integer"}}]
    props = {f"field_{i}": kinds[i % len(kinds)] for i in range(50)}
    return {"type": "object", "properties": props, "required": list(props)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from pagoda import LLM, SamplingParams
    from pagoda.structured_output import StructuredOutputsConfig, StructuredOutputsParams
    from pagoda.structured_output.params import GrammarKey
    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    llm = LLM(args.model, max_model_len=1024)
    tok = AutoTokenizer.from_pretrained(str(llm.llm_engine.cfg.tokenizer_path))
    be = XgrammarBackend(tok, llm.llm_engine.core.vocab_size, [tok.eos_token_id])
    key = GrammarKey.of(StructuredOutputsParams(json=fifty_field_schema()), StructuredOutputsConfig())
    t0 = time.perf_counter()
    be.compile(key)
    print(f"compile 50-field schema: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell a long story as JSON."}], tokenize=False,
                                     add_generation_prompt=True)
    for b in args.batch:
        rates = {}
        for arm in ("plain", "schema", "plain", "schema"):  # interleaved: the machine's drift hits both arms
            so = StructuredOutputsParams(json=schema) if arm == "schema" else None
            p = SamplingParams(temperature=0, max_tokens=args.max_tokens, structured_outputs=so)
            llm.generate([prompt] * b, p, use_tqdm=False)  # warm (and compile)
            t0 = time.perf_counter()
            outs = llm.generate([prompt] * b, p, use_tqdm=False)
            dt = time.perf_counter() - t0
            n = sum(len(o.outputs[0].token_ids) for o in outs)
            rates.setdefault(arm, []).append(n / dt)
            if arm == "schema":
                json.loads(outs[0].outputs[0].text + '"}') if outs[0].outputs[0].finish_reason == "length" else None
        plain, sch = max(rates["plain"]), max(rates["schema"])
        print(f"batch {b}: unconstrained {plain:.1f} tok/s, json schema {sch:.1f} tok/s, ratio {sch / plain:.3f}")


if __name__ == "__main__":
    main()
