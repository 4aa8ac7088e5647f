// The gpt2 serve playground: streams /v1/completions or /v1/chat/completions (server-sent events read with
// fetch), a Stop button that aborts the request (the server frees the slot), sampling sliders, token counts
// and tokens/s. The chat conversation lives in this page only; before each request the page fits it to the
// model's context, counting tokens with the server's own POST /tokenize (its tokenizer and chat format, never
// an estimate): the oldest turns that no longer fit are dropped (the system message stays) and max_tokens is
// capped to the room left, by the rule `gpt2 chat` follows. Served by `gpt2 serve CHECKPOINT` at /.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"];
const DEFAULT_MAX_TOKENS = 128;
// messages: every turn shown, as {role, content, div}; first: the index of the first one still sent (the
// ones before it were dropped to fit the context); n: the model's context (max_model_len).
const state = { model: null, chat: false, n: null, messages: [], first: 0, controller: null, maxTouched: false };

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
  return div;
}

// ------------------------------------------------------------------------- fitting the context
// The prompt's length in tokens as the server counts it: POST /tokenize with the same prompt or messages the
// generation request will carry (the chat format's rendering included).
async function countTokens(payload, signal) {
  const response = await fetch("/tokenize", {
    method: "POST", headers: headers(), body: JSON.stringify({ ...payload, model: state.model || undefined }), signal,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.status + " " + response.statusText);
  return data.count;
}

function systemMessages() {
  const text = $("system").value;
  return text.trim() ? [{ role: "system", content: text }] : [];
}

// The room a prompt of `count` tokens leaves, and max_tokens capped to it (an error when there is none).
function capped(count, maxTokens, what) {
  if (count >= state.n) {
    throw new Error(`${what} takes ${count} tokens and the model's context holds ${state.n}: shorten it`);
  }
  return Math.min(maxTokens, state.n - count);
}

// Fit a chat to the context as `gpt2 chat` does (gpt2.generate.chat.Chat.send): drop the oldest turns (a user
// message and its reply) until the prompt leaves max_tokens of room, the system message always kept; when the
// newest message alone leaves less, max_tokens is capped to the room left instead. Dropped turns stay dropped.
async function fitChat(user, maxTokens, signal) {
  const system = systemMessages();
  let first = state.first;
  for (;;) {
    const kept = state.messages.slice(first).map(({ role, content }) => ({ role, content }));
    const messages = [...system, ...kept, user];
    const count = await countTokens({ messages }, signal);
    if (count + maxTokens <= state.n || first >= state.messages.length) {
      const what = system.length ? "the system message with your message" : "your message";
      return { messages, count, first, maxTokens: capped(count, maxTokens, what) };
    }
    first += 2;
  }
}

function showDropped(maxTokens) {
  const dropped = state.first / 2;
  state.messages.forEach((m, i) => m.div.classList.toggle("dropped", i < state.first));
  let note = $("dropped-note");
  if (!dropped) {
    if (note) note.remove();
    return;
  }
  if (!note) {
    note = document.createElement("div");
    note.id = "dropped-note";
  }
  note.textContent = `↑ ${dropped} older turn${dropped > 1 ? "s" : ""} dropped: ${dropped > 1 ? "they no longer fit" :
    "it no longer fits"} the model's ${state.n}-token context beside a ${maxTokens}-token reply, so the model ` +
    "does not see " + (dropped > 1 ? "them" : "it") + (systemMessages().length ? " (the system message stays)" : "");
  state.messages[state.first - 1].div.after(note);
}

function showContext(used) {
  if (!state.n) return;
  $("context-meter").max = state.n;
  $("context-meter").value = Math.min(used, state.n);
  $("context-used").textContent = `${used} / ${state.n} tokens (${Math.round((100 * used) / state.n)}%)`;
}

function showFit(parts) {
  $("fit").textContent = parts.join(" · ");
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

// The request body, fitted to the context; in chat mode the user's message joins the conversation here.
async function prepare(text, chat, signal) {
  const body = samplingParams();
  const asked = body.max_tokens;
  const notes = [];
  let count = null;
  if (chat) {
    const user = { role: "user", content: text };
    body.messages = [...systemMessages(), ...state.messages.map(({ role, content }) => ({ role, content })), user];
    if (state.n) {  // exactly the messages counted are sent
      const fit = await fitChat(user, asked, signal);
      state.first = fit.first;
      body.messages = fit.messages;
      body.max_tokens = fit.maxTokens;
      count = fit.count;
    }
    const div = addMessage("user", text);
    state.messages.push({ ...user, div });
    showDropped(asked);
    if (state.first) notes.push(`${state.first / 2} older turn${state.first > 2 ? "s" : ""} dropped to fit the context`);
  } else {
    if (state.n) {
      count = await countTokens({ prompt: text }, signal);
      body.max_tokens = capped(count, asked, "the prompt");
    }
    body.prompt = text;
  }
  if (body.max_tokens < asked) notes.push(`max_tokens ${body.max_tokens} instead of ${asked}: the room the prompt leaves`);
  return { body, count, notes };
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value;
  const chat = mode() === "chat";
  if (chat && !text.trim()) return setStatus("write a message first", true);
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("completion-tokens").textContent = "0";
  $("tps").textContent = "–";
  $("ttft").textContent = "–";
  setStatus("generating…");
  const t0 = performance.now();
  let first = null, tokens = 0, reply = "", finish = null, target = null, count = null, joined = false;
  let stopped = false;
  const showRate = () => {
    if (first === null || tokens < 2) return;
    const seconds = (performance.now() - first) / 1000;
    if (seconds > 0) $("tps").textContent = ((tokens - 1) / seconds).toFixed(1);
  };
  try {
    const prepared = await prepare(text, chat, state.controller.signal);
    joined = chat;  // the message is in the conversation now
    count = prepared.count;
    showFit(prepared.notes);
    if (count !== null) { $("prompt-tokens").textContent = count; showContext(count); }
    if (chat) {
      target = addMessage("assistant", "").querySelector(".text");
      $("prompt").value = "";
    } else {
      $("output-prompt").textContent = text;
      $("output-text").textContent = "";
      target = $("output-text");
    }
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(prepared.body), signal: state.controller.signal,
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
        showContext(data.usage.total_tokens);
      }
      for (const choice of data.choices || []) {
        const piece = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (piece) {
          if (first === null) { first = performance.now(); $("ttft").textContent = ((first - t0) / 1000).toFixed(2) + " s"; }
          tokens += 1;  // one chunk per token (chunks whose text is held back are not sent)
          reply += piece;
          target.textContent += piece;
          $("completion-tokens").textContent = tokens;
          if (count !== null) showContext(count + tokens);
          showRate();
          target.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    setStatus(`done (${finish || "?"})`);
  } catch (e) {
    stopped = e.name === "AbortError";
    if (stopped) setStatus("stopped");
    else setStatus("error: " + e.message, true);
  } finally {
    showRate();
    if (joined) keepTurn(text, reply, target, stopped);
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

// After a chat request: the reply joins the conversation (a stopped one as far as it got). A turn that failed
// before any reply leaves it, its message back in the input box to send again.
function keepTurn(text, reply, target, stopped) {
  if (target && (reply || stopped)) {
    state.messages.push({ role: "assistant", content: reply, div: target.parentElement });
    return;
  }
  if (target) target.parentElement.remove();
  state.messages.pop().div.remove();
  $("prompt").value = text;
}

function stop() {
  if (state.controller) state.controller.abort();
}

function clearAll() {
  state.messages = [];
  state.first = 0;
  $("conversation").textContent = "";
  $("output-prompt").textContent = "";
  $("output-text").textContent = "";
  $("prompt-tokens").textContent = "–";
  $("completion-tokens").textContent = "0";
  showFit([]);
  showContext(0);
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
    state.n = card.max_model_len;
    $("max_tokens").max = card.max_model_len;
    if (!state.maxTouched) {
      // the default gives way to a short context: half of it, the other half kept for the conversation
      // (gpt2.generate.budget.fit_new_tokens, the rule of every verb)
      $("max_tokens").value = Math.min(DEFAULT_MAX_TOKENS, Math.max(1, Math.floor(card.max_model_len / 2)));
      $("max_tokens-value").textContent = $("max_tokens").value;
    }
    showContext(0);
    $("model").textContent = `${card.id} · context ${card.max_model_len} tokens` + (card.chat ? "" : " · no chat format");
    $("mode-chat").disabled = !card.chat;
  } catch (e) {
    $("model").textContent = "model unknown (" + e.message + ")";
  }
}

for (const name of SLIDERS) {
  const input = $(name);
  input.addEventListener("input", () => { $(name + "-value").textContent = input.value; });
}
$("max_tokens").addEventListener("input", () => { state.maxTouched = true; });
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
