// The chat demo's page logic: boot webrt (Pyodide) in a module worker, load a model from the
// served AppConfig with a progress bar, and stream replies. All model work is Python (app.py)
// running in the worker; this file only moves text between the DOM and that worker.
import { bootWorker } from "./runtime/boot.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), model: $("model"), load: $("load"), bar: $("bar"), progress: $("progress-text"),
  log: $("log"), form: $("form"), input: $("input"), send: $("send"), stop: $("stop"),
  reset: $("reset"), stats: $("stats"), temperature: $("temperature"), maxTokens: $("max-tokens"),
};
const history = [];
const events = []; // the types of events received, in order (tests read it)
let runtime = null;
let streaming = null; // the assistant bubble being filled

function setBusy(busy) {
  ui.send.disabled = busy || !ui.model.dataset.loaded;
  ui.input.disabled = !ui.model.dataset.loaded;
  ui.stop.disabled = !busy;
  ui.load.disabled = busy || !runtime;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  ui.log.appendChild(div);
  ui.log.scrollTop = ui.log.scrollHeight;
  return div;
}

function onEvent(event) {
  events.push(event.type);
  if (event.type === "progress") {
    ui.bar.value = event.progress;
    ui.progress.textContent = event.text;
  } else if (event.type === "delta" && streaming) {
    streaming.textContent += event.text;
    ui.log.scrollTop = ui.log.scrollHeight;
  } else if (event.type === "done") {
    ui.stats.textContent = event.stats;
  }
}

async function py(code) {
  const result = await runtime.runPython(code);
  if (result.error) throw new Error(result.error);
  return result.value;
}

async function boot() {
  ui.status.textContent = "Starting Python (Pyodide) in a worker…";
  runtime = await bootWorker({ pyodideURL: "/pyodide/", bundleURL: "/webrt-bundle.zip", onEvent });
  await py(await (await fetch("/app.py")).text());
  const ids = await py(`await app.setup(${JSON.stringify(new URL("/app-config.json", location.href).href)})`);
  for (const id of ids) ui.model.add(new Option(id, id));
  ui.status.textContent = `Python ready in ${(runtime.bootMs / 1000).toFixed(1)} s. Choose a model and load it.`;
  setBusy(false);
}

async function load() {
  const id = ui.model.value;
  setBusy(true);
  ui.load.disabled = true;
  ui.status.textContent = `Loading ${id}…`;
  try {
    const info = await py(`await app.load(${JSON.stringify(id)})`);
    ui.model.dataset.loaded = id;
    ui.bar.value = 1;
    const runsOn = info.library === "cpu" ? `on the CPU: ${info.reason}` : `${info.pipelines_n} GPU pipelines`;
    ui.status.textContent = `${id} is ready (${info.ready_s.toFixed(1)} s; ${runsOn}, ` +
      `${info.fetched_from_network ? info.fetched_from_network + " files downloaded" : "all files from the cache"}).`;
    history.length = 0;
  } catch (err) {
    ui.status.textContent = `Loading failed: ${String(err.message).trim().split("\n").pop()}`;
  } finally {
    setBusy(false);
    ui.input.focus();
  }
}

async function send(event) {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text || !ui.model.dataset.loaded) return;
  ui.input.value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  streaming = bubble("assistant", "");
  setBusy(true);
  try {
    // Replies are capped (the field's default, 512 tokens) so a model that never emits its stop
    // token cannot run on until the context window is full; empty means no cap.
    const options = {};
    if (ui.temperature.value !== "") options.temperature = Number(ui.temperature.value);
    if (ui.maxTokens.value !== "") options.max_tokens = Number(ui.maxTokens.value);
    const reply = await py(`await app.chat(${JSON.stringify(JSON.stringify(history))}, ` +
      `${JSON.stringify(JSON.stringify(options))})`);
    history.push({ role: "assistant", content: reply.text });
    if (reply.finish_reason === "abort") streaming.classList.add("stopped");
    if (reply.finish_reason === "length") {
      streaming.classList.add("cut");
      streaming.title = "The reply reached the token limit (max tokens) and was cut there.";
    }
  } catch (err) {
    streaming.classList.add("error");
    streaming.textContent = String(err.message).trim().split("\n").pop();
    history.pop();
  } finally {
    streaming = null;
    setBusy(false);
    ui.input.focus();
  }
}

ui.load.addEventListener("click", load);
ui.form.addEventListener("submit", send);
ui.stop.addEventListener("click", () => py("await app.stop()"));
ui.reset.addEventListener("click", async () => {
  await py("await app.reset()");
  history.length = 0;
  ui.log.replaceChildren();
  ui.stats.textContent = "";
});
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) ui.form.requestSubmit();
});
window.webrtDemo = { ui, history, events, get runtime() { return runtime; }, ready: boot().catch((err) => {
  ui.status.textContent = `Could not start: ${err.message}`;
  throw err;
}) };
