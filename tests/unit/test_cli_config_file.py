"""``pagellm serve --config FILE``: the file's flags, overridden by the command line, and a
clear error (exit status 2, no traceback) for every kind of bad file."""

from __future__ import annotations

import json

import pytest

from pagellm.entrypoints.cli.config_file import expand_config_flag
from pagellm.entrypoints.cli.main import build_parser, main
from pagellm.errors import ClientError


def _parse(argv):
    parser = build_parser()
    sub = parser.config_file_parsers["serve"]
    return parser.parse_args(["serve", *expand_config_flag(sub, argv)])


def test_yaml_keys_become_flags_and_the_command_line_wins(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("model: default\nmax-num-seqs: 32\nmax_num_batched_tokens: 512\n"
                    "enable-chunked-prefill: false\ndisable-log-requests: true\n"
                    "compilation-config: {level: 0}\nscheduler-delay-factor: 0.1\n"
                    "block-size: null\n")
    args = _parse(["--config", str(path), "--max-num-seqs", "8"])
    assert args.max_num_seqs == 8                      # the command line wins
    assert args.max_num_batched_tokens == 512          # underscores work too
    assert args.enable_chunked_prefill is False
    assert args.disable_log_requests is True
    assert args.compilation_config == {"level": 0}
    assert args.scheduler_delay_factor == 0.1
    assert args.block_size is None                     # null = not given
    assert args.model == "default" and args.config == str(path)


def test_a_json_file_and_the_equals_form(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"max_num_seqs": 4, "enable_prefix_caching": True}))
    args = _parse([f"--config={path}", "--no-enable-prefix-caching"])
    assert args.max_num_seqs == 4 and args.enable_prefix_caching is False


def test_no_config_leaves_argv_alone():
    parser = build_parser().config_file_parsers["serve"]
    assert expand_config_flag(parser, ["--max-num-seqs", "3"]) == ["--max-num-seqs", "3"]


@pytest.mark.parametrize("text, message", [
    ("max-num-seq: 3\n", "unknown key 'max-num-seq'; did you mean 'max-num-seqs'?"),
    ("[1, 2\n", "is not valid YAML or JSON"),
    ("- max-num-seqs\n", "must hold one mapping of flag names to values"),
    ("max-num-seqs: abc\n", "'max-num-seqs': not a valid int (got 'abc')"),
    ("enable-chunked-prefill: maybe\n", "'enable-chunked-prefill' takes true or false"),
    ("port: 99999\n", "'port': invalid port 99999: must be in 0..65535"),
    ("compilation-config: [1, 2]\n",
     "'compilation-config': expected a JSON object, got '[1, 2]'\n"),
    # a list for a one-value flag was spread into tokens: "model '2' does not exist"
    ("quantization: [1, 2]\n", "'quantization' takes one value, not a list ([1, 2])"),
])
def test_a_bad_file_is_a_one_line_error(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pagellm serve: error: --config '{path}'")
    assert message in err and "Traceback" not in err


def test_a_missing_file_and_a_missing_argument(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the file (No such file or directory)" in capsys.readouterr().err
    with pytest.raises(ClientError, match="--config needs a file"):
        _parse(["--config"])
