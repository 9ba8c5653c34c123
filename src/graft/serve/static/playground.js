// The graft playground: a chat over POST /v1/chat/completions with stream: true, read as
// server-sent events from fetch's ReadableStream (EventSource cannot POST or send headers).
// Text from the model is only ever set with textContent, never parsed as HTML. Under each reply an
// "attention" button posts the conversation up to it to POST /v1/attention and draws the map.
"use strict";

const KEY_STORAGE = "graft.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  model: null,      // the served model's id, from GET /v1/models
  history: [],      // [{role, content}] of finished turns
  controller: null, // AbortController of the stream in flight; aborting it cancels the request server-side
};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  li.textContent = text;
  $("messages").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

async function loadModel() {
  setStatus("");
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("model-name").textContent = response.status === 401 ? "enter the API key →" : "model unavailable";
    setStatus(await errorMessage(response));
    return;
  }
  state.model = (await response.json()).data[0].id;
  $("model-name").textContent = state.model;
  const detail = await fetch(`/v1/models/${encodeURIComponent(state.model).replace(/%2F/g, "/")}`, { headers: headers() });
  if (!detail.ok) return;
  const facts = (await detail.json()).graft;
  const dl = $("facts");
  dl.replaceChildren();
  const shown = [["kind", facts.kind], ["parameters", facts.parameters.toLocaleString()],
    ["context", `${facts.context_length} tokens`], ["tokenizer", `${facts.tokenizer}, ${facts.vocab_size}`],
    ["chat template", facts.chat_template ? "its own" : "graft default"], ["batch", facts.max_batch],
    ["quantize", facts.quantize]];
  if (facts.labels.length) shown.push(["labels", facts.labels.join(", ")]);
  for (const [name, value] of shown) {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = value;
    dl.append(dt, dd);
  }
  $("card").textContent = facts.card;
}

function requestBody(messages) {
  const body = { model: state.model, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
  const maxTokens = $("max-tokens").value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  const seed = $("seed").value.trim();
  if (seed) body.seed = Number(seed);
  return body;
}

// Yields each SSE event's data string; events end with a blank line.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function send(text) {
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...state.history,
    { role: "user", content: text }];
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  state.controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  let reply = "", usage = null, finish = null;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
      body: JSON.stringify(requestBody(messages)), signal: state.controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        bubble.textContent = reply;
        bubble.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    state.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
      state.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
    } else {
      bubble.remove();
      addMessage("error", String(err.message || err));
    }
  } finally {
    bubble.classList.remove("streaming");
    if (bubble.isConnected) {
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = [finish && `finish: ${finish}`, usage && `${usage.prompt_tokens} prompt + ${usage.completion_tokens} new tokens`]
        .filter(Boolean).join(" · ");
      bubble.appendChild(meta);
      if (reply) addAttentionButton(bubble, [...messages, { role: "assistant", content: reply }]);
    }
    state.controller = null;
    $("send").disabled = false; $("stop").disabled = true;
  }
}

// -- attention map: rows are the reply's tokens, columns every token the model read ------------

const MAP_WIDTH = 560; // px the map aims for; cells stay 2..14 px square

function addAttentionButton(bubble, conversation) {
  const box = document.createElement("div");
  box.className = "attention";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small";
  button.textContent = "attention";
  box.appendChild(button);
  bubble.appendChild(box);
  button.addEventListener("click", () => showAttention(box, button, conversation));
}

async function showAttention(box, button, conversation) {
  button.disabled = true;
  box.querySelectorAll(".attention-map, .attention-error").forEach((e) => e.remove());
  try {
    const response = await fetch("/v1/attention", { method: "POST", headers: headers(),
      body: JSON.stringify({ model: state.model, messages: conversation }) });
    if (!response.ok) throw new Error(await errorMessage(response));
    box.appendChild(attentionMap(await response.json()));
  } catch (err) {
    const p = document.createElement("p");
    p.className = "attention-error";
    p.textContent = String(err.message || err);
    box.appendChild(p);
  } finally {
    button.disabled = false;
  }
}

function attentionMap(data) {
  const first = data.reply_start < data.tokens.length ? data.reply_start : 0;
  const rows = data.tokens.length - first, cols = data.tokens.length;
  const cell = Math.max(2, Math.min(14, Math.floor(MAP_WIDTH / cols)));
  const figure = document.createElement("figure");
  figure.className = "attention-map";
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "small";
  const canvas = document.createElement("canvas");
  canvas.width = cols * cell;
  canvas.height = rows * cell;
  const caption = document.createElement("figcaption");
  let kind = "rollout";
  const draw = () => {
    const matrix = data[kind];
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    let top = 0;
    for (let r = first; r < cols; r++) for (const v of matrix[r]) top = Math.max(top, v);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = matrix[first + r][c];
        if (v <= 0) continue;
        ctx.fillStyle = `rgba(45, 106, 79, ${Math.sqrt(v / top).toFixed(3)})`;
        ctx.fillRect(c * cell, r * cell, cell, cell);
      }
    }
    toggle.textContent = kind === "rollout" ? "show last layer" : "show rollout";
    caption.textContent = `${kind === "rollout" ? "attention rollout" : "last layer"} (heads averaged, ` +
      `${data.layers} layers × ${data.heads} heads): rows are the reply's ${rows} tokens, ` +
      `columns all ${cols}; hover a cell for its tokens`;
    canvas.dataset.drawn = kind;
  };
  toggle.addEventListener("click", () => { kind = kind === "rollout" ? "last_layer" : "rollout"; draw(); });
  canvas.addEventListener("mousemove", (event) => {
    const bounds = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - bounds.left) / bounds.width * cols);
    const r = Math.floor((event.clientY - bounds.top) / bounds.height * rows);
    if (r < 0 || r >= rows || c < 0 || c >= cols) return;
    const value = data[kind][first + r][c];
    canvas.title = `${JSON.stringify(data.tokens[first + r])} → ${JSON.stringify(data.tokens[c])}: ${value}`;
  });
  figure.append(toggle, canvas, caption);
  draw();
  return figure;
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("input", () => localStorage.setItem(KEY_STORAGE, $("api-key").value.trim()));
  $("api-key").addEventListener("change", loadModel);
  for (const [input, output] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(input).addEventListener("input", () => { $(output).textContent = $(input).value; });
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value;
    if (!text.trim() || state.controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("card-link").addEventListener("click", () => {
    $("card").closest("details").open = true;
    $("card").scrollIntoView({ block: "start" });
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("reset").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.history = [];
    $("messages").replaceChildren();
  });
  loadModel();
}

init();
