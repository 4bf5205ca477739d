"""vLLM's ``vllm bench`` flags that ``pagoda bench`` does not honour: each is refused by name, with its reason.

Every other flag of vLLM's ``bench serve``, ``bench throughput`` and ``bench latency`` is one of pagoda's, with
vLLM's meaning (docs/cli.md lists them). A flag here is registered hidden and fails the parse naming it (the
engine flags' mechanism, :mod:`pagoda.entrypoints.vllm_flags`), unless its value is one that changes nothing here
(``--n 1``, ``--random-batch-size 1``), or the flag is a no-op here by nature (``ANY_VALUE``: ``--disable-tqdm``
when no progress bar is drawn). A flag that is neither pagoda's nor vLLM's keeps argparse's own error.
"""

from __future__ import annotations

import argparse

from pagoda.entrypoints.vllm_flags import ANY_VALUE, UnsupportedFlag
from pagoda.entrypoints.vllm_flags import _Refuse as Refuse


def _u(flags: str, reason: str, *accepted: str, value: bool = True) -> UnsupportedFlag:
    return UnsupportedFlag(tuple(flags.split()), reason, value, accepted)


_DATASETS = "the dataset it shapes is not available here (--dataset-name random, sharegpt or prefix_repetition)"
_PROFILE = "pagoda has no profiler hooks (no /start_profile, /stop_profile routes); --step-timeline times the steps"

SERVE: tuple[UnsupportedFlag, ...] = (
    _u("--use-beam-search", "the load generator sends sampling requests only", value=False),
    _u("--profile", _PROFILE, value=False),
    _u("--probe-request-rate", "probe requests are not sent", "0", "0.0"),
    _u("--self-timed --no-self-timed", "it is for vLLM's timed_trace dataset, which is not available here",
       value=False),
    _u("--chat-template-kwargs", "vLLM applies it to datasets rendered client-side (custom, speed_bench), not "
       "available here; send it to the server with --extra-body '{\"chat_template_kwargs\": {...}}'"),
    _u("--ramp-up-strategy --ramp-up-start-rps --ramp-up-end-rps",
       "a ramped request rate is not generated: use --request-rate (and --burstiness)"),
    _u("--plot-timeline --plot-dataset-stats", "no plot is drawn: --save-result writes every request's figures",
       value=False),
    _u("--timeline-itl-thresholds", "no plot is drawn: --save-result writes every request's figures"),
    _u("--tokenizer-mode", "--tokenizer loads a Hugging Face tokenizer", "auto", "hf"),
    _u("--trust-remote-code", "remote code is never executed (--tokenizer loads without it)", value=False),
    _u("--custom-output-len --spec-bench-output-len --spec-bench-category --sonnet-input-len --sonnet-output-len "
       "--sonnet-prefix-len --blazedit-min-distance --blazedit-max-distance --random-mm-base-items-per-request "
       "--random-mm-num-mm-items-range-ratio --random-mm-limit-mm-per-prompt --random-mm-bucket-config --hf-subset "
       "--hf-split --hf-name --hf-output-len", _DATASETS),
    _u("--random-batch-size", "several texts per request are vLLM's embedding benchmark, not run here", "1"),
    _u("--no-reranker", "vLLM's reranker benchmark is not run here", value=False),
    _u("--disable-tqdm", "accepted: no progress bar is drawn", ANY_VALUE, value=False),
    _u("--no-stream", "accepted: no dataset file is loaded (every dataset is generated from --seed)", ANY_VALUE,
       value=False),
    _u("--no-oversample", "accepted: a generated dataset has exactly --num-prompts requests", ANY_VALUE, value=False),
    _u("--skip-chat-template", "accepted: prompts are sent as generated (no client-side chat template)", ANY_VALUE,
       value=False),
    _u("--save-detailed", "accepted: --save-result always saves every request's figures", ANY_VALUE, value=False),
)
"""vLLM's ``bench serve`` flags not honoured by ``pagoda bench serve`` (refused, or accepted as no-ops)."""

THROUGHPUT: tuple[UnsupportedFlag, ...] = (
    _u("--n", "one sequence per prompt is generated", "1"),
    _u("--async-engine", "the offline benchmark drives the LLM class; pagoda bench serve measures the async server",
       value=False),
    _u("--disable-frontend-multiprocessing", "it applies to --async-engine, which is not supported", value=False),
    _u("--prefix-len --random-prefix-len", "a shared prefix is --dataset-name prefix_repetition here", "0"),
    _u("--hf-subset --hf-split", _DATASETS),
    _u("--profile", _PROFILE, value=False),
    _u("--disable-tqdm", "accepted: no progress bar is drawn", ANY_VALUE, value=False),
)
"""vLLM's ``bench throughput`` flags not honoured by ``pagoda bench throughput``."""

LATENCY: tuple[UnsupportedFlag, ...] = (
    _u("--use-beam-search", "the latency benchmark times sampling steps (LLM.beam_search runs beam search offline)",
       value=False),
    _u("--profile", _PROFILE, value=False),
)
"""vLLM's ``bench latency`` flags not honoured by ``pagoda bench latency``."""


def add_refused_args(p: argparse.ArgumentParser, table: tuple[UnsupportedFlag, ...]) -> None:
    """Register ``table``'s flags on ``p``: each fails the parse naming it, unless its value changes nothing."""
    for e in table:
        for flag in e.flags:
            p.add_argument(flag, action=Refuse, entry=e, dest=f"unsupported_{flag[2:]}")


def markdown_rows(table: tuple[UnsupportedFlag, ...]) -> list[str]:
    """``| flags | accepted when | why not |`` rows of ``table`` (docs/cli.md's bench tables)."""
    rows = []
    for e in table:
        flags = ", ".join(f"`{f}`" for f in e.flags)
        when = "always" if ANY_VALUE in e.accepted else (", ".join(f"`{v}`" for v in e.accepted) or "never")
        rows.append(f"| {flags} | {when} | {e.reason} |")
    return rows
