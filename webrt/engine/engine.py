"""The Engine: WebLLM's ``MLCEngine`` API in Python, on any host with a :class:`ModelLoader`.

    engine = Engine(AppConfig([ModelRecord(model=DIR, model_id="m", model_lib=LIB)]))
    await engine.reload("m")
    reply = await engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    async for chunk in await engine.chat.completions.create(messages=..., stream=True): ...

All model work is plain function calls; between tokens, prefill chunks (``prefill_chunk_size``)
and choices the engine awaits ``asyncio.sleep(0)`` so the event loop (the browser's, under
Pyodide) stays responsive, and ``interrupt_generate()`` or cancelling the request's task takes
effect within one step: a long prompt stops between two chunks, with the chunks so far kept in
the cache and its record.

Requests to one model take turns on its KV cache (:class:`_CacheGuard`): a request holds the
cache while it computes. A stream holds it while its consumer pulls chunks; once the consumer
leaves the loop between chunks (breaks out, awaits something else, drops the stream), a
waiting request may take the cache over, and the stream, if it is iterated again, waits its turn
and re-prefills its own tokens. So an abandoned stream never blocks later requests.

An interrupt anywhere (an error, Ctrl-C, cancellation) leaves the cache consistent with the
tokens recorded for it: a model step that did not finish empties the cache before its next use,
and an interrupt between steps leaves it intact. Pure Python.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from webrt.chat_config import CHAT_CONFIG_FILE, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON
from webrt.engine.config import AppConfig, ChatOptions, ModelRecord, as_id_list, merge_chat_config
from webrt.engine.generation import Generation, GenerationConfig, Step, resolve_generation_config
from webrt.engine.loaded_model import LoadedModel
from webrt.engine.loader import ModelLoader, default_loader
from webrt.engine.model_runner import ModelRunner
from webrt.engine.progress import InitProgressCallback, ProgressReporter
from webrt.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    OpenAIObject,
    chat_choice,
    chat_chunk,
    chat_completion,
    new_response_id,
    parse_chat_request,
    parse_completion_request,
    text_choice,
    text_completion,
)
from webrt.engine.stats import RoundStats
from webrt.errors import (
    EngineNotLoadedError,
    InvalidRequestError,
    ModelConfigError,
    ModelLibraryError,
    TokenizerError,
    WeightFileError,
)
from webrt.tokenizer import Tokenizer


class _CacheGuard:
    """Who may use one model's KV cache now, and whether the cache still matches its record.

    ``acquire``/``release`` pass the cache from request to request in arrival order. A stream
    calls ``park`` at each chunk it hands out and ``resume`` when asked for the next: if its
    consumer went elsewhere meanwhile (the event loop turned), a waiting request takes the cache
    over, so a stream nobody iterates any more blocks no one. ``step`` runs one model step
    and marks the cache suspect until the step finishes; a suspect cache is emptied before use.
    """

    def __init__(self, model: LoadedModel):
        self.model = model
        self.holder: object | None = None
        self.parked = False
        self.suspect = False
        self._waiters: collections.deque[tuple[object, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, who: object) -> None:
        """Wait until ``who`` holds the cache (taking it from a parked holder)."""
        if not self._waiters and (self.holder is None or self.parked):
            self._give(who)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((who, future))
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(who)  # handed over just as we were cancelled: pass it on
            else:
                self._waiters.remove((who, future))
            raise

    def release(self, who: object) -> None:
        """``who`` is done with the cache (nothing happens if it was taken over meanwhile)."""
        if self.holder is who:
            self.holder = None
            self.parked = False
            self._wake()

    def park(self, who: object) -> None:
        """``who`` hands a chunk to its consumer: anyone waiting may take over once the loop turns."""
        if self.holder is who:
            self.parked = True
            if self._waiters:
                asyncio.get_running_loop().call_soon(self._take_from_parked, who)

    async def resume(self, who: object) -> bool:
        """Hold the cache again after ``park``; False when another request used it meanwhile."""
        if self.holder is who:
            self.parked = False
            return True
        await self.acquire(who)
        return False

    def step(self, run: Callable[[], Step | None]) -> Step | None:
        """Run one model step; if it does not finish, the cache is emptied (now or before its next use)."""
        self.suspect = True
        try:
            result = run()
        except BaseException:
            try:
                self._settle()
            except Exception:  # noqa: BLE001 - the backend broke (a lost GPU, a dead instance): the error
                pass  # being raised says why; the cache stays suspect and is emptied before its next use
            raise
        self.suspect = False
        return result

    def _take_from_parked(self, who: object) -> None:
        if self.holder is who and self.parked:
            self.holder = None
            self.parked = False
            self._wake()

    def _give(self, who: object) -> None:
        self.holder = who
        self.parked = False
        self._settle()

    def _wake(self) -> None:
        while self._waiters:
            who, future = self._waiters.popleft()
            if not future.done():
                self._give(who)
                future.set_result(None)
                return

    def _settle(self) -> None:
        """Empty a suspect cache (the flag stays set until that has finished)."""
        if self.suspect:
            self.model.reset()
            self.suspect = False


CreateFunction = Callable[[GenerationRequest], Awaitable[Any]]


class _ChatCompletions:
    def __init__(self, create: CreateFunction):
        self._create = create

    async def create(self, request: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """OpenAI ``chat.completions.create``: a ``chat.completion``, or with ``stream=True`` an
        async iterator of ``chat.completion.chunk`` objects."""
        return await self._create(parse_chat_request(request, **kwargs))


class _Chat:
    def __init__(self, create: CreateFunction):
        self.completions = _ChatCompletions(create)


class _Completions:
    def __init__(self, create: CreateFunction):
        self._create = create

    async def create(self, request: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """OpenAI ``completions.create`` on a raw prompt: a ``text_completion``, or with
        ``stream=True`` an async iterator of them."""
        return await self._create(parse_completion_request(request, **kwargs))


class Engine:
    """Loads models and serves OpenAI-style chat and text completions on them."""

    def __init__(
        self,
        app_config: AppConfig | Mapping[str, Any] | None = None,
        *,
        loader: ModelLoader | None = None,
        init_progress_callback: InitProgressCallback | None = None,
    ):
        if isinstance(app_config, Mapping):
            app_config = AppConfig.from_dict(app_config)
        self.app_config: AppConfig = app_config or AppConfig()
        self.loader: ModelLoader = loader or default_loader()
        self.init_progress_callback = init_progress_callback
        self.chat = _Chat(self._create)
        self.completions = _Completions(self._create)
        self._models: dict[str, LoadedModel] = {}
        self._guards: dict[str, _CacheGuard] = {}
        self._interrupt_requested = False

    # --- loading ------------------------------------------------------------------------------
    def set_init_progress_callback(self, callback: InitProgressCallback | None) -> None:
        self.init_progress_callback = callback

    @property
    def loaded_model_ids(self) -> list[str]:
        return list(self._models)

    async def reload(
        self,
        model_id: str | Sequence[str],
        chat_opts: ChatOptions | Mapping[str, Any] | Sequence[ChatOptions | Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Unload everything, then load ``model_id`` (or each id of a list, with one chat_opts each)."""
        ids = as_id_list(model_id)
        if chat_opts is None or isinstance(chat_opts, (ChatOptions, Mapping)):
            if len(ids) > 1 and chat_opts is not None:
                raise ModelConfigError("with several model ids, chat_opts must be a list with one entry per id")
            opts_list: list[Any] = [chat_opts] * len(ids)
        else:
            opts_list = list(chat_opts)
            if len(opts_list) != len(ids):
                raise ModelConfigError(f"got {len(opts_list)} chat_opts for {len(ids)} model ids; give one per id")
        records = [self.app_config.find(i) for i in ids]  # fail before unloading anything
        await self.unload()
        for record, opts in zip(records, opts_list):
            model = await self._load(record, opts)
            self._models[record.model_id] = model
            self._guards[record.model_id] = _CacheGuard(model)

    async def _load(self, record: ModelRecord, chat_opts: Any) -> LoadedModel:
        report = ProgressReporter(self.init_progress_callback)
        report(0.0, f"Start to fetch params of {record.model_id}")
        text = await self.loader.read_text(record, CHAT_CONFIG_FILE)
        if text is None:
            raise WeightFileError(f"{record.model} has no {CHAT_CONFIG_FILE}; run `webrt gen_config` into it.")
        try:
            base = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{CHAT_CONFIG_FILE} of {record.model_id!r} is not valid JSON: {e}") from None
        chat_config = merge_chat_config(base, record.overrides, chat_opts)
        tokenizer = await self._load_tokenizer(record, chat_config.tokenizer_files)
        backend = await self.loader.load(record, chat_config.raw, self.init_progress_callback)
        runner = ModelRunner(backend, chat_config.window, chat_config.vocab_size)
        if runner.vocab_size != chat_config.vocab_size:
            raise ModelLibraryError(
                f"the library of {record.model_id!r} has vocab_size {runner.vocab_size} but its "
                f"{CHAT_CONFIG_FILE} says {chat_config.vocab_size}; the library and weights come from different models."
            )
        model = LoadedModel(record, chat_config, tokenizer, runner)
        report(1.0, f"Finish loading {record.model_id}")
        return model

    async def _load_tokenizer(self, record: ModelRecord, files: list[str]) -> Tokenizer:
        if TOKENIZER_JSON not in files:
            raise TokenizerError(
                f"model {record.model_id!r} lists tokenizer files {files}; webrt needs {TOKENIZER_JSON} "
                "(convert the tokenizer with HF `tokenizers` and re-run `webrt gen_config`)."
            )
        text = await self.loader.read_text(record, TOKENIZER_JSON)
        if text is None:
            raise TokenizerError(f"{record.model} lacks {TOKENIZER_JSON}; re-run `webrt gen_config` into it.")
        config_text = None
        if TOKENIZER_CONFIG_JSON in files:
            config_text = await self.loader.read_text(record, TOKENIZER_CONFIG_JSON)
        return Tokenizer.from_json_str(text, config_text)

    async def unload(self) -> None:
        """Drop every loaded model (waiting for requests in flight to finish; a suspended stream
        ends with finish_reason ``abort`` when iterated again) and close its backend."""
        models = list(self._models.values())
        guards = list(self._guards.values())
        me = object()
        for guard in guards:
            await guard.acquire(me)
            guard.release(me)
        self._models.clear()
        self._guards.clear()
        for model in models:
            model.runner.backend.close()

    # --- control ------------------------------------------------------------------------------
    async def interrupt_generate(self) -> None:
        """Stop the generation in progress at its next token (finish_reason ``abort``)."""
        self._interrupt_requested = True

    async def reset_chat(self, keep_stats: bool = False, model_id: str | None = None) -> None:
        """Forget the conversation in the KV cache (of ``model_id``, or the only loaded model)."""
        model = self._select(model_id)
        guard, me = self._guards[model.model_id], object()
        await guard.acquire(me)
        try:
            model.reset()
            if not keep_stats:
                model.last_stats = None
        finally:
            guard.release(me)

    async def runtime_stats_text(self, model_id: str | None = None) -> str:
        """``prefill: X tok/s, decode: Y tok/s`` of the last request."""
        stats = self._select(model_id).last_stats
        if stats is None:
            return "prefill: 0.0000 tok/s, decode: 0.0000 tok/s"
        extra = stats.usage()["extra"]
        return f"prefill: {extra['prefill_tokens_per_s']:.4f} tok/s, decode: {extra['decode_tokens_per_s']:.4f} tok/s"

    def get_model(self, model_id: str | None = None) -> LoadedModel:
        """The loaded model (for tools and tests that need its tokenizer or runner)."""
        return self._select(model_id)

    def _select(self, model_id: str | None) -> LoadedModel:
        if not self._models:
            raise EngineNotLoadedError("no model is loaded; call `await engine.reload(model_id)` first.")
        if model_id is None:
            if len(self._models) > 1:
                raise InvalidRequestError(
                    f"several models are loaded ({', '.join(self._models)}); name one with the request's 'model'."
                )
            return next(iter(self._models.values()))
        model = self._models.get(model_id)
        if model is None:
            raise InvalidRequestError(
                f"model {model_id!r} is not loaded (loaded: {', '.join(self._models)}); "
                "call reload() with it first."
            )
        return model

    # --- requests -----------------------------------------------------------------------------
    async def _create(self, request: GenerationRequest) -> Any:
        model = self._select(request.model)
        if isinstance(request, ChatCompletionRequest):
            prompt = model.chat_prompt_tokens(request.messages, request.tools, request.chat_template_kwargs)
        else:
            assert isinstance(request, CompletionRequest)
            prompt = model.completion_prompt_tokens(request.prompt)
        model.window.check_prompt(len(prompt), model.model_id)  # the one context-window check
        config = resolve_generation_config(model.chat_config, request, model.vocab_size)
        rng = random.Random(request.seed)
        is_chat = isinstance(request, ChatCompletionRequest)
        if request.stream:
            return self._stream(model, request, prompt, config, rng, is_chat)
        return await self._complete(model, request, prompt, config, rng, is_chat)

    def _is_loaded(self, model: LoadedModel) -> bool:
        return self._models.get(model.model_id) is model

    async def _run_choice(self, guard: _CacheGuard, generation: Generation, on_step: Callable[[Step], None]) -> None:
        """Drive one generation to its end, yielding to the event loop before every step (each
        prefill chunk and each token; also before the first: n choices of one token each, or one
        long prompt, stay cancellable)."""
        while not generation.finished:
            await asyncio.sleep(0)
            step = generation.abort() if self._interrupt_requested else guard.step(generation.next_step)
            if step is not None:
                on_step(step)

    async def _complete(
        self, model: LoadedModel, request: GenerationRequest, prompt: list[int],
        config: GenerationConfig, rng: random.Random, is_chat: bool,
    ) -> OpenAIObject:
        guard, me = self._guards[model.model_id], object()
        await guard.acquire(me)
        try:
            self._interrupt_requested = False
            stats = RoundStats(prompt_tokens=len(prompt))
            choices = []
            for index in range(request.n):
                generation = Generation(model, prompt, config, rng, stats)
                pieces: list[str] = []
                if self._interrupt_requested:  # one interrupt stops every remaining choice
                    generation.abort()
                else:
                    await self._run_choice(guard, generation, lambda step: pieces.append(step.text))
                logprobs = generation.logprobs if config.logprobs else None
                text = "".join(pieces)
                if is_chat:
                    choices.append(chat_choice(index, text, generation.finish_reason or "abort", logprobs))
                else:
                    choices.append(text_choice(index, text, generation.finish_reason, logprobs))
            model.last_stats = stats
            usage = stats.usage()
        finally:
            guard.release(me)
        response_id = new_response_id("chatcmpl" if is_chat else "cmpl")
        if is_chat:
            return chat_completion(response_id, model.model_id, choices, usage)
        return text_completion(response_id, model.model_id, choices, usage)

    async def _stream(
        self, model: LoadedModel, request: GenerationRequest, prompt: list[int],
        config: GenerationConfig, rng: random.Random, is_chat: bool,
    ) -> AsyncIterator[OpenAIObject]:
        response_id = new_response_id("chatcmpl" if is_chat else "cmpl")
        usage_field = request.include_usage
        first = True

        def chunk(text: str, logprob: dict[str, Any] | None, finish_reason: str | None = None) -> OpenAIObject:
            nonlocal first
            logprobs = [logprob] if logprob is not None else ([] if config.logprobs else None)
            if is_chat:
                delta: dict[str, Any] = {"content": text} if (text or finish_reason is None) else {}
                if first:
                    delta = {"role": "assistant", **delta}
                first = False
                return chat_chunk(response_id, model.model_id, delta, finish_reason,
                                  logprobs if finish_reason is None else None, with_usage_field=usage_field)
            choice = text_choice(0, text, finish_reason, logprobs if finish_reason is None else None)
            return text_completion(response_id, model.model_id, [choice], None)

        # The cache is held while a step computes and parked while a chunk is out (module docstring).
        guard, me = self._guards[model.model_id], object()
        await guard.acquire(me)
        try:
            self._interrupt_requested = False
            stats = RoundStats(prompt_tokens=len(prompt))
            generation = Generation(model, prompt, config, rng, stats)
            while not generation.finished:
                await asyncio.sleep(0)  # before each prefill chunk and each token
                if self._interrupt_requested or not self._is_loaded(model):
                    step: Step | None = generation.abort()
                else:
                    step = guard.step(generation.next_step)
                if step is not None and (step.text or step.logprob is not None):
                    guard.park(me)
                    yield chunk(step.text, step.logprob)
                    await guard.resume(me)  # next_step() re-prefills if another request used the cache
            model.last_stats = stats
        finally:
            guard.release(me)
        yield chunk("", None, generation.finish_reason)
        if request.include_usage:
            usage = stats.usage()
            if is_chat:
                yield chat_chunk(response_id, model.model_id, None, usage=usage)
            else:
                yield text_completion(response_id, model.model_id, [], usage)


async def create_engine(
    model_id: str | Sequence[str],
    app_config: AppConfig | Mapping[str, Any] | None = None,
    chat_opts: Any = None,
    *,
    loader: ModelLoader | None = None,
    init_progress_callback: InitProgressCallback | None = None,
) -> Engine:
    """An Engine with ``model_id`` loaded (WebLLM's ``CreateMLCEngine``)."""
    engine = Engine(app_config, loader=loader, init_progress_callback=init_progress_callback)
    await engine.reload(model_id, chat_opts)
    return engine
