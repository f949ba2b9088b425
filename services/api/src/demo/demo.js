// The demo page: a visitor's chat widget and an agent's panel on the same thread, each with
// its own client and websocket. Message texts are shown as text, never as HTML.

import { createClient } from "/demo/threadline.js";

const websocketUrl = document.querySelector('meta[name="threadline-websocket-url"]')?.content || undefined;
const visitorClient = createClient({ websocketUrl });

const $ = (id) => document.getElementById(id);

/** One panel: its list of messages, its status line, its error line and its watch. */
class Panel {
  constructor(name, { mine }) {
    this.list = $(`${name}-messages`);
    this.status = $(`${name}-status`);
    this.error = $(`${name}-error`);
    this.compose = $(`${name}-form`);
    this.input = $(`${name}-input`);
    this.mine = mine;
    this.watch = null;
  }

  follow(client, threadId) {
    this.watch?.close();
    this.list.replaceChildren();
    this.showError(null);
    this.compose.hidden = false;
    this.watch = client.watch(threadId, (message) => this.add(message), {
      onState: (state) => this.showState(state),
    });
  }

  add(message) {
    const item = document.createElement("li");
    item.dataset.id = message.id;
    item.className = message.send_by_user === this.mine ? "mine" : "theirs";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${nameOf(message.user)} · ${timeOf(message.timestamp)}`;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = message.body;
    item.append(who, body);
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    this.list.append(item);
    if (atBottom) {
      item.scrollIntoView({ block: "end" });
    }
  }

  showState({ state, delay, code, error }) {
    const text = {
      connecting: "connecting…",
      open: "live",
      "catching-up": "catching up…",
      waiting: `reconnecting in ${(delay / 1000).toFixed(1)} s (${code})`,
      closed: error ? `stopped: ${error.message}` : "closed",
    }[state];
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  showError(error) {
    this.error.hidden = !error;
    this.error.textContent = error ? error.message : "";
  }
}

function nameOf(user) {
  if (user && typeof user === "object" && typeof user.name === "string") {
    return user.name;
  }
  return typeof user === "string" ? user : JSON.stringify(user);
}

function timeOf(timestamp) {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Sends the compose field's text with `send`, keeping it on failure. */
function onCompose(panel, send) {
  panel.compose.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = panel.input.value;
    panel.input.value = "";
    try {
      await send(body);
      panel.showError(null);
    } catch (error) {
      panel.input.value = body;
      panel.showError(error);
    }
  });
}

const visitor = new Panel("visitor", { mine: true });
const agent = new Panel("agent", { mine: false });
let visitorName = "Ada";
let thread = null;

function agentClient() {
  const token = $("agent-token").value.trim();
  return createClient({ websocketUrl, headers: token ? { Authorization: `Bearer ${token}` } : {} });
}

$("start-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  visitorName = $("visitor-name").value.trim() || "Visitor";
  try {
    thread = await visitorClient.createThread({ name: visitorName });
  } catch (error) {
    visitor.showError(error);
    return;
  }
  sessionStorage.setItem("threadline-demo-thread", JSON.stringify({ id: thread.id, name: visitorName }));
  open(thread.id);
  visitor.input.focus();
});

function open(threadId) {
  $("start-form").hidden = true;
  visitor.follow(visitorClient, threadId);
  $("agent-thread").value = threadId;
  agent.follow(agentClient(), threadId);
}

onCompose(visitor, (body) =>
  visitorClient.postMessage({ thread: visitor.watch.threadId, user: { name: visitorName }, body, send_by_user: true }),
);

onCompose(agent, (body) =>
  agentClient().postMessage({ thread: agent.watch.threadId, user: { name: "Support agent" }, body, send_by_user: false }),
);

$("agent-follow").addEventListener("submit", (event) => {
  event.preventDefault();
  agent.follow(agentClient(), $("agent-thread").value.trim());
});

// A reload keeps the visitor's conversation, as a website's widget does.
const kept = sessionStorage.getItem("threadline-demo-thread");
if (kept) {
  try {
    const { id, name } = JSON.parse(kept);
    visitorName = name;
    $("visitor-name").value = name;
    open(id);
  } catch {
    sessionStorage.removeItem("threadline-demo-thread");
  }
}
