// The stamp-relay portal: every action is a call of the JSON API
// (openapi.yaml) with the bearer token of the portal link. The token comes
// from the URL fragment, which browsers never send to the server; it is
// kept in this tab's sessionStorage and removed from the address bar.
// All data is put on the page as text (textContent), never as markup.
"use strict";

const KEY = "stamp-relay-portal-token";
const $ = (id) => document.getElementById(id);
let current = null; // the endpoint shown

function takeToken() {
  if (location.hash.length > 1) {
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(1)));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function say(text, error) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (r.status === 401) showSignin();
  if (!r.ok) {
    const detail = data && (data.detail || data.title) || r.statusText;
    throw new Error(r.status + ": " + detail);
  }
  return data;
}

// Runs an action, telling its outcome in the status line.
async function act(what, f) {
  try {
    say(what + "…");
    const msg = await f();
    say(msg || what + ": done");
  } catch (e) {
    say(what + " failed: " + e.message, true);
  }
}

function show(view) {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "view-" + view;
  for (const b of document.querySelectorAll("nav button[data-view]")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
}

function showSignin() {
  sessionStorage.removeItem(KEY);
  show("signin");
}

const time = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
const path = (id) => "/v1/subscriptions/" + encodeURIComponent(id);
const list = (s) => s.split(",").map((x) => x.trim()).filter((x) => x);

// Endpoints ---------------------------------------------------------------

async function loadEndpoints() {
  show("endpoints");
  const body = $("endpoints").tBodies[0];
  const { subscriptions } = await api("GET", "/v1/subscriptions");
  body.replaceChildren();
  for (const s of subscriptions) {
    const state = s.enabled ? "active" : "paused" + (s.disabled_reason ? ": " + s.disabled_reason : "");
    body.append(el("tr", { "data-endpoint": s.id },
      el("td", {}, el("code", { text: s.url }), el("br"), el("small", { text: s.description || s.id })),
      el("td", { text: s.resources.join(", ") }),
      el("td", { class: s.enabled ? "ok" : "bad", text: state }),
      el("td", {}, el("button", { type: "button", text: "Open", onclick: () => act("Opening", () => openEndpoint(s.id)) }))));
  }
  if (!subscriptions.length) body.append(el("tr", {}, el("td", { colspan: "4", text: "No endpoints yet." })));
}

async function openEndpoint(id) {
  current = await api("GET", path(id));
  show("endpoint");
  $("endpoint-title").textContent = "Endpoint " + current.url;
  $("secret").textContent = "";
  $("toggle-endpoint").textContent = current.enabled ? "Pause" : "Resume";
  const facts = $("endpoint-facts");
  facts.replaceChildren();
  const fact = (k, v) => facts.append(el("dt", { text: k }), el("dd", {}, el("code", { text: v })));
  fact("id", current.id);
  fact("state", current.enabled ? "active" : "paused " + (current.disabled_reason || ""));
  fact("resources", current.resources.join(", "));
  fact("operations", current.ops.length ? current.ops.join(", ") : "all");
  fact("filters", current.filters ? JSON.stringify(current.filters) : "none");
  fact("fields", current.fields ? current.fields.join(", ") : "whole records");
  fact("batch size / in flight / rate", current.batch_size + " / " + current.max_in_flight + " / " + (current.rate_limit || "none"));
  fact("headers", JSON.stringify(current.headers));
  await loadMessages();
  return "Endpoint " + current.id;
}

// A new endpoint starts with every table the token may read: a consumer's
// endpoint must stay within its allow-list.
async function visibleResources() {
  const { resources } = await api("GET", "/v1/resources");
  return resources.filter((r) => !r.source.startsWith("_")).map((r) => r.source + "/" + r.resource).join(", ");
}

async function editEndpoint(s) {
  const resources = s ? s.resources.join(", ") : await visibleResources();
  show("edit");
  $("edit-title").textContent = s ? "Edit endpoint" : "New endpoint";
  $("edit-form").dataset.id = s ? s.id : "";
  $("f-url").value = s ? s.url : "";
  $("f-description").value = s ? s.description : "";
  $("f-resources").value = resources;
  $("f-ops").value = s ? s.ops.join(", ") : "";
  $("f-filters").value = s && s.filters ? JSON.stringify(s.filters) : "";
  $("f-fields").value = s && s.fields ? s.fields.join(", ") : "";
  $("f-batch").value = s ? s.batch_size : 1;
  $("f-inflight").value = s ? s.max_in_flight : "";
  $("f-rate").value = s && s.rate_limit ? s.rate_limit : "";
  $("f-headers").value = s ? JSON.stringify(s.headers) : "";
  $("f-start").disabled = !!s;
  $("preview").replaceChildren();
  $("f-url").focus();
}

function json(field, text) {
  if (!text.trim()) return undefined;
  try { return JSON.parse(text); } catch (e) { throw new Error(field + " is not JSON: " + e.message); }
}

function formBody(isNew) {
  const b = { url: $("f-url").value.trim(), description: $("f-description").value, resources: list($("f-resources").value), ops: list($("f-ops").value) };
  const filters = json("filters", $("f-filters").value);
  const fields = $("f-fields").value.trim();
  const num = (id) => $(id).value ? Number($(id).value) : undefined;
  b.batch_size = num("f-batch");
  b.max_in_flight = num("f-inflight");
  b.headers = json("headers", $("f-headers").value) || {};
  if (isNew) {
    if (filters !== undefined) b.filters = filters;
    if (fields) b.fields = list(fields);
    if (num("f-rate")) b.rate_limit = num("f-rate");
    b.start = $("f-start").value;
  } else {
    b.filters = filters === undefined ? null : filters;
    b.fields = fields ? list(fields) : null;
    b.rate_limit = num("f-rate") || null;
  }
  for (const k of Object.keys(b)) if (b[k] === undefined) delete b[k];
  return b;
}

async function saveEndpoint(ev) {
  ev.preventDefault();
  const id = $("edit-form").dataset.id;
  await act(id ? "Saving" : "Creating", async () => {
    const s = id ? await api("PATCH", path(id), formBody(false)) : await api("POST", "/v1/subscriptions", formBody(true));
    await openEndpoint(s.id);
    if (s.secret) $("secret").textContent = "Signing secret: " + s.secret;
    return (id ? "Saved " : "Created ") + s.id;
  });
}

async function previewFilters() {
  await act("Previewing", async () => {
    const body = { resources: list($("f-resources").value), ops: list($("f-ops").value), limit: 20 };
    const filters = json("filters", $("f-filters").value);
    if (filters !== undefined) body.filters = filters;
    const r = await api("POST", "/v1/filters/preview", body);
    const out = $("preview");
    out.replaceChildren(el("p", { text: r.matching + " of the " + r.examined + " newest events match." }));
    const ul = el("ul", {});
    for (const e of r.events) {
      ul.append(el("li", { class: e.matches ? "match-yes" : "match-no", text: (e.matches ? "✓ " : "✗ ") + e.type + " " + e.record + " — " + JSON.stringify(e.data).slice(0, 160) }));
    }
    out.append(ul);
    return "Preview: " + r.matching + " of " + r.examined + " match";
  });
}

// The message log -----------------------------------------------------------

// The cursor of the older messages (the answer's `next`), if any.
let olderCursor = null;

// The newest messages matching the search; with `older`, the page after
// the one shown, appended below it.
async function loadMessages(older) {
  const q = new URLSearchParams();
  for (const [k, id] of [["record", "log-record"], ["type", "log-type"], ["state", "log-state"]]) {
    if ($(id).value) q.set(k, $(id).value);
  }
  if (older === true && olderCursor) q.set("before", olderCursor);
  const { messages, next } = await api("GET", path(current.id) + "/messages?" + q);
  const body = $("messages").tBodies[0];
  if (older !== true) body.replaceChildren();
  for (const m of messages) body.append(messageRow(m));
  if (!body.rows.length) body.append(el("tr", {}, el("td", { colspan: "6", text: "No messages match." })));
  olderCursor = next || null;
  $("log-older").hidden = !olderCursor;
}

function messageRow(m) {
  const tries = el("ul", { class: "attempts" });
  for (const a of m.attempts) {
    const line = time(a.at_ms) + " · " + a.outcome + (a.status ? " " + a.status : "") + " · " + a.latency_ms + " ms" + (a.reason ? " · " + a.reason : "");
    const li = el("li", { class: a.reason ? "attempt-failed" : "attempt-ok", text: line });
    if (a.response_excerpt) li.append(el("br"), el("span", { class: "excerpt", text: a.response_excerpt }));
    tries.append(li);
  }
  if (m.last_error) tries.append(el("li", { class: "bad", text: "last error: " + m.last_error }));
  const retry = el("button", { type: "button", text: "Retry", "aria-label": "Retry " + m.event_id,
    onclick: () => act("Retrying " + m.event_id, async () => {
      await api("POST", path(current.id) + "/messages/" + encodeURIComponent(m.event_id) + "/retry");
      await loadMessages();
    }) });
  // Not claimed yet, or being sent: the API leaves these alone (409).
  if (m.state === "scheduled" || m.state === "pending") retry.disabled = true;
  return el("tr", { "data-event": m.event_id, "data-state": m.state },
    el("td", { text: time(m.observed_ms) }), el("td", { text: m.type }), el("td", {}, el("code", { text: m.record })),
    el("td", { class: "state-" + m.state, text: m.state }), el("td", {}, tries), el("td", {}, retry));
}

// Actions on the endpoint shown --------------------------------------------

function parseStamps(text) {
  if (text.trim() === "beginning") return "beginning";
  const from = {};
  for (const part of list(text)) {
    const [t, stamp] = part.split("=");
    if (!stamp || isNaN(Number(stamp))) throw new Error("write source/resource=stamp, comma separated");
    from[t.trim()] = Number(stamp);
  }
  return from;
}

function wire() {
  const on = (id, what, f) => $(id).addEventListener("click", () => act(what, f));
  for (const b of document.querySelectorAll("nav button[data-view]")) {
    b.addEventListener("click", () => act("Loading", b.dataset.view === "catalog" ? loadCatalog : loadEndpoints));
  }
  $("sign-out").addEventListener("click", () => { showSignin(); say("Signed out"); });
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("signin-token").value);
    $("signin-token").value = "";
    act("Loading", loadEndpoints);
  });
  $("new-endpoint").addEventListener("click", () => act("Loading", () => editEndpoint(null)));
  $("edit-endpoint").addEventListener("click", () => act("Loading", () => editEndpoint(current)));
  $("cancel-edit").addEventListener("click", () => act("Loading", loadEndpoints));
  $("back-endpoints").addEventListener("click", () => act("Loading", loadEndpoints));
  $("edit-form").addEventListener("submit", saveEndpoint);
  $("preview-filters").addEventListener("click", previewFilters);
  on("toggle-endpoint", "Switching", async () => {
    await api("PATCH", path(current.id), { enabled: !current.enabled });
    await openEndpoint(current.id);
    return current.enabled ? "Resumed" : "Paused";
  });
  on("test-endpoint", "Sending a test ping", async () => {
    const r = await api("POST", path(current.id) + "/test");
    await loadMessages();
    return "Test ping: " + r.outcome + (r.status ? " " + r.status : "") + (r.error ? " (" + r.error + ")" : "");
  });
  on("reveal-secret", "Revealing", async () => {
    const r = await api("GET", path(current.id) + "/secret");
    $("secret").textContent = "Signing secret: " + r.secret;
  });
  on("rotate-secret", "Rotating the secret", async () => {
    const r = await api("POST", path(current.id) + "/rotate-secret");
    $("secret").textContent = "New signing secret: " + r.secret + " (the old one is accepted until " + time(r.previous_secret_valid_until_ms) + ")";
    return "Secret rotated";
  });
  on("retry-failed", "Retrying everything failed", async () => {
    const r = await api("POST", path(current.id) + "/retry");
    await loadMessages();
    return r.due_now + " waiting retries are due now";
  });
  on("redrive", "Redriving dead letters", async () => {
    const r = await api("POST", path(current.id) + "/dead-letters/redrive");
    await loadMessages();
    return r.redriven + " dead letters redriven";
  });
  $("replay-stamp-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("Replaying", async () => {
      await api("POST", path(current.id) + "/replay", { from: parseStamps($("replay-stamp").value) });
      await loadMessages();
      return "Replay started";
    });
  });
  $("replay-time-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("Replaying", async () => {
      await api("POST", path(current.id) + "/replay", { from_time: $("replay-time").value + "Z" });
      await loadMessages();
      return "Replay started";
    });
  });
  $("log-search").addEventListener("submit", (ev) => { ev.preventDefault(); act("Searching", loadMessages); });
  $("log-older").addEventListener("click", () => act("Older messages", () => loadMessages(true)));
}

// The event catalog -----------------------------------------------------------

// An example value for a JSON Schema: what the catalog shows as a payload.
function example(schema, name) {
  if (!schema || typeof schema !== "object") return null;
  if (schema.const !== undefined) return schema.const;
  if (schema.examples && schema.examples.length) return schema.examples[0];
  if (schema.enum && schema.enum.length) return schema.enum[0];
  let type = schema.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null") || "null";
  if (!type && schema.anyOf) return example(schema.anyOf.find((s) => s.type !== "null") || schema.anyOf[0], name);
  switch (type) {
    case "object": {
      const o = {};
      for (const [k, v] of Object.entries(schema.properties || {})) o[k] = example(v, k);
      return o;
    }
    case "array": return [example(schema.items, name)];
    case "integer": case "number": return 1;
    case "boolean": return true;
    case "null": return null;
    case "string": return schema.format === "date-time" ? "2026-01-01T00:00:00Z" : (name || "text");
    default: return null;
  }
}

async function loadCatalog() {
  show("catalog");
  const { event_types } = await api("GET", "/v1/event-types");
  const out = $("catalog");
  out.replaceChildren();
  let resource = null;
  for (const t of event_types) {
    const name = t.source + "/" + t.resource;
    if (name !== resource) {
      resource = name;
      out.append(el("h3", { text: name }));
    }
    out.append(el("details", { "data-type": t.type },
      el("summary", { text: t.type + " (" + t.record_schema + " schema)" }),
      el("pre", { text: JSON.stringify(example(t.schema), null, 2) })));
  }
  if (!event_types.length) out.append(el("p", { text: "No event types." }));
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  if (takeToken()) act("Loading", loadEndpoints);
  else showSignin();
});
