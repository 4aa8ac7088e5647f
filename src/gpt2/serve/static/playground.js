// The gpt2 serve playground: streams /v1/completions or /v1/chat/completions (server-sent events read with
// fetch), a Stop button that aborts the request (the server frees the slot), sampling sliders, token counts
// and tokens/s. The chat conversation lives in this page only. Served by `gpt2 serve CHECKPOINT` at /.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"];
const state = { model: null, chat: false, messages: [], controller: null };

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function setMode() {
  document.body.className = mode();
  $("prompt").placeholder = mode() === "chat" ? "Write a message…" : "Write a prompt…";
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "muted";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function samplingParams() {
  const p = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10),
    stream: true,
    stream_options: { include_usage: true },
  };
  const topK = parseInt($("top_k").value, 10);
  if (topK > 0) p.top_k = topK;
  const rep = parseFloat($("repetition_penalty").value);
  if (rep !== 1) p.repetition_penalty = rep;
  if ($("seed").value !== "") p.seed = parseInt($("seed").value, 10);
  const stops = $("stop-strings").value.split(",").map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"))
    .filter((s) => s.length > 0).slice(0, 4);
  if (stops.length) p.stop = stops;
  if (state.model) p.model = state.model;
  return p;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const name = document.createElement("span");
  name.className = "role";
  name.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(name, body);
  $("conversation").append(div);
  return body;
}

// Read a server-sent-events response; call onData with each parsed `data:` object until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value;
  const chat = mode() === "chat";
  if (chat && !text.trim()) return setStatus("write a message first", true);
  const body = samplingParams();
  let target;
  if (chat) {
    state.messages.push({ role: "user", content: text });
    addMessage("user", text);
    target = addMessage("assistant", "");
    body.messages = state.messages.slice();
    $("prompt").value = "";
  } else {
    body.prompt = text;
    $("output-prompt").textContent = text;
    $("output-text").textContent = "";
    target = $("output-text");
  }
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("completion-tokens").textContent = "0";
  $("tps").textContent = "–";
  $("ttft").textContent = "–";
  setStatus("generating…");
  const t0 = performance.now();
  let first = null, tokens = 0, reply = "", finish = null;
  const showRate = () => {
    if (first === null || tokens < 2) return;
    const seconds = (performance.now() - first) / 1000;
    if (seconds > 0) $("tps").textContent = ((tokens - 1) / seconds).toFixed(1);
  };
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || response.status + " " + response.statusText);
    }
    await readEvents(response, (data) => {
      if (data.error) throw new Error(data.error.message);
      if (data.usage) {
        $("prompt-tokens").textContent = data.usage.prompt_tokens;
        $("completion-tokens").textContent = data.usage.completion_tokens;
      }
      for (const choice of data.choices || []) {
        const piece = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (piece) {
          if (first === null) { first = performance.now(); $("ttft").textContent = ((first - t0) / 1000).toFixed(2) + " s"; }
          tokens += 1;  // one chunk per token (chunks whose text is held back are not sent)
          reply += piece;
          target.textContent += piece;
          $("completion-tokens").textContent = tokens;
          showRate();
          target.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    setStatus(`done (${finish || "?"})`);
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus("error: " + e.message, true);
  } finally {
    showRate();
    if (chat) state.messages.push({ role: "assistant", content: reply });
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function clearAll() {
  state.messages = [];
  $("conversation").textContent = "";
  $("output-prompt").textContent = "";
  $("output-text").textContent = "";
  $("prompt-tokens").textContent = "–";
  $("completion-tokens").textContent = "0";
  setStatus("ready");
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
    const card = data.data[0];
    state.model = card.id;
    state.chat = card.chat;
    $("model").textContent = `${card.id} · context ${card.max_model_len} tokens` + (card.chat ? "" : " · no chat format");
    $("max_tokens").max = card.max_model_len;
    $("mode-chat").disabled = !card.chat;
  } catch (e) {
    $("model").textContent = "model unknown (" + e.message + ")";
  }
}

for (const name of SLIDERS) {
  const input = $(name);
  input.addEventListener("input", () => { $(name + "-value").textContent = input.value; });
}
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", setMode));
$("form").addEventListener("submit", send);
$("stop").addEventListener("click", stop);
$("clear").addEventListener("click", clearAll);
$("api-key").addEventListener("change", loadModel);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
});
setMode();
loadModel();
