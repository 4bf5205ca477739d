"""Overhead of structured outputs: decode tokens/s with a JSON schema vs unconstrained, same run, and the
compile time of a 50-field schema.

    PYTHONPATH=. python benchmarks/structured_outputs.py --batch 1 32 --max-tokens 32 --repeats 5

GPU mode (the issue's "batch 64, 8B shape, dummy weights" figure, same run; a few minutes on an H200):

    PYTHONPATH=. python benchmarks/structured_outputs.py --shape benchmarks/gpu/llama3_8b_shape.json \
        --batch 64 --max-tokens 32 --repeats 5

``--shape CONFIG``: a model folder with that config.json, bf16 dummy weights and the tokenizer of
``--tokenizer DIR`` (default: the default model's, 49,152 tokens, when cached on the machine, else the tests'
tiny BPE; a real vocabulary makes the grammar's token tables realistic). The logits keep the shape's width;
tokens past the tokenizer are never allowed by the grammar. Outputs are not detokenized in either
arm (dummy weights pick ids past the tokenizer).

Decode rate = batch * (max_tokens - 1) / (time(max_tokens) - time(1)): the prefill and first token cancel out,
so it is the rate of decode steps alone. Both arms generate exactly ``--max-tokens`` tokens per request: the
schema's string has ``minLength`` far beyond it, so the grammar cannot end early (and EOS is not allowed
before it does). Arms are interleaved (the best of ``--repeats`` each) so the machine's drift hits both.
"""

from __future__ import annotations

import argparse
import statistics
import time


def fifty_field_schema() -> dict:
    kinds = [{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
             {"enum": ["a", "bb", "ccc"]}, {"type": "array", "items": {"type": "integer"}}]
    props = {f"field_{i}": kinds[i % len(kinds)] for i in range(50)}
    return {"type": "object", "properties": props, "required": list(props)}


LONG_SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}}, "required": ["story"]}


def compile_ms(llm, schema: dict) -> float:
    """Wall time of one compile of ``schema`` by the engine's own backend (its tokenizer info already built)."""
    from pagoda.structured_output import StructuredOutputsConfig, StructuredOutputsParams
    from pagoda.structured_output.params import GrammarKey

    backend = llm.llm_engine.core.structured.backend()
    key = GrammarKey.of(StructuredOutputsParams(json=schema), StructuredOutputsConfig())
    t0 = time.perf_counter()
    backend.compile(key)
    return (time.perf_counter() - t0) * 1e3


def decode_rates(llm, prompt: str, batch: int, max_tokens: int, so) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second of this process) of the decode steps alone."""
    from pagoda import SamplingParams

    wall, cpu = {}, {}
    for n in (1, max_tokens):
        p = SamplingParams(temperature=0, max_tokens=n, structured_outputs=so, detokenize=False,
                           ignore_eos=so is None)  # dummy weights may pick EOS; the schema arm cannot end early
        t0, c0 = time.perf_counter(), time.process_time()
        outs = llm.generate([prompt] * batch, p, use_tqdm=False)
        wall[n], cpu[n] = time.perf_counter() - t0, time.process_time() - c0
        assert all(len(o.outputs[0].token_ids) == n for o in outs), "an arm ended early"
    toks = batch * (max_tokens - 1)
    return toks / (wall[max_tokens] - wall[1]), toks / (cpu[max_tokens] - cpu[1])


def shape_model(config: str, tokenizer_dir: str | None) -> str:
    """A folder with ``config`` as its config.json (dummy weights) and the tokenizer files of ``tokenizer_dir``
    (default: the default model's, when it is on this machine; else the tests' tiny BPE tokenizer)."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp(prefix="pagoda-so-shape-"))
    shutil.copy(config, out / "config.json")
    if tokenizer_dir is None:
        from pagoda.models.model_files import DEFAULT_MODEL, cache_dir

        cached = cache_dir() / "models" / DEFAULT_MODEL
        tokenizer_dir = str(cached) if (cached / "tokenizer.json").exists() else None
    if tokenizer_dir is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import build_tokenizer

        build_tokenizer(out)
        print("tokenizer: the tests' tiny BPE (400 tokens; pass --tokenizer DIR for a real vocabulary)")
        return str(out)
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, out / f.name)
    print(f"tokenizer: {tokenizer_dir}")
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape", default=None, help="a config.json: that shape with dummy bf16 weights (GPU mode)")
    ap.add_argument("--tokenizer", default=None, help="with --shape: a folder with tokenizer.json & co")
    args = ap.parse_args()
    from pagoda import LLM, SamplingParams
    from pagoda.structured_output import StructuredOutputsParams

    if args.shape is not None:
        llm = LLM(shape_model(args.shape, args.tokenizer), load_format="dummy", dtype="bfloat16", max_model_len=1024,
                  max_num_seqs=max(args.batch))
    else:
        llm = LLM(args.model, max_model_len=1024)
    tok = llm.get_tokenizer()
    so = StructuredOutputsParams(json=LONG_SCHEMA)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell a long story as JSON."}], tokenize=False,
                                     add_generation_prompt=True)
    t0 = time.perf_counter()
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=2, structured_outputs=so, detokenize=False),
                 use_tqdm=False)
    print(f"first constrained request (tokenizer info + compile + 2 tokens): {time.perf_counter() - t0:.2f} s")
    print(f"compile 50-field schema: {compile_ms(llm, fifty_field_schema()):.1f} ms (one compile, no cache; the "
          f"engine caches compiled grammars per schema)")
    for b in args.batch:
        llm.generate([prompt] * b, SamplingParams(temperature=0, max_tokens=4, detokenize=False),
                     use_tqdm=False)  # warm this size
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "schema": []}
        for _ in range(args.repeats):
            runs["plain"].append(decode_rates(llm, prompt, b, args.max_tokens, None))
            runs["schema"].append(decode_rates(llm, prompt, b, args.max_tokens, so))
        for j, unit in enumerate(("tok/s (wall)", "tok per CPU-s")):
            plain, sch = (statistics.median(r[j] for r in runs[a]) for a in ("plain", "schema"))
            print(f"batch {b}: decode unconstrained {plain:.1f} {unit}, json schema {sch:.1f}, ratio {sch / plain:.3f} "
                  f"(median of {args.repeats}; runs {[round(r[j], 1) for r in runs['plain']]} vs "
                  f"{[round(r[j], 1) for r in runs['schema']]})")


if __name__ == "__main__":
    main()
