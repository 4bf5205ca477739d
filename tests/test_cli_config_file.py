"""vLLM's ``--config FILE.yaml`` (pagoda.entrypoints.config_file): the file's flags as if given first, so the command
line wins (command line > file > defaults); ``model`` is the model unless the command line names one; a key that is
not a flag, ``null``, a nested config or a file that is not a mapping is an error naming the file and the key."""

from __future__ import annotations

import pytest

from pagoda.entrypoints.cli import build_parser, engine_kwargs, main
from pagoda.entrypoints.config_file import expand_config_file


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def parse(parser, argv):
    return parser.parse_args(expand_config_file(argv, parser))


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_file_flags_are_read_and_the_command_line_wins(parser, tmp_path):
    cfg = write(tmp_path, "model: from-file\nmax_model_len: 512\nmax-num-seqs: 4\nenforce-eager: true\n"
                          "enable-prefix-caching: false\nserved-model-name: [a, b]\n"
                          "hf-overrides: {rope_theta: 20000}\nseed: 7\n")
    args = parse(parser, ["serve", "--config", cfg, "--max-num-seqs", "8"])
    kw = engine_kwargs(args)
    assert kw["model"] == "from-file" and kw["max_model_len"] == 512 and kw["max_num_seqs"] == 8
    assert kw["enforce_eager"] is True and kw["enable_prefix_caching"] is False and kw["seed"] == 7
    assert kw["served_model_name"] == ["a", "b"] and kw["hf_overrides"] == {"rope_theta": 20000}
    # the command line's model wins over the file's, positionally or with --model (vLLM's rule)
    assert engine_kwargs(parse(parser, ["serve", "mine", f"--config={cfg}"]))["model"] == "mine"
    assert engine_kwargs(parse(parser, ["serve", "--config", cfg, "--model", "mine"]))["model"] == "mine"
    assert engine_kwargs(parse(parser, ["generate", "--config", cfg]))["max_model_len"] == 512


def test_an_on_only_flag_set_false_is_its_default(parser, tmp_path):
    cfg = write(tmp_path, "disable-fastapi-docs: false\nenable-request-id-headers: true\n")
    args = parse(parser, ["serve", "--config", cfg])
    assert args.disable_fastapi_docs is False and args.enable_request_id_headers is True


@pytest.mark.parametrize(("text", "message"), [
    ("max-model-len: [", "not valid YAML"),
    ("- max-model-len\n", "must be a mapping"),
    ("max-modle-len: 8\n", "key 'max-modle-len' is not a flag"),
    ("max-model-len:\n", "key 'max-model-len' has no value"),
    ("config: other.yaml\n", "cannot name another one"),
    ("max-model-len: false\n", "false cannot be given to --max-model-len"),
])
def test_bad_files_name_the_file_and_the_key(parser, tmp_path, text, message):
    cfg = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as e:
        expand_config_file(["serve", "--config", cfg], parser)
    assert cfg in str(e.value)


def test_missing_file_and_missing_name(parser, tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        expand_config_file(["serve", "--config", str(tmp_path / "absent.yaml")], parser)
    with pytest.raises(ValueError, match="needs a file"):
        expand_config_file(["serve", "--config"], parser)
    assert expand_config_file(["serve", "m"], parser) == ["serve", "m"]  # no --config: unchanged


def test_a_refused_vllm_flag_in_the_file_is_refused_by_name(tmp_path, capsys):
    cfg = write(tmp_path, "fully-sharded-loras: true\n")
    with pytest.raises(SystemExit):
        main(["serve", "--config", cfg])
    assert "--fully-sharded-loras" in capsys.readouterr().err


def test_the_cli_reports_a_bad_file_as_one_error_line(tmp_path):
    cfg = write(tmp_path, "max-modle-len: 8\n")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--config", cfg, "--prompt", "hi"])
    assert str(e.value.code).startswith("error: --config ") and "max-modle-len" in str(e.value.code)
