"""CPython-only tools around the browser runtime; never shipped to the browser.

- `serve`: the HTTP server of ``webrt serve`` (the demo page, the boot scripts, Pyodide, the
  webrt bundle and exactly the files each served model needs).
- `bundle`: the zip of webrt's browser packages that the page unpacks into Pyodide.
- `chromium`: headless Chromium with WebGPU, driven over CDP (benchmarks and tests).
- `bench`: ``webrt bench`` (browser, native, tokenizer).
- `gen_bert_tables`: regenerates ``webrt/tokenizer/bert_unicode_tables.py``.
"""
