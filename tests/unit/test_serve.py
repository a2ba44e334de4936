"""`webrt serve`'s server against a hostile client: it serves exactly a model's files and its own
site, refuses foreign Host names, sends the security headers, bounds idle connections, answers
HEAD as GET and survives malformed URLs. Raw sockets and urllib are the independent clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from webrt.errors import ModelConfigError, ToolchainError, WeightFileError
from webrt.ndarray_cache.format import ShardRecord, TensorCacheIndex, TensorRecord
from webrt.tools.serve import CONTENT_SECURITY_POLICY, ArtifactServer, ServedModel, demo_server

LIB_NAME = "lib-webgpu.wasm"


def write_model(home: Path) -> tuple[Path, Path]:
    """A model folder and a library placed in a 'home' folder that also holds secrets."""
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    (home / "notes.txt").write_text("sibling of the library")
    lib = home / LIB_NAME
    lib.write_bytes(b"\0asm\1\0\0\0")
    model = home / "model"
    model.mkdir()
    shard = bytes(range(256)) * 4
    (model / "params_shard_0.bin").write_bytes(shard)
    index = TensorCacheIndex({"ParamSize": 256}, (ShardRecord(
        "params_shard_0.bin", len(shard), hashlib.md5(shard).hexdigest(),
        (TensorRecord("w", (256,), "float32", "raw", 1024, 0),)),))
    (model / "tensor-cache.json").write_text(index.dumps())
    (model / "tokenizer.json").write_text("{}")
    (model / "mlc-chat-config.json").write_text(json.dumps({"quantization": "q4f32_1",
                                                              "tokenizer_files": ["tokenizer.json"]}))
    (model / "secret.txt").write_text("not a model file")
    (model / ".env").write_text("TOKEN=1")
    return model, lib


def request(server: ArtifactServer, path: str, method: str = "GET", host: str | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{server.port}")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


@pytest.fixture()
def served(tmp_path: Path):
    model, lib = write_model(tmp_path / "home")
    with demo_server([ServedModel(model, lib, "m")]) as server:
        yield server


def test_serves_the_model_files_and_nothing_beside_them(served: ArtifactServer) -> None:
    base = "/models/m/resolve/main/"
    for name in ("mlc-chat-config.json", "tensor-cache.json", "params_shard_0.bin", "tokenizer.json"):
        assert request(served, base + name)[0] == 200, name
    assert request(served, f"/libs/m/{LIB_NAME}")[2][:4] == b"\0asm"
    for path in ("/libs/m/.ssh/id_rsa", "/libs/m/%2essh/id_rsa", "/libs/m/notes.txt", "/libs/m/",
                 base + "secret.txt", base + ".env", base, base + "../../../../etc/passwd",
                 base + "%2e%2e/%2e%2e/secret.txt", "/models/m/", "/runtime/", "/runtime/.gitignore",
                 "/pyodide/", "/nothing-here"):
        assert request(served, path)[0] == 404, path


def test_refuses_foreign_host_names(served: ArtifactServer) -> None:
    """A DNS-rebinding page sends its own name as Host; only the bound names are answered."""
    for host in ("attacker.example", f"attacker.example:{served.port}", "127.0.0.1:1", ""):
        assert request(served, "/app-config.json", host=host)[0] == 421, host
    for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}"):
        assert request(served, "/app-config.json", host=host)[0] == 200, host


def test_security_headers_and_head(served: ArtifactServer) -> None:
    status, headers, body = request(served, "/app-config.json")
    assert status == 200 and json.loads(body)["model_list"][0]["model_id"] == "m"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    for path in ("/app-config.json", "/webrt-bundle.zip", "/models/m/resolve/main/params_shard_0.bin",
                 "/runtime/boot.js", "/", "/nothing-here"):
        get, head = request(served, path), request(served, path, method="HEAD")
        assert head[0] == get[0] and head[2] == b"", path
        assert head[1].get("content-length") == get[1].get("content-length"), path
        assert head[1].get("content-type") == get[1].get("content-type"), path


def test_malformed_urls_get_400_and_the_server_goes_on(served: ArtifactServer) -> None:
    for path in ("/app-config.json%00", "/models/m/resolve/main/%00/x", "/%ff%fe", "/a%5c..%5csecret"):
        assert request(served, path)[0] in (400, 404), path
    assert request(served, "/app-config.json%00")[0] == 400
    assert request(served, "/app-config.json")[0] == 200


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    with ArtifactServer(files={"/x": b"x"}, idle_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            start = time.monotonic()
            assert sock.recv(1) == b""  # the server hung up on a silent client
            assert time.monotonic() - start < 5
        assert request(server, "/x")[0] == 200


def test_bad_inputs_are_typed_errors(tmp_path: Path) -> None:
    model, lib = write_model(tmp_path / "home")
    with ArtifactServer() as server:
        with pytest.raises(ToolchainError, match="another --port"):
            ArtifactServer(port=server.port)
    index = json.loads((model / "tensor-cache.json").read_text())
    index["records"][0]["dataPath"] = "../notes.txt"
    (model / "tensor-cache.json").write_text(json.dumps(index))
    with pytest.raises(WeightFileError, match="not a file name inside the model folder"):
        ServedModel(model, lib).files()
    index["records"][0]["dataPath"] = "params_shard_9.bin"
    (model / "tensor-cache.json").write_text(json.dumps(index))
    with pytest.raises(WeightFileError, match="params_shard_9.bin is listed but missing"):
        ServedModel(model, lib).files()


def test_serve_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    """`webrt serve` from a wheel installed outside any checkout: the demo page, the boot scripts,
    the bundle and the model all come from the installed package (Pyodide from ./node_modules)."""
    import os
    import subprocess
    import sys
    import urllib.request

    import shutil

    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"  # a copy: an in-tree build would leave build/ in the checkout
    for name in ("site", "webrt"):
        shutil.copytree(repo / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("webrt-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site-packages"),
                    str(wheel)], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "node_modules").symlink_to(repo / "node_modules")
    model, lib = write_model(tmp_path / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site-packages")}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from webrt.cli import main; sys.exit(main())",
                             "serve", "--model", str(model), "--model-lib", str(lib), "--model-id", "m", "--port", str(port)],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "serving" in line, line + (proc.stdout.read() if proc.poll() is not None and proc.stdout else "")
        served = {}
        for path in ("/", "/chat.js", "/style.css", "/app.py", "/runtime/boot.js", "/runtime/worker.js",
                     "/pyodide/pyodide.mjs", "/webrt-bundle.zip", "/models/m/resolve/main/tensor-cache.json"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                served[path] = r.read()
        assert b"webrt chat" in served["/"] and served["/runtime/boot.js"] == (repo / "webrt/wasm/js/boot.js").read_bytes()
        import io
        import zipfile

        names = zipfile.ZipFile(io.BytesIO(served["/webrt-bundle.zip"])).namelist()
        assert "webrt/engine/engine.py" in names and not any(n.startswith("webrt/tools/") for n in names)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("field, build", [("model_lib_cpu", "--device wasm"),
                                          ("model_lib_fallback", "--kernels fallback")])
def test_another_library_is_published_and_served_beside_the_webgpu_one(tmp_path: Path, field: str, build: str) -> None:
    """--model-lib-cpu / --model-lib-fallback: the record names it as model_lib_cpu / model_lib_fallback
    (model_lib stays the WebGPU one, as WebLLM reads it) and exactly that file is served."""
    model, lib = write_model(tmp_path / "home")
    other = lib.with_name(f"lib-{field}.wasm")
    other.write_bytes(b"\0asm\1\0\0\0" + field.encode())
    with pytest.raises(ModelConfigError, match="both named"):
        ServedModel(model, lib, "m", **{field: lib})
    with pytest.raises(ModelConfigError, match=build):
        ServedModel(model, lib, "m", **{field: model / "tokenizer.json"})
    with demo_server([ServedModel(model, lib, "m", **{field: other})]) as server:
        record = json.loads(request(server, "/app-config.json")[2])["model_list"][0]
        assert record["model_lib"] == f"/libs/m/{LIB_NAME}" and record[field] == f"/libs/m/lib-{field}.wasm"
        status, headers, body = request(server, record[field])
        assert status == 200 and body.endswith(field.encode()) and headers["content-type"] == "application/wasm"
