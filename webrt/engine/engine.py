"""The Engine: WebLLM's ``MLCEngine`` API in Python, on any host with a :class:`ModelLoader`.

    engine = Engine(AppConfig([ModelRecord(model=DIR, model_id="m", model_lib=LIB)]))
    await engine.reload("m")
    reply = await engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    async for chunk in await engine.chat.completions.create(messages=..., stream=True): ...

All model work is plain function calls; between tokens the engine awaits
``asyncio.sleep(0)`` so the event loop (the browser's, under Pyodide) stays responsive and
``interrupt_generate()`` takes effect at the next token. Requests to one model run one at a
time (a lock per model). Pure Python.
"""

from __future__ import annotations

import asyncio
import contextlib
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


@contextlib.asynccontextmanager
async def _reset_on_error(model: LoadedModel) -> AsyncIterator[None]:
    """After a failure mid-step the cache may not match ``cached_tokens``: empty it."""
    try:
        yield
    except Exception:
        model.reset()
        raise


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
            self._models[record.model_id] = await self._load(record, opts)

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
        """Drop every loaded model (waiting for requests in flight to finish) and close its backend."""
        models = list(self._models.values())
        for model in models:
            async with model.lock:
                pass
        self._models.clear()
        for model in models:
            model.runner.backend.close()

    # --- control ------------------------------------------------------------------------------
    async def interrupt_generate(self) -> None:
        """Stop the generation in progress at its next token (finish_reason ``abort``)."""
        self._interrupt_requested = True

    async def reset_chat(self, keep_stats: bool = False, model_id: str | None = None) -> None:
        """Forget the conversation in the KV cache (of ``model_id``, or the only loaded model)."""
        model = self._select(model_id)
        async with model.lock:
            model.reset()
            if not keep_stats:
                model.last_stats = None

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

    async def _run_choice(self, generation: Generation, on_step: Callable[[Step], None]) -> None:
        """Drive one generation to its end, yielding to the event loop between tokens."""
        on_step(generation.start())
        while not generation.finished:
            await asyncio.sleep(0)
            on_step(generation.abort() if self._interrupt_requested else generation.advance())

    async def _complete(
        self, model: LoadedModel, request: GenerationRequest, prompt: list[int],
        config: GenerationConfig, rng: random.Random, is_chat: bool,
    ) -> OpenAIObject:
        async with model.lock, _reset_on_error(model):
            self._interrupt_requested = False
            stats = RoundStats(prompt_tokens=len(prompt))
            choices = []
            for index in range(request.n):
                generation = Generation(model, prompt, config, rng, stats)
                pieces: list[str] = []
                if self._interrupt_requested:  # one interrupt stops every remaining choice
                    generation.abort()
                else:
                    await self._run_choice(generation, lambda step: pieces.append(step.text))
                logprobs = generation.logprobs if config.logprobs else None
                text = "".join(pieces)
                if is_chat:
                    choices.append(chat_choice(index, text, generation.finish_reason or "abort", logprobs))
                else:
                    choices.append(text_choice(index, text, generation.finish_reason, logprobs))
            model.last_stats = stats
            usage = stats.usage()
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

        async with model.lock, _reset_on_error(model):
            self._interrupt_requested = False
            stats = RoundStats(prompt_tokens=len(prompt))
            generation = Generation(model, prompt, config, rng, stats)
            step = generation.start()
            while True:
                if step.text or step.logprob is not None:
                    yield chunk(step.text, step.logprob)
                if generation.finished:
                    break
                await asyncio.sleep(0)
                step = generation.abort() if self._interrupt_requested else generation.advance()
            yield chunk("", None, generation.finish_reason)
            model.last_stats = stats
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
