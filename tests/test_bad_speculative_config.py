"""Bad speculative-decoding input fails at start-up with a ``ValueError`` naming the key (or the head's file or
field), never a crash or a setting accepted and ignored: keys that pagoda honours for ``draft_model`` only
(``quantization``, ``revision``, ``max_model_len``) given with another method, and EAGLE head checkpoints with a
malformed config.json, missing shape fields, no decoder layer, non-integer aux layer ids, a truncated weights
file or a ``d2t`` of floats. Through ``LLM(...)`` and through ``pagoda serve`` (exit status 1, no traceback).

Before these checks: an EAGLE head with ``quantization: fp8`` ran unquantized and ``max_model_len`` was ignored
for every method but ``draft_model``; a head's bad config.json was a bare JSONDecodeError, a missing field a
KeyError, ``num_hidden_layers: 0`` an IndexError, a truncated file a SafetensorError (each a traceback from
``pagoda serve``), and a float ``d2t`` was truncated to integers on copy.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_spec_eagle import TARGET, _write_head

from pagoda.spec_decode.config import SpeculativeConfig

KEY = "speculative_config.model"


@pytest.mark.parametrize("cfg,match", [
    ({"method": "eagle", "model": "/h", "num_speculative_tokens": 2, "quantization": "fp8"},
     r"speculative_config.quantization applies to method 'draft_model' only"),
    ({"method": "eagle3", "model": "/h", "num_speculative_tokens": 2, "revision": "main"},
     r"speculative_config.revision applies to method 'draft_model' only"),
    ({"method": "eagle", "model": "/h", "num_speculative_tokens": 2, "max_model_len": 64},
     r"speculative_config.max_model_len applies to method 'draft_model' only"),
    ({"method": "ngram", "num_speculative_tokens": 2, "max_model_len": 64},
     r"speculative_config.max_model_len applies to method 'draft_model' only"),
    ({"method": "suffix", "max_model_len": 64}, r"speculative_config.max_model_len applies to method 'draft_model'"),
])
def test_draft_model_keys_with_another_method_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig.from_dict(cfg)


def test_draft_model_keys_still_accepted_for_a_draft_model():
    c = SpeculativeConfig.from_dict({"method": "draft_model", "model": "/d", "num_speculative_tokens": 2,
                                     "quantization": "fp8", "revision": "main", "max_model_len": 64})
    assert (c.quantization, c.revision, c.max_model_len) == ("fp8", "main", 64)


def _head(tiny, name: str, method: str, edit=None, raw=None) -> str:
    path = _write_head(tiny, name, method, edit)
    if raw is not None:
        raw(Path(path))
    return path


def _truncate(folder: Path) -> None:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


BAD_HEADS = {
    "bad-json": ("eagle", None, lambda p: (p / "config.json").write_text("{bad"),
                 r"config.json is not valid JSON"),
    "json-list": ("eagle", None, lambda p: (p / "config.json").write_text("[1]"),
                  r"config.json must hold a JSON object, got list"),
    "no-heads": ("eagle", lambda c, w: c.pop("num_attention_heads"), None,
                 r"config.json num_attention_heads is None; expected a positive integer"),
    "no-vocab": ("eagle3", lambda c, w: c.pop("vocab_size"), None,
                 r"config.json vocab_size is None; expected a positive integer"),
    "zero-layers": ("eagle", lambda c, w: c.update(num_hidden_layers=0), None,
                    r"config.json num_hidden_layers is 0; expected a positive integer"),
    "aux-ids": ("eagle3", lambda c, w: c.update(eagle_aux_hidden_state_layer_ids=["a", 1, 2]), None,
                r"eagle_aux_hidden_state_layer_ids must be a list of target layer indices"),
    "truncated": ("eagle", None, _truncate, r"model.safetensors is not a readable safetensors file"),
    "d2t-float": ("eagle3", lambda c, w: w.update(d2t=w["d2t"].float() + 0.5), None,
                  r"Checkpoint tensor 'd2t': dtype torch.float32 where the model holds torch.int64"),
}


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_bad_head_fails_at_start_up_naming_the_key(tiny, case):
    from pagoda import LLM

    method, edit, raw, match = BAD_HEADS[case]
    path = _head(tiny, f"bad-{case}", method, edit, raw)
    with pytest.raises(ValueError, match=match) as e:
        LLM(str(tiny.path(TARGET)), dtype="float32", max_model_len=128,
            speculative_config={"method": method, "model": path, "num_speculative_tokens": 2})
    assert str(e.value).startswith(KEY + ": "), str(e.value)


def test_d2t_of_int32_still_loads(tiny):
    """An integer ``d2t`` of another width holds the same offsets: loaded, not refused."""
    from pagoda import LLM, SamplingParams

    path = _head(tiny, "bad-d2t-int32", "eagle3", lambda c, w: w.update(d2t=w["d2t"].to(torch.int32)))
    llm = LLM(str(tiny.path(TARGET)), dtype="float32", max_model_len=128,
              speculative_config={"method": "eagle3", "model": path, "num_speculative_tokens": 2})
    out = llm.generate("one two three", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4
    llm.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_exits_with_one_line_naming_the_key(tiny):
    """``pagoda serve --speculative-config`` with a truncated EAGLE head: exit status 1, the key and the file named
    on the last line, no traceback."""
    path = _head(tiny, "bad-serve-truncated", "eagle", raw=_truncate)
    spec = json.dumps({"method": "eagle", "model": path, "num_speculative_tokens": 2})
    proc = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.cli", "serve", str(tiny.path(TARGET)),
                           "--port", str(_free_port()), "--dtype", "float32", "--max-model-len", "128",
                           "--speculative-config", spec], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{KEY}: {path}/model.safetensors is not a readable" in last, last
    assert "Traceback" not in proc.stderr + proc.stdout
