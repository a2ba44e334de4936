"""``ChatModule`` (synchronous chat) and ``webrt chat`` (terminal chat over a pipe), tiny model."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys

import pytest

from model_factory import REPO, tiny_artifacts
from engine_util import engine_for, run
from webrt import ChatModule
from webrt.chat_module import StreamToStdout
from webrt.errors import InvalidRequestError, WeightFileError

GREEDY = {"temperature": 0, "max_tokens": 8}
STATS = re.compile(r"prefill: [0-9.]+ tok/s, decode: [0-9.]+ tok/s")


@pytest.fixture(scope="module")
def art():
    return tiny_artifacts("llama2")


async def engine_reply(art, messages, **fields) -> str:
    engine = await engine_for(art)
    reply = await engine.chat.completions.create(messages=messages, **GREEDY, **fields)
    return reply.choices[0].message.content


def test_chat_module_keeps_the_conversation(art) -> None:
    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"])
    try:
        first = cm.generate("hello world", GREEDY)
        assert first == run(engine_reply(art, [{"role": "user", "content": "hello world"}]))
        second = cm.generate("The quick brown fox", GREEDY)
        history = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": first},
                   {"role": "user", "content": "The quick brown fox"}]
        assert second == run(engine_reply(art, history))
        assert len(cm.messages) == 4
        assert STATS.fullmatch(cm.stats())
        cm.reset_chat()
        assert cm.messages == [] and cm.generate("hello world", GREEDY) == first
    finally:
        cm.close()


def test_chat_module_streams_to_a_callback(art) -> None:
    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"], chat_opts={"temperature": 0})
    try:
        pieces: list[str] = []
        reply = cm.generate("hello world", {"max_tokens": 8}, progress_callback=pieces.append)
        assert len(pieces) > 1 and "".join(pieces) == reply
        out = io.StringIO()
        cm.reset_chat()
        assert cm.generate("hello world", {"max_tokens": 8}, progress_callback=StreamToStdout(out)) == reply
        assert out.getvalue() == reply
        with pytest.raises(InvalidRequestError, match="stream"):
            cm.generate("x", {"stream": True})
    finally:
        cm.close()


def test_chat_module_missing_model_is_a_typed_error(tmp_path, art) -> None:
    with pytest.raises(WeightFileError, match="does not exist"):
        ChatModule(model=tmp_path / "nothing", model_lib=art.libs["cpu"])


def run_cli(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "webrt.cli", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=300)


def test_cli_chat_over_a_pipe(art) -> None:
    reply = run(engine_reply(art, [{"role": "user", "content": "hello world"}]))
    result = run_cli(
        ["chat", "--model", str(art.model_dir), "--model-lib", str(art.libs["cpu"]), "--temperature", "0",
         "--max-tokens", "8"],
        "hello world\n/stats\n/reset\nhello world\n/exit\nnot read\n",
    )
    assert result.returncode == 0, result.stderr
    head, tail = result.stdout.split("[conversation reset]\n")
    assert tail == reply + "\n"  # after /reset the same first turn gives the same reply
    assert head.startswith(reply + "\n")
    assert STATS.fullmatch(head[len(reply) + 1 :].rstrip("\n"))


def test_cli_chat_system_message_and_errors(art, tmp_path) -> None:
    plain = run_cli(["chat", "--model", str(art.model_dir), "--model-lib", str(art.libs["cpu"]),
                     "--temperature", "0", "--max-tokens", "8"], "hello world\n")
    other = run_cli(["chat", "--model", str(art.model_dir), "--model-lib", str(art.libs["cpu"]),
                     "--temperature", "0", "--max-tokens", "8", "--system", "Answer in French."], "hello world\n")
    assert plain.returncode == other.returncode == 0
    assert plain.stdout != other.stdout  # the system message reached the prompt
    missing = run_cli(["chat", "--model", str(tmp_path), "--model-lib", str(art.libs["cpu"])], "hi\n")
    assert missing.returncode == 1 and "webrt chat: error:" in missing.stderr and "gen_config" in missing.stderr


# --- reply cap and Ctrl-C in the terminal chat -----------------------------------------------------
class Lines(io.StringIO):
    """stdin whose readline raises KeyboardInterrupt once the given lines are read (Ctrl-C at the prompt)."""

    def readline(self, *args) -> str:  # type: ignore[override]
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_cli_chat_caps_replies_by_default_and_says_so(monkeypatch, capsys) -> None:
    import webrt.chat_module
    from webrt.cli import main

    seen = {}

    class FakeModule:
        def __init__(self, model, model_lib, opts):
            pass

        def close(self):
            pass

    monkeypatch.setattr(webrt.chat_module, "ChatModule", FakeModule)
    monkeypatch.setattr(webrt.chat_module, "chat_repl", lambda module, lines, out, config: seen.update(config))
    assert main(["chat", "--model", "m", "--model-lib", "l"]) == 0
    assert seen == {"max_tokens": webrt.chat_module.CHAT_REPLY_MAX_TOKENS} and seen["max_tokens"] == 512
    assert "replies stop at 512 tokens (--max-tokens N to change)" in capsys.readouterr().err
    assert main(["chat", "--model", "m", "--model-lib", "l", "--max-tokens", "2000"]) == 0
    assert seen == {"max_tokens": 2000} and "replies stop" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chat", "--model", "m", "--model-lib", "l", "--max-tokens", "0"])


def test_chat_repl_ctrl_c_stops_the_reply_not_the_chat(art) -> None:
    """A real SIGINT during a reply: the reply ends with the mark, the turn is dropped, the next
    turn gets the reply of a fresh conversation; Ctrl-C at the prompt ends the chat cleanly."""
    from webrt.chat_module import INTERRUPTED_MARK, chat_repl

    cm = ChatModule(model=art.model_dir, model_lib=art.libs["cpu"])
    runner = cm.engine.get_model().runner
    real_decode, calls = runner._decode, [0]

    def decode(*args):
        out = real_decode(*args)
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    runner._decode = decode
    out = io.StringIO()
    try:
        chat_repl(cm, Lines("def add(a, b):\nhello world\n"), out,
                  {"temperature": 0, "max_tokens": 8, "ignore_eos": True})
    finally:
        cm.close()
    partial, mark, rest = out.getvalue().partition(INTERRUPTED_MARK + "\n")
    assert mark, out.getvalue()
    whole = run(engine_reply(art, [{"role": "user", "content": "def add(a, b):"}], ignore_eos=True))
    assert whole.startswith(partial) and len(partial) < len(whole)  # it stopped mid-reply
    expected = run(engine_reply(art, [{"role": "user", "content": "hello world"}]))
    assert rest == expected + "\n\n"  # the Ctrl-C at the prompt then ended the chat with a newline


def test_chat_repl_in_a_terminal_ends_on_eof_or_ctrl_c_on_a_fresh_line() -> None:
    from types import SimpleNamespace

    from webrt.chat_module import chat_repl

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class CtrlC(Terminal):
        def readline(self, *args) -> str:  # type: ignore[override]
            raise KeyboardInterrupt

    for lines in (Terminal(""), CtrlC("")):
        out = io.StringIO()
        chat_repl(SimpleNamespace(model_id="m"), lines, out)
        assert out.getvalue().endswith("Ctrl-C stops a reply.\n>>> \n")
