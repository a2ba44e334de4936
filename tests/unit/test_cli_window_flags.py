"""Window-size flags of ``webrt chat`` and ``webrt gen_config`` are checked by argparse, before any
work: an absurd value gives the usage line and ``error: argument --flag: ...`` naming the bound
and the fix (exit 2), not a traceback or, later, a KV cache allocation that cannot succeed."""

from __future__ import annotations

import pytest

from webrt.chat_config import MAX_CONTEXT_WINDOW
from webrt.cli import build_parser, main

CHAT = ["chat", "--model", "m", "--model-lib", "l"]
GEN_CONFIG = ["gen_config", "src", "--quantization", "q0f32", "--conv-template", "chatml", "-o", "out"]


@pytest.mark.parametrize("argv", [CHAT, GEN_CONFIG], ids=["chat", "gen_config"])
@pytest.mark.parametrize("value, says", [
    ("1e9", f"pass at most {MAX_CONTEXT_WINDOW}"),
    ("1000000000", f"pass at most {MAX_CONTEXT_WINDOW}"),
    (str(MAX_CONTEXT_WINDOW + 1), f"between 1 and {MAX_CONTEXT_WINDOW} tokens"),
    (str(2**63), f"pass at most {MAX_CONTEXT_WINDOW}"),
    ("0", "pass a value in that range"),
    ("-5", "pass a value in that range"),
    ("2.5", "whole number of tokens"),
    ("big", "whole number of tokens"),
])
def test_absurd_context_window_is_an_argparse_error(argv: list[str], value: str, says: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--context-window-size", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: webrt {argv[0]}") and "Traceback" not in err
    assert lines[-1].startswith(f"webrt {argv[0]}: error: argument --context-window-size: ")
    assert says in lines[-1]


@pytest.mark.parametrize("flag, value", [
    ("--prefill-chunk-size", "0"), ("--prefill-chunk-size", str(10**9)), ("--attention-sink-size", "-100"),
    ("--sliding-window-size", str(10**9)), ("--attention-sink-size", str(MAX_CONTEXT_WINDOW)),
])
def test_gen_config_window_flags_are_argparse_errors(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([*GEN_CONFIG, flag, value])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"webrt gen_config: error: argument {flag}: ")


def test_window_flags_in_range_parse() -> None:
    args = build_parser().parse_args([*CHAT, "--context-window-size", str(MAX_CONTEXT_WINDOW)])
    assert args.context_window_size == MAX_CONTEXT_WINDOW
    args = build_parser().parse_args([*GEN_CONFIG, "--context-window-size", "1e3", "--sliding-window-size", "-1",
                                      "--attention-sink-size", "-1", "--prefill-chunk-size", "64"])
    assert (args.context_window_size, args.sliding_window_size, args.attention_sink_size,
            args.prefill_chunk_size) == (1000, -1, -1, 64)


BASE_CHAT_CONFIG = {"vocab_size": 10, "context_window_size": 64, "sliding_window_size": -1,
                    "conv_template": "chatml"}


@pytest.mark.parametrize("opts, says", [
    ({"context_window_size": MAX_CONTEXT_WINDOW + 1}, f"pass at most {MAX_CONTEXT_WINDOW}"),
    ({"prefill_chunk_size": 10**9}, f"pass at most {MAX_CONTEXT_WINDOW}"),
    ({"prefill_chunk_size": -3}, "pass a value in that range"),
    ({"attention_sink_size": -7}, "pass a value in that range"),
    ({"attention_sink_size": 64}, "0..63"),
])
def test_chat_opts_windows_use_the_same_bounds_as_the_flags(opts: dict, says: str) -> None:
    """chat_opts / mlc-chat-config.json windows are refused with the flags' rule and wording."""
    from webrt.engine.config import merge_chat_config
    from webrt.errors import ModelConfigError

    with pytest.raises(ModelConfigError) as err:
        merge_chat_config(BASE_CHAT_CONFIG, opts)
    assert says in str(err.value)
    assert merge_chat_config(BASE_CHAT_CONFIG, {"context_window_size": MAX_CONTEXT_WINDOW}).window.max_total_length
