"""``ChatModule``: a synchronous chat session (like MLC-LLM's old ChatModule) over the Engine.

    cm = ChatModule(model="dist/SmolLM2-q4f32_1", model_lib="dist/SmolLM2-q4f32_1-cpu.so")
    print(cm.generate("What is the capital of France?"))
    print(cm.stats())

It keeps the conversation (each ``generate`` adds a user turn and the reply), and drives the
engine on a private event loop; inside async code use :class:`webrt.engine.Engine` directly.
Also hosts the terminal chat loop of ``webrt chat``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from webrt.engine import AppConfig, ChatOptions, Engine, ModelRecord
from webrt.engine.progress import InitProgressCallback
from webrt.errors import InvalidRequestError, WebrtError


class StreamToStdout:
    """A ``progress_callback`` that prints the reply as it streams (MLC's helper of that name)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def callback(self, delta: str) -> None:
        self.stream.write(delta)
        self.stream.flush()


ProgressCallback = Callable[[str], None] | StreamToStdout


class ChatModule:
    """A chat with one local model: ``generate(prompt)`` returns the reply text."""

    def __init__(
        self,
        model: str | Path,
        model_lib: str | Path,
        chat_opts: ChatOptions | Mapping[str, Any] | None = None,
        *,
        model_id: str | None = None,
        init_progress_callback: InitProgressCallback | None = None,
    ):
        self.model_id = model_id or Path(model).name
        record = ModelRecord(model=str(model), model_id=self.model_id, model_lib=str(model_lib))
        self.engine = Engine(AppConfig([record]), init_progress_callback=init_progress_callback)
        self.messages: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._run(self.engine.reload(self.model_id, chat_opts))

    def _run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the private loop. If it is interrupted (Ctrl-C may land between
        two of its steps, leaving it suspended), it is cancelled and its cleanup runs before the
        interrupt propagates, so the engine's cache is free and consistent for the next call."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise WebrtError("ChatModule is synchronous; inside an event loop use webrt.Engine with await instead.")
        self._finish_leftovers()
        task = self._loop.create_task(coroutine)
        try:
            return self._loop.run_until_complete(task)
        except BaseException:
            task.cancel()
            self._finish_leftovers()
            raise

    def _finish_leftovers(self) -> None:
        """Cancel and wait out tasks an interrupt left on the private loop."""
        leftovers = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))

    def generate(
        self,
        prompt: str,
        generation_config: Mapping[str, Any] | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> str:
        """Add ``prompt`` as the user's turn and return the reply (streamed to ``progress_callback``).

        ``generation_config`` takes request fields (temperature, top_p, max_tokens, stop, seed,
        penalties, ...). ``progress_callback`` is a function of each new piece of text, or an
        object with a ``callback`` method such as :class:`StreamToStdout`. If the call does not
        return (Ctrl-C, an error, ``progress_callback`` raising), the conversation stays as it
        was before it, and the next call works as usual.
        """
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
        options = dict(generation_config or {})
        for reserved in ("messages", "stream", "n", "model"):
            if reserved in options:
                raise InvalidRequestError(f"generation_config cannot set {reserved!r}; ChatModule manages it.")
        messages = [*self.messages, {"role": "user", "content": prompt}]
        reply = self._run(self._generate(messages, options, progress_callback))
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        return reply

    async def _generate(
        self, messages: list[dict[str, str]], options: dict[str, Any], progress_callback: ProgressCallback | None
    ) -> str:
        if progress_callback is None:
            response = await self.engine.chat.completions.create(messages=messages, **options)
            return response.choices[0].message.content
        emit = progress_callback.callback if isinstance(progress_callback, StreamToStdout) else progress_callback
        pieces: list[str] = []
        stream = await self.engine.chat.completions.create(messages=messages, stream=True, **options)
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.get("content"):
                    piece = chunk.choices[0].delta["content"]
                    pieces.append(piece)
                    emit(piece)
        finally:
            await stream.aclose()  # if emit raised: end the stream now, not when it is collected
        return "".join(pieces)

    def reset_chat(self) -> None:
        """Start a new conversation."""
        self.messages = []
        self._run(self.engine.reset_chat())

    def stats(self) -> str:
        """``prefill: X tok/s, decode: Y tok/s`` of the last reply."""
        return self._run(self.engine.runtime_stats_text())

    def close(self) -> None:
        """Release the model and the private event loop."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.engine.unload())
            self._loop.close()


HELP = "commands: /reset (new conversation), /stats (speed of the last reply), /help, /exit"
#: ``webrt chat``'s reply length cap unless --max-tokens says otherwise.
CHAT_REPLY_MAX_TOKENS = 512
#: Printed after a reply cut short by Ctrl-C (the turn is not kept in the conversation).
INTERRUPTED_MARK = " [interrupted]"


def chat_repl(module: ChatModule, lines: TextIO, out: TextIO, generation_config: Mapping[str, Any] | None = None) -> None:
    """The terminal chat: one user turn per input line, replies streamed to ``out``.

    Ctrl-C during a reply stops that reply (printing :data:`INTERRUPTED_MARK`; the turn is
    dropped from the conversation) and the chat goes on; Ctrl-C at the prompt, end of input or
    ``/exit`` end the chat.
    """
    interactive = lines.isatty()
    if interactive:
        out.write(f"Chatting with {module.model_id}. {HELP}; Ctrl-C stops a reply.\n")
    while True:
        if interactive:
            out.write(">>> ")
            out.flush()
        try:
            line = lines.readline()
        except KeyboardInterrupt:
            out.write("\n")
            break
        if not line:
            if interactive:
                out.write("\n")  # leave the shell's prompt on a line of its own
            break
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            break
        if command == "/reset":
            module.reset_chat()
            out.write("[conversation reset]\n")
        elif command == "/stats":
            out.write(module.stats() + "\n")
        elif command == "/help":
            out.write(HELP + "\n")
        elif command.startswith("/"):
            out.write(f"unknown command {command}; {HELP}\n")
        else:
            try:
                module.generate(text, generation_config, StreamToStdout(out))
            except KeyboardInterrupt:
                out.write(INTERRUPTED_MARK)
            out.write("\n")
        out.flush()
