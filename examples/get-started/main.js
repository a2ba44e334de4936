// Boots Python in a module worker, runs main.py there, and shows its events and reply.
import { bootWorker } from "/runtime/boot.js";

const log = document.getElementById("log");
const reply = document.getElementById("reply");
// main.py posts {"event": {...}} messages while it runs: progress lines and reply text
const onEvent = (event) => {
  if (event.kind === "progress") log.textContent = event.text;
  else if (event.kind === "delta") reply.textContent += event.text;
};
const python = await bootWorker({ pyodideURL: "/pyodide/", bundleURL: "/webrt-bundle.zip", onEvent });
const result = await python.runPython(await (await fetch("main.py")).text());
log.textContent = result.error ? result.error : `Done: ${result.value}`;
window.getStartedResult = result;
