"""Embedding throughput: pagoda vs sentence-transformers / HF transformers, measured in the same run.

CPU (the issue's figure): all-MiniLM-L6-v2 on 2,000 sentences of 8-256 tokens; pagoda ``LLM.embed``
vs ``SentenceTransformer.encode`` (batches of 32, sorted by length, padded) in the same process, per dtype
(both sides in that dtype), interleaved ABBA over ``--rounds`` with the same thread count; then the pagoda
server's /v1/embeddings (16 concurrent requests) vs offline, interleaved the same way. Each round prints wall
and CPU seconds of both sides and the load; the first line gives the linear-FLOP floor::

    python benchmarks/embed_bench.py cpu [--num 2000] [--rounds 5] [--dtypes float32,bfloat16] [--smoke]

GPU: dummy-weight embedders of a given shape on random token ids (the same ids on both sides), bf16, pagoda's
pooling runner (``runner="pooling", convert="embed"``, ``load_format="dummy"``, ``LLM.embed``) vs HF
transformers (batches of 32 sorted by length, padded, pooled and normalised, as sentence-transformers
batches) in the same call. The HF model is constructed on the device (no host random init) and freed before
pagoda starts. Each side: one warm-up run, then ``--rounds`` timed runs (median). Every phase (imports, HF
build, each run, pagoda start-up) prints its seconds. Nothing is downloaded (a small tokenizer is trained in a
temporary model folder; token-id prompts never use it)::

    python benchmarks/embed_bench.py gpu --shape bert-large   # BERT-large: 24 x 1024, CLS; 2,000 prompts
    python benchmarks/embed_bench.py gpu --shape llama-8b     # Llama-3-8B shape, last token; 200 prompts
    python benchmarks/embed_bench.py gpu --shape llama-8b --smoke --device cpu   # the code path, tiny, on CPU

Token lengths are uniform over 8..``--max-len`` (512). Weights are dummy on both sides with different random
values: tokens/s does not depend on them.

Prints one JSON line per measurement (sentences/s, tokens/s) and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "server"))


def sentences(tok, n: int, lo: int = 8, hi: int = 256, seed: int = 0) -> list[str]:
    """``n`` texts whose token counts (with special tokens) are spread uniformly over [lo, hi]."""
    rng = random.Random(seed)
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2][:5000]
    out = []
    for _ in range(n):
        target = rng.randint(lo, hi)
        ws = [rng.choice(words) for _ in range(target)]
        ids = tok(" ".join(ws), truncation=True, max_length=target)["input_ids"]
        out.append(tok.decode(ids[1:-1]))
    return out


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _interleave(name_a: str, fn_a, name_b: str, fn_b, rounds: int, **info) -> list[float]:
    """ABBA... rounds of two callables in one process; one JSON line per round (wall and CPU seconds of
    each, their ratios a/b and the 1-minute load average); returns the wall ratios."""
    ratios = []
    for r in range(rounds):
        first_a = r % 2 == 0
        res = {}
        for name, fn in ((name_a, fn_a), (name_b, fn_b)) if first_a else ((name_b, fn_b), (name_a, fn_a)):
            res[name] = fn()
        (wa, ca), (wb, cb) = res[name_a], res[name_b]
        ratios.append(wa / wb)
        emit(round=r, **info, **{f"{name_a}_s": round(wa, 3), f"{name_a}_cpu_s": round(ca, 3),
                                 f"{name_b}_s": round(wb, 3), f"{name_b}_cpu_s": round(cb, 3)},
             wall_ratio=round(wa / wb, 3), cpu_ratio=round(ca / cb, 3) if cb else None,
             load1=round(os.getloadavg()[0], 2))
    return ratios


def _linear_floor(path: str, ntok: int) -> dict:
    """The linear layers' FLOPs for ``ntok`` tokens over the fp32 matmul rate measured now (2048-row GEMMs of
    the model's shapes, best of 5): seconds neither side can go below (attention, norms excluded)."""
    import torch

    cfg = json.loads((Path(path) / "config.json").read_text())
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    shapes = [(h, 3 * h), (h, h), (h, i), (i, h)]
    per_tok = 2 * n * sum(a * b for a, b in shapes)
    ws = [(torch.randn(2048, a), torch.randn(b, a)) for a, b in shapes]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for x, w in ws:
            torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    rate = 2 * 2048 * sum(a * b for a, b in shapes) / best
    return dict(linear_gflop=round(per_tok * ntok / 1e9, 1), matmul_gflops=round(rate / 1e9, 1),
                linear_floor_s=round(per_tok * ntok / rate, 2))


def bench_cpu(args) -> None:
    """Offline pagoda vs sentence-transformers per dtype, interleaved in this process (same thread count);
    then the server vs offline, interleaved. The first dtype is the headline (fp32: both sides' default).
    pagoda is imported first, so its OpenMP wait policy (pagoda.worker.cpu_threads) holds for both sides."""
    from pagoda import LLM  # noqa: I001 - before torch: the thread policy applies to the whole process

    import torch
    from pooling_models import minilm_path
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    path = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path)
    texts = sentences(tok, args.num)
    ntok = sum(len(tok(t)["input_ids"]) for t in texts)
    emit(sentences=len(texts), tokens=ntok, threads=torch.get_num_threads(), load1=round(os.getloadavg()[0], 2),
         **_linear_floor(path, ntok))
    offline = {}
    for dtype in args.dtypes.split(","):
        st = SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": getattr(torch, dtype)})
        llm = LLM(path, dtype=dtype)
        st.encode(texts[:64], batch_size=32)
        llm.embed(texts[:64], use_tqdm=False)
        ref = st.encode(texts[:200], batch_size=32, convert_to_tensor=True).float()
        got = torch.tensor([o.outputs.embedding for o in llm.embed(texts[:200], use_tqdm=False)])
        cos = float(torch.nn.functional.cosine_similarity(got, ref, dim=1).min())
        ratios = _interleave("st", lambda st=st: _timed(lambda: st.encode(texts, batch_size=32)),
                             "pagoda", lambda llm=llm: _timed(lambda: llm.embed(texts, use_tqdm=False)),
                             args.rounds, dtype=dtype)
        emit(summary=f"pagoda-offline-{dtype} vs sentence-transformers-{dtype}",
             median_speedup=statistics.median(ratios), speedups=[round(r, 3) for r in ratios],
             min_cosine_vs_st=cos, tokens=ntok)
        offline[dtype] = llm
        del st
    dtype = args.dtypes.split(",")[0]
    llm = offline[dtype]
    with _server(path, dtype, args.threads) as (url, pid):
        ratios = _interleave("offline", lambda: _timed(lambda: llm.embed(texts, use_tqdm=False)),
                             "server", lambda: _server_run(url, pid, texts, args.concurrency, args.encoding_format),
                             args.rounds, dtype=dtype, encoding_format=args.encoding_format)
    emit(summary=f"pagoda-server-{dtype} vs offline (throughput ratio)",
         median_server_over_offline=statistics.median(ratios), ratios=[round(r, 3) for r in ratios],
         concurrency=args.concurrency, encoding_format=args.encoding_format)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its live descendants, from /proc."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@contextlib.contextmanager
def _server(path: str, dtype: str, threads: int):
    import httpx
    from server_utils import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pagoda", "serve", path, "--dtype", dtype, "--port", str(port),
                             "--disable-log-requests", "--disable-log-stats"], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def _server_run(url: str, pid: int, texts: list[str], concurrency: int, fmt: str) -> tuple[float, float]:
    """(wall seconds, server-tree CPU seconds) of embedding ``texts`` as ``concurrency`` concurrent requests."""
    import asyncio

    import httpx

    chunks = [texts[i::concurrency] for i in range(concurrency)]

    async def run() -> tuple[float, float]:
        async with httpx.AsyncClient(timeout=600) as c:
            await c.post(f"{url}/v1/embeddings", json={"input": texts[:64], "encoding_format": fmt})
            c0 = _tree_cpu(pid)
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(c.post(f"{url}/v1/embeddings", json={"input": ch, "encoding_format": fmt})
                                        for ch in chunks))
            dt = time.perf_counter() - t0
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200][:1]
            assert sum(len(r.json()["data"]) for r in rs) == len(texts)
            return dt, _tree_cpu(pid) - c0
    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------------------------
# GPU mode: dummy-weight shapes, pagoda vs HF transformers on the same token ids.

SHAPES = {  # name -> (pagoda architecture, HF peer class, pooling, config fields)
    "bert-large": ("BertModel", "BertModel", "CLS",
                   dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        max_position_embeddings=512, vocab_size=30522, model_type="bert")),
    "llama-8b": ("LlamaForCausalLM", "LlamaModel", "LAST",  # pagoda: --runner pooling --convert embed
                 dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, max_position_embeddings=8192, vocab_size=128256, rms_norm_eps=1e-5,
                      rope_theta=500000.0, model_type="llama", tie_word_embeddings=False)),
}
GPU_DEFAULT_NUM = {"bert-large": 2000, "llama-8b": 200}
_SMOKE_FIELDS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=1000)
"""``--smoke``: the shape cut to these sizes (same architecture and code path), e.g. on the CPU."""


def gpu_shape(name: str, smoke: bool = False) -> tuple[str, str, str, dict]:
    """(pagoda architecture, HF class, pooling, config fields) of shape ``name``; ``smoke`` shrinks it."""
    arch, hf_cls, pooling, fields = SHAPES[name]
    if smoke:
        fields = {**fields, **_SMOKE_FIELDS}
        if "num_key_value_heads" in fields:
            fields["num_key_value_heads"] = 2
    return arch, hf_cls, pooling, fields


def token_prompts(num: int, max_len: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """``num`` prompts of random token ids, lengths uniform over [8, max_len] (ids 1000-29999 on the full
    vocabularies, as before; a tiny vocabulary's upper three quarters otherwise)."""
    rng = random.Random(seed)
    lo, hi = min(1000, vocab_size // 4), min(30000, vocab_size)
    return [[rng.randrange(lo, hi) for _ in range(rng.randint(8, max_len))] for _ in range(num)]


def linear_flops_per_token(fields: dict) -> int:
    """FLOPs of one token through the layers' linears (attention scores, norms and embeddings excluded)."""
    h, i, n = fields["hidden_size"], fields["intermediate_size"], fields["num_hidden_layers"]
    kv = fields.get("num_key_value_heads", fields["num_attention_heads"]) * h // fields["num_attention_heads"]
    mlp = 3 * h * i if fields["model_type"] == "llama" else 2 * h * i  # gated (gate, up, down) vs up, down
    return 2 * n * (2 * h * h + 2 * h * kv + mlp)


def shape_folder(arch: str, fields: dict) -> Path:
    """A model folder with only config.json and a small tokenizer trained here (token-id prompts never use it;
    pagoda loads one at start-up): nothing is downloaded, so no PAGODA_CACHE / pip access is needed."""
    from pooling_models import build_wordpiece_tokenizer
    from tiny_models import build_tokenizer

    folder = Path(tempfile.mkdtemp(prefix=f"embed-{arch}-"))
    (folder / "config.json").write_text(json.dumps({**fields, "architectures": [arch], "torch_dtype": "bfloat16"}))
    (build_wordpiece_tokenizer if fields["model_type"] == "bert" else build_tokenizer)(folder)
    return folder


def build_hf_model(hf_cls: str, fields: dict, device: str):
    """The HF peer in bf16, constructed directly on ``device`` (``torch.device`` as the default device): its
    random init runs there, not on the host (8 B parameters on the host take minutes)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**fields)
    with torch.device(device):
        model = getattr(transformers, hf_cls)._from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def hf_embed(model, prompts: list[list[int]], pooling: str, device: str, batch_size: int = 32):
    """Embeddings the way sentence-transformers computes them: batches of ``batch_size`` sorted by length,
    right-padded with an attention mask, CLS or last-token pooling, L2-normalised, copied to the host."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            lens = [len(prompts[i]) for i in idx]
            m = max(lens)
            ids = torch.tensor([prompts[i] + [0] * (m - len(prompts[i])) for i in idx], device=device)
            mask = torch.tensor([[1] * n + [0] * (m - n) for n in lens], device=device)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            rows = torch.tensor([0] * len(idx) if pooling == "CLS" else [n - 1 for n in lens], device=device)
            pooled = hidden[torch.arange(len(idx), device=device), rows]
            emb = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
            for j, i in enumerate(idx):
                out[i] = emb[j]
    return out


class _Phases:
    """Prints one JSON line per phase (its seconds and the seconds since start), so a slow phase shows."""

    def __init__(self, device: str) -> None:
        self.device, self.t_start = device, time.perf_counter()

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(self, phase: str, fn, tokens: int | None = None, **info):
        """``fn()`` between device syncs; prints its seconds (and tokens/s when ``tokens`` is given)."""
        self.sync()
        t0 = time.perf_counter()
        result = fn()
        self.sync()
        dt = time.perf_counter() - t0
        rate = {} if tokens is None else {"tokens": tokens, "tok_per_s": round(tokens / dt, 1)}
        emit(phase=phase, seconds=round(dt, 3), elapsed_s=round(time.perf_counter() - self.t_start, 1), **info,
             **rate)
        return result, dt

    def rounds(self, system: str, fn, rounds: int, tokens: int) -> tuple[float, list]:
        """An untimed warm-up over the whole set (kernel compiles, allocator growth), then ``rounds`` timed
        runs, one line each; returns (the median seconds, the warm-up's result)."""
        result, _ = self.run(f"{system}_warmup", fn, tokens)
        return statistics.median(self.run(f"{system}_run", fn, tokens, round=r)[1] for r in range(rounds)), result


def _gpu_imports() -> tuple:
    import torch
    import transformers

    from pagoda import LLM

    return torch, transformers, LLM


def bench_gpu(args) -> None:
    """HF first (built on the device, timed, freed), then pagoda's pooling runner (``--runner pooling
    --convert embed``, ``load_format="dummy"``) on the same token ids; both bf16, both dummy weights (different
    random values on each side: tokens/s does not depend on them)."""
    import gc

    ph = _Phases(args.device)
    (torch, transformers, LLM), _ = ph.run("imports", _gpu_imports)
    emit(torch=torch.__version__, transformers=transformers.__version__,
         gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None)
    arch, hf_cls, pooling, fields = gpu_shape(args.shape, args.smoke)
    folder, _ = ph.run("model_folder", lambda: shape_folder(arch, fields))
    prompts = token_prompts(args.num, args.max_len, fields["vocab_size"])
    ntok = sum(map(len, prompts))
    lens = sorted(map(len, prompts))
    emit(shape=args.shape, smoke=args.smoke, device=args.device, prompts=len(prompts), tokens=ntok,
         hf_padded_tokens=sum(len(lens[b : b + 32]) * lens[b : b + 32][-1] for b in range(0, len(lens), 32)),
         max_len=args.max_len, dtype="bfloat16", pooling=pooling, pagoda_arch=arch, hf_class=hf_cls,
         weights="dummy on both sides (different random values; tokens/s does not depend on them)")
    hf, _ = ph.run("hf_build", lambda: build_hf_model(hf_cls, fields, args.device))
    emit(hf_attn_implementation=getattr(hf.config, "_attn_implementation", None),
         hf_param_device=str(next(hf.parameters()).device))
    t_hf, hf_out = ph.rounds("hf", functools.partial(hf_embed, hf, prompts, pooling, args.device), args.rounds,
                             ntok)
    del hf
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    llm, _ = ph.run("pagoda_startup", lambda: LLM(
        str(folder), load_format="dummy", dtype="bfloat16", runner="pooling", convert="embed", device=args.device,
        max_model_len=max(args.max_len, 512)))
    with llm:
        t_pg, pg_out = ph.rounds("pagoda", functools.partial(llm.embed, prompts, use_tqdm=False), args.rounds, ntok)
    dims = {len(e) for e in hf_out} | {len(o.outputs.embedding) for o in pg_out}
    if len(hf_out) != len(prompts) or len(pg_out) != len(prompts) or dims != {fields["hidden_size"]}:
        raise RuntimeError(f"expected {len(prompts)} embeddings of {fields['hidden_size']} per side, got "
                           f"{len(hf_out)} (HF) and {len(pg_out)} (pagoda) of sizes {sorted(dims)}")
    flop = linear_flops_per_token(fields) * ntok
    emit(summary=f"pagoda vs HF transformers, {args.shape} shape (median of {args.rounds} runs)", tokens=ntok,
         hf_tok_per_s=round(ntok / t_hf, 1), pagoda_tok_per_s=round(ntok / t_pg, 1),
         speedup_vs_hf=round(t_hf / t_pg, 3), linear_tflop=round(flop / 1e12, 2),
         hf_linear_tflops=round(flop / t_hf / 1e12, 1), pagoda_linear_tflops=round(flop / t_pg / 1e12, 1),
         total_s=round(time.perf_counter() - ph.t_start, 1))



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("cpu", "gpu"))
    ap.add_argument("--num", type=int, default=None, help="prompts (default: CPU 2000; GPU "
                    + ", ".join(f"{k} {v}" for k, v in GPU_DEFAULT_NUM.items()) + ")")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="bert-large")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="GPU mode: the device of both sides (cpu runs the GPU "
                    "mode's code path on the host, with --smoke)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="CPU: dtypes to run, pagoda and sentence-"
                    "transformers alike (the first is the headline, the server's and the server ratio's baseline)")
    ap.add_argument("--rounds", type=int, default=None, help="CPU: interleaved rounds (ABBA...) per comparison "
                    "(default 5); GPU: timed runs per side after one warm-up run (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="CPU: torch threads, both sides and the server")
    ap.add_argument("--concurrency", type=int, default=16, help="CPU: concurrent /v1/embeddings requests")
    ap.add_argument("--encoding-format", default="float", choices=("float", "base64"))
    ap.add_argument("--smoke", action="store_true", help="a few sentences, to check the command runs (GPU mode: "
                    "the shape cut to 2 layers of width 64, 16 prompts of 8-48 tokens)")
    args = ap.parse_args(argv)
    gpu = args.mode == "gpu"
    if args.num is None:
        args.num = GPU_DEFAULT_NUM[args.shape] if gpu else 2000
    if args.rounds is None:
        args.rounds = 3 if gpu else 5
    if args.smoke:
        args.num, args.rounds = (16, 1) if gpu else (40, 1)
        if gpu:
            args.max_len = min(args.max_len, 48)
    (bench_gpu if gpu else bench_cpu)(args)


if __name__ == "__main__":
    main()
