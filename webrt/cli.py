"""The ``webrt`` command line: MLC-LLM's verbs (convert_weight, gen_config, compile) and more."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from webrt.chat_config import CHAT_CONFIG_FILE, window_setting_problem
from webrt.errors import WebrtError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help_text: str):
    """Register ``add_arguments`` for sub-command ``name``; it sets ``func`` on the parser."""

    def register(add_arguments: Callable[[argparse.ArgumentParser], None]):
        add_arguments.help_text = help_text  # type: ignore[attr-defined]
        COMMANDS[name] = add_arguments
        return add_arguments

    return register


def window_flag(name: str) -> Callable[[str], int]:
    """The argparse ``type`` of the flag setting window setting ``name`` (e.g.
    ``--context-window-size``): a whole number within the bounds of
    `webrt.chat_config.WINDOW_SETTINGS`, checked before any work (argparse prints the usage line
    and ``error: argument --flag: ...``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is None or not number.is_integer():
                raise argparse.ArgumentTypeError(f"must be a whole number of tokens, got {text!r}") from None
            value = int(number)  # 1e5
        problem = window_setting_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


@command("convert_weight", "convert and quantize HF / GGUF weights into an MLC tensor cache")
def _convert_weight(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="Hugging Face model folder or .gguf file")
    p.add_argument("--quantization", required=True, help="q0f32, q0f16, q4f16_1, q4f32_1, or gguf_f32 (GGUF sources)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--q4-encoder", choices=["search", "mlc"], default="search",
                   help="q4 group scales: webrt's search (default, lower error) or MLC-LLM's max|w|/7 formula")

    def run(a: argparse.Namespace) -> None:
        from webrt.compiler.convert_weight import convert_weight

        index = convert_weight(a.source, a.quantization, a.output, q4_encoder=a.q4_encoder)
        md = index.metadata
        print(f"wrote {len(index.shards)} shard(s), {md['ParamBytes'] / 2**20:.1f} MiB, "
              f"{md['BitsPerParam']} bits/param to {a.output}")

    p.set_defaults(func=run)


@command("gen_config", "write mlc-chat-config.json and tokenizer files")
def _gen_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="Hugging Face model folder or .gguf file")
    p.add_argument("--quantization", required=True)
    p.add_argument("--conv-template", required=True, help="conversation template name (see webrt.conversation)")
    p.add_argument("--context-window-size", type=window_flag("context_window_size"))
    p.add_argument("--sliding-window-size", type=window_flag("sliding_window_size"))
    p.add_argument("--prefill-chunk-size", type=window_flag("prefill_chunk_size"))
    p.add_argument("--attention-sink-size", type=window_flag("attention_sink_size"))
    p.add_argument("-o", "--output", required=True, help="output folder (usually the convert_weight folder)")

    def run(a: argparse.Namespace) -> None:
        from webrt.compiler.gen_config import gen_config

        gen_config(
            a.source, a.quantization, a.conv_template, a.output,
            context_window_size=a.context_window_size, sliding_window_size=a.sliding_window_size,
            prefill_chunk_size=a.prefill_chunk_size, attention_sink_size=a.attention_sink_size,
        )
        print(f"wrote {a.output}/{CHAT_CONFIG_FILE}")

    p.set_defaults(func=run)


@command("compile", "compile a model library for webgpu (.wasm), the browser's CPU (wasm: .wasm) or cpu (.so)")
def _compile(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="mlc-chat-config.json (or the folder holding it)")
    p.add_argument("--device", required=True, choices=["webgpu", "wasm", "cpu"],
                   help="webgpu: WebGPU .wasm; wasm: CPU .wasm for the browser (no WebGPU); cpu: native .so")
    p.add_argument("--overrides", help='e.g. "context_window_size=1024;prefill_chunk_size=128"')
    p.add_argument("--kernels", choices=["gpu", "fallback"],
                   help="webgpu only: gpu (default; coalesced kernels for real GPUs) or fallback (barrier-free "
                        "kernels for software adapters such as SwiftShader: name it model_lib_fallback)")
    p.add_argument("--subgroup-size", type=int, default=0, metavar="N",
                   help="webgpu only: 32 reduces with subgroup shuffles (needs the subgroups feature and "
                        "subgroups of at least 32 lanes: NVIDIA, Apple, AMD; refused at load elsewhere, naming "
                        "the record's other libraries); 0 (default): workgroup memory and barriers")
    p.add_argument("-o", "--output", required=True, help="library path (or a folder)")

    def run(a: argparse.Namespace) -> None:
        from webrt.compiler.compile import compile_model

        out = compile_model(a.config, a.device, a.output, a.overrides, kernels=a.kernels,
                            subgroup_size=a.subgroup_size)
        print(f"wrote {out}")

    p.set_defaults(func=run)


@command("chat", "chat with a compiled model in the terminal (streams replies; reads stdin line by line)")
def _chat(p: argparse.ArgumentParser) -> None:
    def positive_int(text: str) -> int:
        value = int(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number of tokens, got {value}")
        return value

    p.add_argument("--model", required=True, help="model folder (convert_weight + gen_config output)")
    p.add_argument("--model-lib", required=True, help="model library compiled with --device cpu (.so)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: the model's)")
    p.add_argument("--max-tokens", type=positive_int,
                   help="longest reply in tokens (default: 512, webrt.chat_module.CHAT_REPLY_MAX_TOKENS)")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--system", help="system message (replaces the template's)")
    p.add_argument("--context-window-size", type=window_flag("context_window_size"), help="KV cache size to allocate")

    def run(a: argparse.Namespace) -> None:
        from webrt.chat_module import CHAT_REPLY_MAX_TOKENS, ChatModule, chat_repl

        if a.max_tokens is None:
            a.max_tokens = CHAT_REPLY_MAX_TOKENS
            print(f"webrt chat: replies stop at {a.max_tokens} tokens (--max-tokens N to change); "
                  "Ctrl-C stops a reply, Ctrl-C at the prompt or end of input ends the chat", file=sys.stderr)
        opts: dict = {}
        if a.system is not None:
            opts["conv_config"] = {"system_message": a.system}
        if a.context_window_size is not None:
            opts["context_window_size"] = a.context_window_size
        generation = {k: v for k, v in (("temperature", a.temperature), ("top_p", a.top_p),
                                        ("max_tokens", a.max_tokens), ("seed", a.seed)) if v is not None}
        module = ChatModule(a.model, a.model_lib, opts)
        try:
            chat_repl(module, sys.stdin, sys.stdout, generation)
        finally:
            module.close()

    p.set_defaults(func=run)


@command("serve", "serve the browser chat demo and model artifacts on 127.0.0.1")
def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="model folder (repeat for several models)")
    p.add_argument("--model-lib", action="append", required=True, help="its WebGPU library (.wasm), one per --model")
    p.add_argument("--model-id", action="append", help="its id in the page (default: the folder name)")
    p.add_argument("--model-lib-cpu", action="append",
                   help="its CPU library for browsers without a usable GPU (.wasm from --device wasm), one per --model")
    p.add_argument("--model-lib-fallback", action="append",
                   help="its WebGPU library for software adapters (.wasm from --kernels fallback), one per --model")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--site", help="page folder to serve at / (default: the repo's site/; e.g. examples/get-started)")
    p.add_argument("--pyodide", help="the npm pyodide package folder (default: node_modules/pyodide)")
    p.add_argument("--cache-backend", choices=["cache", "indexeddb"], default="cache",
                   help="where the browser keeps model files (AppConfig.cache_backend)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")

    def run(a: argparse.Namespace) -> None:
        from webrt.errors import ModelConfigError
        from webrt.tools.serve import ServedModel, demo_server

        ids, cpu_libs, fallback_libs = a.model_id or [], a.model_lib_cpu or [], a.model_lib_fallback or []
        if len(a.model_lib) != len(a.model) or max(len(ids), len(cpu_libs), len(fallback_libs)) > len(a.model):
            raise ModelConfigError("give one --model-lib (and at most one --model-id, --model-lib-cpu and "
                                   "--model-lib-fallback) per --model")
        models = [ServedModel(m, lib, ids[i] if i < len(ids) else "",
                              model_lib_cpu=cpu_libs[i] if i < len(cpu_libs) else None,
                              model_lib_fallback=fallback_libs[i] if i < len(fallback_libs) else None)
                  for i, (m, lib) in enumerate(zip(a.model, a.model_lib))]
        server = demo_server(models, a.port, a.site, a.pyodide, a.cache_backend, a.verbose)
        print(f"webrt: serving {', '.join(m.model_id for m in models)} at {server.url('/')} (Ctrl-C stops)",
              flush=True)
        try:
            server.serve_forever()
        finally:
            server.httpd.server_close()

    p.set_defaults(func=run)


@command("bench", "benchmarks: speed beside TVM's JS runtime (browser), wllama (cpu) and HF transformers (native), quality against the reference model, tokenizer speed, memory plans beside WebLLM's")
def _bench(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_kind", required=True)
    for kind, lib_help in (("browser", "its WebGPU library (.wasm)"), ("native", "its CPU library (.so)")):
        q = sub.add_parser(kind, help=f"{kind} benchmark (see webrt.tools.bench)")
        q.add_argument("--model", action="append", required=True, help="model folder (repeat for several)")
        q.add_argument("--model-lib", action="append", required=True, help=f"{lib_help}, one per --model")
        q.add_argument("--label", action="append", help="row label, one per --model (default: folder name)")
        q.add_argument("--steps", type=int, default=8 if kind == "browser" else 16, help="timed decode steps")
        q.add_argument("--warmup", type=int, default=2, help="untimed decode steps first")
        q.add_argument("--prompt-len", type=int, default=8, help="prompt tokens prefilled before decoding")
        q.add_argument("--json", help="also write the raw results here")
        if kind == "browser":
            q.add_argument("--gguf", action="append", help="the GGUF a --model was built from, one per --model: "
                           "adds llama.cpp's wasm build (npm @wllama/wllama) on that file")
            q.add_argument("--wllama-threads", default="1,2", help="thread counts for the wllama rows")
            q.add_argument("--model-lib-cpu", action="append",
                           help="the CPU library (--device wasm) of a --model, one per --model: adds a webrt CPU row")
        if kind == "native":
            q.add_argument("--hf-gguf", help="a GGUF for the HF transformers row (fp32)")
            q.add_argument("--threads", type=int, default=2, help="transformers' intra-op threads")
    q = sub.add_parser("quality", help="perplexity and KL of CPU libraries against the reference model")
    q.add_argument("--model", action="append", required=True, help="model folder (repeat for several)")
    q.add_argument("--model-lib", action="append", required=True,
                   help="its CPU library (.so), or with --browser its WebGPU library (.wasm); one per --model")
    q.add_argument("--label", action="append", help="row label, one per --model (default: folder name)")
    q.add_argument("--reference", required=True, help="the source the models were built from (HF folder or .gguf)")
    q.add_argument("--text", required=True, help="a UTF-8 text file, teacher-forced through every model")
    q.add_argument("--max-tokens", type=int, default=512, help="tokens of the text to use")
    q.add_argument("--browser", action="store_true",
                   help="the libraries are WebGPU ones (.wasm): run them in headless Chromium (use a short text)")
    q.add_argument("--threads", type=int, default=2, help="transformers' intra-op threads")
    q.add_argument("--json", help="also write the raw results here")
    q = sub.add_parser("memory", help="planned memory of real model shapes (config.json only) beside WebLLM's "
                                      "vram_required_MB (see webrt.tools.bench.memory_bench)")
    q.add_argument("--configs", default="tests/data/hf_configs",
                   help="folder with one HF config.json folder per model (memory_bench.WEBLLM_RECORDS names them)")
    q.add_argument("--device", choices=["webgpu", "wasm", "cpu"], default="webgpu")
    q.add_argument("--json", help="also write the raw results here")
    q = sub.add_parser("cpu", help="the browser's CPU libraries (--device wasm) in paired rounds beside wllama "
                                   "(see webrt.tools.bench.cpu_rounds)")
    from webrt.tools.bench.cpu_rounds import add_arguments as cpu_arguments

    cpu_arguments(q)
    q = sub.add_parser("tokenizer", help="pure-Python tokenizer speed, CPython and Pyodide")
    q.add_argument("tokenizers", nargs="+", help="tokenizer.json files")
    q.add_argument("--corpus", default="tests/data/tokenizer_corpus.txt", help="text, one sample a line")
    q.add_argument("--pyodide", default="node_modules/pyodide/pyodide.mjs", help="npm pyodide's pyodide.mjs")

    def run(a: argparse.Namespace) -> None:
        import json
        from pathlib import Path

        from webrt.tools.bench import report
        from webrt.errors import ModelConfigError

        if a.bench_kind == "memory":
            from webrt.tools.bench.memory_bench import bench_memory, memory_table

            configs = Path(a.configs)
            if not configs.is_dir():
                raise ModelConfigError(f"--configs {configs} is not a folder; give the folder of HF config.json folders.")
            results = bench_memory(configs, a.device)
            print(memory_table(results))
            if a.json:
                Path(a.json).write_text(json.dumps(results, indent=1))
            return
        if a.bench_kind == "cpu":
            from webrt.tools.bench.cpu_rounds import run as run_cpu_rounds

            run_cpu_rounds(a)
            return
        if a.bench_kind == "tokenizer":
            from webrt.tools.bench.tokenizer_bench import run_cpython, run_pyodide, table

            files, corpus = [Path(t) for t in a.tokenizers], Path(a.corpus)
            version, in_pyodide = run_pyodide(files, corpus, Path(a.pyodide))
            rows = [(f"CPython {sys.version.split()[0]}", m) for m in run_cpython(files, corpus)]
            rows += [(f"Pyodide {version}", m) for m in in_pyodide]
            print(table(sorted(rows, key=lambda r: r[1]["tokenizer"])))
            return
        labels = a.label or []
        if len(a.model_lib) != len(a.model) or len(labels) > len(a.model):
            raise ModelConfigError("give one --model-lib (and at most one --label) per --model")
        names = [labels[i] if i < len(labels) else Path(m).name for i, m in enumerate(a.model)]
        if a.bench_kind == "quality":
            from webrt.tools.bench.quality import QualityModel, bench_quality

            text_path = Path(a.text)
            if not text_path.is_file():
                raise ModelConfigError(f"--text {text_path} is not a file; give a UTF-8 text to score.")
            results = bench_quality([QualityModel(n, Path(m), Path(lib)) for n, m, lib in zip(names, a.model, a.model_lib)],
                                    Path(a.reference), text_path.read_text(encoding="utf-8"), a.max_tokens, a.threads,
                                    a.browser)
            text = report.quality_table(results)
        elif a.bench_kind == "browser":
            from webrt.tools.bench.browser_bench import BrowserModel, bench_model

            ggufs, cpu_libs = a.gguf or [], a.model_lib_cpu or []
            if len(ggufs) > len(a.model) or len(cpu_libs) > len(a.model):
                raise ModelConfigError("give at most one --gguf and one --model-lib-cpu per --model")
            threads = tuple(int(t) for t in a.wllama_threads.split(","))
            results = [bench_model(BrowserModel(n, Path(m), Path(lib), Path(ggufs[i]) if i < len(ggufs) else None,
                                                Path(cpu_libs[i]) if i < len(cpu_libs) else None),
                                   a.steps, a.warmup, a.prompt_len,
                                   log=lambda line: print(line, file=sys.stderr, flush=True), wllama_threads=threads)
                       for i, (n, m, lib) in enumerate(zip(names, a.model, a.model_lib))]
            text = "\n\n".join(
                part for part in (report.browser_table(results), report.browser_notes(results),
                                  report.wllama_table(results), report.sampling_table(results)) if part
            )
        else:
            from webrt.tools.bench.native_bench import NativeModel, bench_transformers, bench_webrt_cpu

            results = [bench_webrt_cpu(NativeModel(n, Path(m), Path(lib)), a.steps, a.warmup, a.prompt_len)
                       for n, m, lib in zip(names, a.model, a.model_lib)]
            if a.hf_gguf:
                results.append(bench_transformers(Path(a.hf_gguf), a.steps, a.warmup, a.prompt_len, a.threads))
            text = report.native_table(results)
        print(text)
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add_arguments in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=add_arguments.help_text))  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``webrt`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except WebrtError as e:
        print(f"webrt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"webrt {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
