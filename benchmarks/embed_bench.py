"""Embedding throughput: pagoda vs sentence-transformers / HF transformers, measured in the same run.

CPU (the issue's figure): all-MiniLM-L6-v2 on 2,000 sentences of 8-256 tokens; pagoda ``LLM.embed``
vs ``SentenceTransformer.encode`` (batches of 32, sorted by length, padded) in the same process, per dtype
(both sides in that dtype), interleaved ABBA over ``--rounds`` with the same thread count; then the pagoda
server's /v1/embeddings (16 concurrent requests) vs offline, interleaved the same way. Each round prints wall
and CPU seconds of both sides and the load; the first line gives the linear-FLOP floor::

    python benchmarks/embed_bench.py cpu [--num 2000] [--rounds 5] [--dtypes float32,bfloat16] [--smoke]

GPU: dummy-weight embedders of a given shape, token-id inputs, pagoda vs HF ``AutoModel`` (bf16, batches of
32 sorted by length, as sentence-transformers batches) in the same call::

    python benchmarks/embed_bench.py gpu --shape bert-large   # BERT-large: 24 x 1024, CLS pooling
    python benchmarks/embed_bench.py gpu --shape llama-8b     # Llama-3-8B shape, last-token pooling

Prints one JSON line per measurement (sentences/s, tokens/s) and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
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

SHAPES = {
    "bert-large": ("BertModel", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096, max_position_embeddings=512, vocab_size=30522,
                                     model_type="bert")),
    "llama-8b": ("LlamaModel", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                    num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192,
                                    vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, model_type="llama",
                                    torch_dtype="bfloat16")),
}


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


def bench_gpu(args) -> None:
    import torch
    import transformers
    from pooling_models import minilm_path

    from pagoda import LLM

    arch, shape = SHAPES[args.shape]
    folder = Path(tempfile.mkdtemp(prefix=f"embed-{args.shape}-"))
    cfg = {**shape, "architectures": [arch]}
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        src = minilm_path() / f
        (folder / f).write_bytes(src.read_bytes())
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 30000) for _ in range(rng.randint(8, args.max_len))] for _ in range(args.num)]
    ntok = sum(map(len, prompts))
    hf_cfg = getattr(transformers, cfg["model_type"].capitalize() + "Config" if cfg["model_type"] != "bert"
                     else "BertConfig")(**shape)
    hf = transformers.AutoModel.from_config(hf_cfg, torch_dtype=torch.bfloat16).cuda().eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), 32):
            batch = [prompts[i] for i in order[b : b + 32]]
            m = max(map(len, batch))
            ids = torch.tensor([p + [0] * (m - len(p)) for p in batch], device="cuda")
            mask = torch.tensor([[1] * len(p) + [0] * (m - len(p)) for p in batch], device="cuda")
            hf(input_ids=ids, attention_mask=mask)
    torch.cuda.synchronize()
    t_hf = time.perf_counter() - t0
    emit(system="hf", shape=args.shape, tokens=ntok, seconds=t_hf, tok_per_s=ntok / t_hf)
    del hf
    torch.cuda.empty_cache()
    with LLM(str(folder), load_format="dummy", dtype="bfloat16", runner="pooling",
             max_model_len=max(args.max_len, 512)) as llm:
        llm.embed(prompts[:32], use_tqdm=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.embed(prompts, use_tqdm=False)
        t_pg = time.perf_counter() - t0
    emit(system="pagoda", shape=args.shape, tokens=ntok, seconds=t_pg, tok_per_s=ntok / t_pg, speedup_vs_hf=t_hf / t_pg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("cpu", "gpu"))
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="bert-large")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="CPU: dtypes to run, pagoda and sentence-"
                    "transformers alike (the first is the headline, the server's and the server ratio's baseline)")
    ap.add_argument("--rounds", type=int, default=5, help="CPU: interleaved rounds (ABBA...) per comparison")
    ap.add_argument("--threads", type=int, default=2, help="CPU: torch threads, both sides and the server")
    ap.add_argument("--concurrency", type=int, default=16, help="CPU: concurrent /v1/embeddings requests")
    ap.add_argument("--encoding-format", default="float", choices=("float", "base64"))
    ap.add_argument("--smoke", action="store_true", help="a few sentences, to check the command runs")
    args = ap.parse_args()
    if args.smoke:
        args.num, args.rounds = 40, 1
    (bench_cpu if args.mode == "cpu" else bench_gpu)(args)


if __name__ == "__main__":
    main()
