"""Seeded fuzz of the tool-call parsers (hermes, llama3_json, mistral, pythonic) at the parser level.

Random calls -- names, nested arguments with unicode, escapes, quotes, brackets and the formats' own markers inside
strings, numbers, empty arguments, several calls -- are written in each format with text around them where the
format allows it. Checked:

* the unstreamed parse gives exactly those calls (names, arguments JSON-equal) and the content;
* the same text fed as deltas split at random points (one character at a time too) reassembles, per call index, to
  the unstreamed names and ``arguments`` strings and the same content;
* near misses (a fault inserted, a span dropped or repeated, a closing marker left out, the text cut short by EOS or
  at ``max_tokens``) never raise or log a parser failure, and agree with docs/serving.md: malformed output is the
  text as content unstreamed; a stream that sent no call sends the text; a cut output streams to exactly its
  unstreamed answer; a stream finishes ``tool_calls`` only with every call it sent whole.

What this found (pinned below): the pythonic parser read ASCII names only (``[f(é=1)]`` was text; Python's ``ast``,
which vLLM's parser uses, takes any identifier), let a keyword repeat (``f(a=1, a=2)``: arguments JSON with a
duplicate key; Python refuses it), and put the lone surrogates Python reads from a JSON-style ``"\\ud83d\\ude42"``
raw into the arguments (text no UTF-8 encoder takes: the response could not be sent).
"""

from __future__ import annotations

import ast
import json
import logging
import random
import unicodedata
from typing import Any

import pytest

from pagoda.entrypoints.openai.tool_parsers import ToolCallStream, get_tool_parser

FORMATS = ["hermes", "llama3_json", "mistral", "pythonic"]
TRIALS = 150  # per format, for each of the two fuzz tests

_BITS = ["a", "Z", " ", "é", "ß", "中文", "🙂", '"', "'", "\\", "\n", "\t", "{", "}", "[", "]", "(", ")", ",", ":", ";",
         "=", "#", "/", "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", ")]", "\\u00e9",
         "\\n", "\x01", "\u2028", "'''", '"""']
_KEYS = ["city", "n", "k_1", "_x", "A", "é", "météo", "中文", "Ωmega", "x\u00b7y", "_é", "\ufb01le"]  # ﬁle: NFKC file
_NUMBERS = [0, 1, -1, 7, -42, 10**20, -(10**18), 1.5, -0.25, 1e-7, 2.5e10, -1e-300, 0.0]
_TEXT = ["", "", "Sure.", "Let me check.\n", "ok 🙂 ", "a<b", "x {y}", "  ", "\n\n", "[note]", "<tool", "[TOOL",
         'call: {"a": 1}', "é"]


def _str(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice(_BITS) for _ in range(rng.randint(0, n)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randint(0, 6 if depth < 3 else 3)
    if k == 0:
        return rng.choice(_NUMBERS)
    if k == 1:
        return rng.choice([True, False, None])
    if k <= 3:
        return _str(rng)
    if k == 4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(_KEYS + [_str(rng, 3)]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _args(rng: random.Random) -> dict[str, Any]:
    return {rng.choice(_KEYS): _value(rng) for _ in range(rng.randint(0, 4))}


def _name(rng: random.Random, fmt: str) -> str:
    extra = {"hermes": ["get-weather", "ns.tool", "météo"], "llama3_json": ["get-weather", "ns.tool", "météo"],
             "mistral": ["get-weather", "ns.tool"], "pythonic": ["_private", "météo", "中文", "fé", "ns.tool"]}[fmt]
    return rng.choice(["get_weather", "f", "now", "a1", "search_web", *extra])


def _json(rng: random.Random, value: Any) -> str:
    seps = rng.choice([(", ", ": "), (",", ":"), (" , ", " :  ")])
    return json.dumps(value, separators=seps, ensure_ascii=rng.random() < 0.4, indent=rng.choice([None, None, 1, "\t"]))


def _py_str(rng: random.Random, s: str) -> str:
    k = rng.randint(0, 3)
    if k == 0:
        return repr(s)
    if k == 1:  # as JSON writes it (ASCII: a pair of \u escapes for an emoji, two surrogates to Python)
        return json.dumps(s, ensure_ascii=rng.random() < 0.5)
    if k == 2:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") + "'"
    return '"""' + s.replace("\\", "\\\\").replace('"', '\\"') + '"""'


def _py(rng: random.Random, v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py_str(rng, k)}: {_py(rng, x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        if rng.random() < 0.2:
            return "(" + "".join(_py(rng, x) + ", " for x in v) + ")"
        return "[" + ", ".join(_py(rng, x) for x in v) + "]"
    if isinstance(v, str):
        return _py_str(rng, v)
    if v is None or isinstance(v, bool):
        return rng.choice([repr(v), json.dumps(v)])
    return repr(v)


def _render(rng: random.Random, fmt: str) -> tuple[str, list[tuple[str, dict[str, Any]]], str | None]:
    """A well-formed output of ``fmt``: (text, the calls, the content expected)."""
    calls = [(_name(rng, fmt), _args(rng)) for _ in range(rng.choice([1, 1, 2, 3]))]
    if fmt == "hermes":
        segs = [rng.choice(_TEXT) for _ in range(len(calls) + 1)]
        out = segs[0]
        for (n, a), after in zip(calls, segs[1:], strict=True):
            obj: dict[str, Any] = {"name": n, "arguments": a} if a or rng.random() < 0.7 else {"name": n}
            if rng.random() < 0.2:
                obj = dict(reversed(list(obj.items())))
            out += ("<tool_call>" + rng.choice(["", "\n", " "]) + _json(rng, obj) + rng.choice(["", "\n", " "])
                    + "</tool_call>" + after)
        return out, calls, (segs[0].rstrip() + "".join(s.strip() for s in segs[1:])) or None
    if fmt == "llama3_json":
        key = rng.choice(["parameters", "arguments"])
        return (rng.choice(["", "<|python_tag|>", " ", "\n"])
                + rng.choice([";", "; ", " ;\n"]).join(_json(rng, {"name": n, key: a}) for n, a in calls)), calls, None
    if fmt == "mistral":
        before = rng.choice(_TEXT)
        if rng.random() < 0.5:
            out = before + "[TOOL_CALLS]" + rng.choice(["", " "]) + _json(rng, [{"name": n, "arguments": a}
                                                                                 for n, a in calls])
        else:
            out = before + "".join(f"[TOOL_CALLS]{n}{rng.choice(['[ARGS]', '[ARGS]', ''])}{_json(rng, a)}"
                                   for n, a in calls)
        return out, calls, before.rstrip() or None
    ws = lambda: rng.choice(["", "", " ", "\n"])  # noqa: E731
    out = ws() + "[" + ws() + ("," + ws()).join(
        f"{n}(" + ws() + ("," + ws()).join(f"{k}{rng.choice(['=', ' = '])}{_py(rng, v)}" for k, v in a.items())
        + ws() + ")" for n, a in calls) + ws() + "]" + ws()
    # Python's names are NFKC, and its "\ud83d\ude42" two surrogates, which the arguments keep as JSON escapes
    return out, [(_nfkc(n), {_nfkc(k): v for k, v in a.items()}) for n, a in calls], None


def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def _joined(v: Any) -> Any:
    """``v`` with surrogate pairs in its strings joined (as a JSON reader joins two ``\\u`` escapes)."""
    if isinstance(v, str):
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    if isinstance(v, list):
        return [_joined(x) for x in v]
    if isinstance(v, dict):
        return {_joined(k): _joined(x) for k, x in v.items()}
    return v


def _pieces(rng: random.Random, text: str) -> list[str]:
    mode = rng.randint(0, 3)
    if mode == 0:
        return list(text) or [""]
    if mode == 1:
        return [text]
    out = []
    while text:
        k = rng.choice([1, 2, 3, 5, 8, 13]) if mode == 2 else rng.randint(1, max(1, len(text) // 2))
        out.append(text[:k])
        text = text[k:]
    return out or [""]


def _stream(fmt: str, pieces: list[str], cut: bool = False) -> tuple[str, list[tuple[str, str]], ToolCallStream]:
    """The deltas of ``pieces`` fed in turn, reassembled as a client does: (content, [(name, arguments)])."""
    s = ToolCallStream(get_tool_parser(fmt))
    content, calls, so_far = "", {}, ""
    for k, piece in enumerate(pieces):
        so_far += piece
        final = k == len(pieces) - 1
        new, entries = s.update(so_far, final, cut and final)
        content += new
        for e in entries:
            if "id" in e:
                assert e["index"] not in calls and e["type"] == "function"
                calls[e["index"]] = [e["function"]["name"], ""]
            else:
                assert set(e) == {"index", "function"} and set(e["function"]) == {"arguments"}
            calls[e["index"]][1] += e["function"]["arguments"]
    return content, [(n, a) for n, a in (calls[i] for i in sorted(calls))], s


def _loads(a: str) -> Any:
    try:
        return json.loads(a)
    except ValueError:
        return None


class _Failures(logging.Handler):
    """Records a parser failure logged (``extract_tool_calls`` / the stream swallow exceptions, logging them)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture
def failures_logged():
    h = _Failures()
    logger = logging.getLogger("pagoda.server")
    logger.addHandler(h)
    yield h.records
    logger.removeHandler(h)


@pytest.mark.parametrize("fmt", FORMATS)
def test_well_formed_calls_parse_and_stream_exactly(fmt, failures_logged):
    rng = random.Random(f"tool-parsers-fuzz-well-{fmt}")
    bad = []
    for _ in range(TRIALS):
        text, calls, content = _render(rng, fmt)
        info = get_tool_parser(fmt).extract_tool_calls(text)
        got = [(c["function"]["name"], _loads(c["function"]["arguments"])) for c in info.tool_calls]
        if got != [(n, _joined(a)) for n, a in calls] or info.content != content or not info.complete:
            bad.append(f"unstreamed {text!r}\n    got {got} {info.content!r}\n    want {calls} {content!r}")
            continue
        for c in info.tool_calls:  # the arguments text is valid UTF-8 (a lone surrogate would fail the response)
            c["function"]["arguments"].encode("utf-8")
        whole = [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls]
        for pieces in (list(text), _pieces(rng, text)):
            s_content, s_calls, s = _stream(fmt, pieces)
            if (s_content, s_calls, s.called) != (content or "", whole, True):
                bad.append(f"streamed {pieces!r}\n    got {s_content!r} {s_calls}\n    want {content!r} {whole}")
                break
    assert not bad and not failures_logged, f"{len(bad)} failures:\n" + "\n".join(bad[:5]) + str(failures_logged[:3])


_FAULTS = ["#", "}", "{", "]", "[", '"', "'", "x y", ")", "(", ",", ":", "=", "\\", "<tool_call>", "</tool_call>",
           "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", ";", "\n", "é", "€", "1e999", "NaN", "-", "...", "a=1, a"]


def _near_miss(rng: random.Random, text: str) -> tuple[str, bool]:
    """``text`` spoiled: (the output, whether it was cut at ``max_tokens``)."""
    k = rng.randint(0, 5)
    if k == 0:  # a fault inserted
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(_FAULTS) + text[i:], False
    if k == 1:  # a span dropped
        i = rng.randrange(len(text))
        return text[:i] + text[i + rng.randint(1, 3):], False
    if k == 2:  # a closing marker left out
        for t in ["</tool_call>", "]", ")", "}"]:
            j = text.rfind(t)
            if j >= 0 and rng.random() < 0.6:
                return text[:j] + text[j + len(t):], False
        return text, False
    if k == 3:  # a span repeated
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        return text[:j] + text[i:j] + text[j:], False
    return text[:rng.randint(0, len(text))], k == 5  # EOS inside (4), cut at max_tokens (5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_near_misses_never_raise_and_stream_as_documented(fmt, failures_logged):
    rng = random.Random(f"tool-parsers-fuzz-near-{fmt}")
    bad = []
    for _ in range(TRIALS):
        text, cut = _near_miss(rng, _render(rng, fmt)[0])
        info = get_tool_parser(fmt).extract_tool_calls(text, cut=cut)
        whole = [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls]
        if not whole and not cut and info.content != text:
            bad.append(f"malformed but not the text: {text!r} -> {info.content!r}")
        for pieces in (list(text), _pieces(rng, text)):
            s_content, s_calls, s = _stream(fmt, pieces, cut)
            if whole or cut:  # well-formed, or cut: the stream is exactly the unstreamed answer
                ok = (s_content, s_calls, s.called) == (info.content or "", whole, bool(whole) and info.complete)
            elif not s_calls:  # malformed, nothing sent as a call: the text, as unstreamed
                ok = s_content == text
            else:  # malformed after calls went out: those stay, `tool_calls` only with each of them whole
                ok = not s.called or all(isinstance(_loads(a), dict) for _, a in s_calls)
            if not ok:
                bad.append(f"{text!r} cut={cut} pieces={pieces!r}\n    streamed {s_content!r} {s_calls} "
                           f"called={s.called}\n    unstreamed {info.content!r} {whole} complete={info.complete}")
                break
    assert not bad and not failures_logged, f"{len(bad)} failures:\n" + "\n".join(bad[:5]) + str(failures_logged[:3])


# ------------------------------------------------------------------------------------------------ pythonic names
@pytest.mark.parametrize("text,calls", [
    ("[f(é=1)]", [("f", {"é": 1})]),
    ('[météo(ville="Paris", 中文=[1, 2])]', [("météo", {"ville": "Paris", "中文": [1, 2]})]),
    ("[_private(), 中文(Ωmega=None)]", [("_private", {}), ("中文", {"Ωmega": None})]),
    ("[ns.outil_é(x\u00b7y=true)]", [("ns.outil_é", {"x\u00b7y": True})]),  # a middle dot continues an identifier
    ("[f(\ufb01le='a')]", [("f", {"file": "a"})]),  # NFKC, as ast reads it
    ("[\u01c5f()]", [("D\u017ef", {})]),
])
def test_pythonic_reads_python_identifiers(text, calls):
    info = get_tool_parser("pythonic").extract_tool_calls(text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in info.tool_calls] == calls
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls]
    assert _stream("pythonic", list(text))[1] == whole


@pytest.mark.parametrize("text", [
    "[f(a\u00b2=1)]",  # superscript two: no identifier character
    "[f(é€=1)]",
    "[f€()]",
    "[٣f()]",  # a digit first
    "[f(a=1, a=2)]",  # Python: keyword argument repeated
    "[f(\ufb01le=1, file=2)]",  # the same name after NFKC
])
def test_pythonic_refuses_what_python_refuses(text):
    info = get_tool_parser("pythonic").extract_tool_calls(text)
    assert not info.tools_called and info.content == text
    for pieces in (list(text), [text]):
        content, calls, s = _stream("pythonic", pieces)
        assert not s.called
        assert content == text or calls  # nothing sent: the text; a call sent before the fault stays sent


def test_pythonic_names_follow_ast():
    """Random name tokens: a call is read exactly where Python's own parser reads one, with its names (keywords that
    Python reserves, ``class=`` say, pagoda takes as names)."""
    import keyword

    pool = ["a", "Z", "_", "0", "9", "é", "中", "Ω", "\u00b7", "\u00b2", "€", "\ufb01", "\u01c5", "٣", "ª", "🙂",
            "\u0301", "\u2118", "\u212e"]
    rng = random.Random("tool-parsers-fuzz-names")
    for _ in range(400):
        name, kw = ("".join(rng.choice(pool) for _ in range(rng.randint(1, 4))) for _ in range(2))
        if keyword.iskeyword(name) or keyword.iskeyword(kw) or name[0] in "09":
            continue
        text = f"[{name}({kw}=1)]"
        try:
            call = ast.parse(text, mode="eval").body.elts[0]  # type: ignore[attr-defined]
            want = [(call.func.id, {call.keywords[0].arg: 1})]
        except SyntaxError:
            want = []
        info = get_tool_parser("pythonic").extract_tool_calls(text)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in info.tool_calls] == want, text


def test_pythonic_surrogates_are_escaped_in_the_arguments():
    r"""Python reads ``"\ud83d\ude42"`` (JSON's way to write 🙂) as two surrogates: raw in the arguments they made
    text no UTF-8 encoder takes (the response failed); escaped, a pair reads back as its character."""
    text = '[f(a="\\ud83d\\ude42", b="x\\ud800", c={"\\udfff": 1})]'
    info = get_tool_parser("pythonic").extract_tool_calls(text)
    args = info.tool_calls[0]["function"]["arguments"]
    assert args == '{"a": "\\ud83d\\ude42", "b": "x\\ud800", "c": {"\\udfff": 1}}'
    assert json.loads(args) == {"a": "🙂", "b": "x\ud800", "c": {"\udfff": 1}}
    args.encode("utf-8")
    assert _stream("pythonic", list(text))[1] == [("f", args)]


# ------------------------------------------------------------------------------------------------ backtracking
# Both regexes below backtracked exponentially on a near miss, blocking the server: were they to come back, these
# inputs would not finish (each takes milliseconds now).
@pytest.mark.parametrize("fmt,text", [
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": "' + "\\u4e2d" * 200 + '\nraw newline"}}</tool_call>'),
    ("llama3_json", '{"name": "f", "parameters": {"a": "' + "\\u00e9" * 200 + '\x01"}}'),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": "' + "\\u" * 200 + '\t"}'),
    ("pythonic", "[f(" + "é" * 5000 + ")]"),  # a name run that is not followed by '='
    ("pythonic", "[" + "中" * 5000 + " text]"),
])
def test_near_misses_do_not_backtrack_exponentially(fmt, text):
    info = get_tool_parser(fmt).extract_tool_calls(text)
    assert not info.tools_called and info.content == text
    content, calls, s = _stream(fmt, [text[:len(text) // 2], text[len(text) // 2:]])
    assert not s.called and (content == text or calls)  # a call sent before the fault stays sent (not finished)


def test_an_unfinished_json_string_is_read_as_one_that_can_still_end():
    """``scan`` takes an unfinished string exactly when some ending makes it JSON (an escape cut only at the end)."""
    from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, scan

    rng = random.Random("tool-parsers-fuzz-partial-strings")
    alphabet = ["a", "u", "0", "e", "F", "g", "\\", "\\", '"', "\n", "é", "/", "n"]
    for _ in range(3000):
        text = '"' + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        completable = False
        for end in ('"', 'n"', '0"', '00"', '000"', '0000"'):
            try:
                json.loads(text + end)
                completable = True
            except ValueError:
                pass
        try:
            node = scan(text, 0)
            ok = node.done or completable
        except Malformed:
            ok = not completable
        assert ok, text
