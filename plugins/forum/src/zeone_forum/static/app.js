// ZEONE forum web UI: plain DOM, no build step. Post bodies arrive as server-sanitized HTML;
// everything else (titles, names, tags) is set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // open thread id, or null for the list

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (options.body !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function who(item) { return item.nick || item.author.slice(0, 8); }
function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }

function voteButtons(target, votes) {
  const box = el("span", undefined, "votes");
  const up = el("button", "▲ " + votes.up, "vote-up");
  const down = el("button", "▼ " + votes.down, "vote-down");
  up.type = down.type = "button";
  up.dataset.target = down.dataset.target = target;
  up.addEventListener("click", () => vote(target, 1));
  down.addEventListener("click", () => vote(target, -1));
  box.append(up, down, el("span", " score " + votes.weighted, "weighted"));
  return box;
}

async function vote(target, value) {
  try { await api("/forum/vote", { body: { target, value } }); await refresh(); }
  catch (e) { showError(e); }
}

async function showList() {
  current = null;
  $("thread-view").hidden = true;
  $("list-view").hidden = false;
  $("results").hidden = true;
  $("threads").hidden = false;
  const data = await api("/forum/threads?order=" + encodeURIComponent($("order").value));
  const list = $("threads");
  list.replaceChildren();
  for (const t of data.threads) {
    const li = el("li");
    li.className = "thread";
    li.dataset.id = t.id;
    const link = el("a", t.title, "thread-link");
    link.href = "#/thread/" + t.id;
    const meta = el("div", `${t.posts} posts · ${who(t)} · ${when(t.last_activity)} · popularity ${t.score}` +
      (t.tags.length ? " · " + t.tags.join(", ") : ""), "meta");
    li.append(link, meta, voteButtons(t.id, t.votes));
    list.append(li);
  }
}

async function showThread(id) {
  current = id;
  const t = await api("/forum/threads/" + id);
  $("list-view").hidden = true;
  $("thread-view").hidden = false;
  $("t-title").textContent = t.title;
  $("t-meta").textContent = `${who(t)} · ${t.category} · ${t.posts} posts · held by ${t.holders} nodes`;
  const list = $("messages");
  list.replaceChildren();
  for (const m of t.messages) {
    const li = el("li", undefined, "message");
    li.dataset.id = m.id;
    const body = el("div", undefined, "body");
    body.innerHTML = m.html; // sanitized on the node (markdown-it html=false + nh3), CSP-guarded
    li.append(el("div", `${who(m)} · ${when(m.created)}` + (m.edited ? " · edited" : ""), "meta"),
      body, voteButtons(m.id, m.votes));
    list.append(li);
  }
}

async function refresh() {
  try {
    showError(null);
    if (current) await showThread(current); else await showList();
  } catch (e) { showError(e); }
}

function route() {
  const match = location.hash.match(/^#\/thread\/([0-9a-f]{64})$/);
  current = match ? match[1] : null;
  refresh();
}

function connectLive() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/forum/ws");
  ws.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "on"; });
  ws.addEventListener("close", () => {
    $("live").textContent = "offline"; $("live").className = "off";
    setTimeout(connectLive, 2000);
  });
  let timer = null;
  ws.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (current && event.thread !== current) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 100); // coalesce bursts
  });
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", route);
  $("home").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; route(); });
  $("order").addEventListener("change", refresh);
  $("new-thread-btn").addEventListener("click", () => { $("new-thread").hidden = !$("new-thread").hidden; });
  $("new-thread").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const tags = $("nt-tags").value.split(",").map((s) => s.trim()).filter(Boolean);
      const made = await api("/forum/threads", { body: { title: $("nt-title").value, content: $("nt-content").value, tags } });
      $("new-thread").reset(); $("new-thread").hidden = true;
      location.hash = "#/thread/" + made.thread;
    } catch (err) { showError(err); }
  });
  $("reply-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/forum/threads/" + current + "/reply", { body: { content: $("reply-content").value, anonymous: $("reply-anon").checked } });
      $("reply-content").value = "";
      await refresh();
    } catch (err) { showError(err); }
  });
  $("search-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const data = await api("/forum/search?q=" + encodeURIComponent($("search").value));
      location.hash = "";
      current = null;
      $("thread-view").hidden = true; $("list-view").hidden = false;
      $("threads").hidden = true;
      const list = $("results"); list.hidden = false; list.replaceChildren();
      for (const r of data.results) {
        const li = el("li", undefined, "result");
        const link = el("a", r.title || r.thread.slice(0, 12)); link.href = "#/thread/" + r.thread;
        li.append(link, el("div", r.snippet, "meta"));
        list.append(li);
      }
    } catch (err) { showError(err); }
  });
  connectLive();
  route();
});
