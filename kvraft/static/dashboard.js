// kvraft dashboard: polls /status of this node every second and draws it.
// No framework, no build step; every value from the server goes in through textContent.
"use strict";

const POLL_MS = 1000;
const STALE_AFTER_MS = 3500;
const SVG_NS = "http://www.w3.org/2000/svg";

let lastOk = 0;
let updates = 0;

function $(id) { return document.getElementById(id); }

function text(id, value) {
  const el = $(id);
  const shown = value === null || value === undefined ? "?" : String(value);
  if (el.textContent !== shown) el.textContent = shown;
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function el(tag, attrs, textValue) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (textValue !== undefined && textValue !== null) node.textContent = String(textValue);
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms ago`;
  if (seconds < 120) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function rate(value) {
  if (!value) return "0";
  return value >= 100 ? Math.round(value).toLocaleString() : value.toFixed(1);
}

// Leader view: replication state per follower; otherwise only our own link is known.
function linkState(member, status) {
  if (member.recent_active === false) return "inactive";
  if (member.state) return member.state;
  if (status.node.role !== "leader" && member.self) return "replicate";
  return "unknown";
}

function drawTopology(status) {
  const root = $("topology");
  while (root.firstChild) root.removeChild(root.firstChild);
  const members = status.members.slice();
  const leaderId = status.node.leader;
  // The leader on top, the others clockwise in name order.
  members.sort((a, b) => (b.id === leaderId) - (a.id === leaderId) || a.id.localeCompare(b.id));
  const cx = 320, cy = 178, rx = 220, ry = 100, r = 42;
  const pos = {};
  members.forEach((m, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / members.length;
    pos[m.id] = members.length === 1 ? [cx, cy] : [cx + rx * Math.cos(angle), cy + ry * Math.sin(angle)];
  });
  const links = svg("g", {}, root);
  const nodes = svg("g", {}, root);
  if (leaderId && pos[leaderId]) {
    const [lx, ly] = pos[leaderId];
    for (const m of members) {
      if (m.id === leaderId) continue;
      const [x, y] = pos[m.id];
      const state = linkState(m, status);
      svg("line", { x1: lx, y1: ly, x2: x, y2: y, class: `link ${state}`, "data-link": m.id }, links);
      const label = svg("text", { x: (lx + x) / 2, y: (ly + y) / 2 - 6, class: "linklabel" }, links);
      label.textContent = m.lag === null || m.lag === undefined
        ? (m.self ? "following" : "")
        : (m.lag === 0 ? "in sync" : `${m.lag} behind`);
    }
  }
  for (const m of members) {
    const [x, y] = pos[m.id];
    const g = svg("g", { class: `member ${m.role}`, "data-member": m.id, "data-role": m.role }, nodes);
    if (m.self) svg("circle", { cx: x, cy: y, r: r + 8, class: "here" }, g);
    svg("circle", { cx: x, cy: y, r: r, class: "body" }, g);
    const name = svg("text", { x: x, y: y + 2, class: "name" }, g);
    name.textContent = m.id;
    const sub = svg("text", { x: x, y: y + 18, class: "sub" }, g);
    sub.textContent = m.term !== null && m.term !== undefined ? `${m.role} · t${m.term}` : m.role;
    if (m.role === "leader") {
      const crown = svg("text", { x: x, y: y - r - 13, class: "crown" }, g);
      crown.textContent = "LEADER";
    }
  }
}

function drawSpark(history) {
  const root = $("spark");
  while (root.firstChild) root.removeChild(root.firstChild);
  if (history.length < 3) return;
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = history[i][0] - history[i - 1][0] || 1;
    rates.push([history[i][0], (history[i][1] - history[i - 1][1]) / dt,
                (history[i][2] - history[i - 1][2]) / dt]);
  }
  const t0 = rates[0][0], t1 = rates[rates.length - 1][0] || t0 + 1;
  const top = Math.max(1, ...rates.map((p) => Math.max(p[1], p[2])));
  const pts = (k) => rates.map((p) => `${((p[0] - t0) / (t1 - t0 || 1)) * 300},${78 - (p[k] / top) * 74}`).join(" ");
  svg("polyline", { points: pts(1), class: "commit" }, root);
  svg("polyline", { points: pts(2), class: "apply" }, root);
}

function cell(row, value, cls) {
  const td = el("td", cls ? { class: cls } : {}, value);
  row.appendChild(td);
  return td;
}

function drawMembers(status) {
  const body = $("member-rows");
  const last = status.node.role === "leader" ? status.node.last_index : null;
  const rows = [];
  for (const m of status.members) {
    const tr = el("tr", { "data-row": m.id, class: m.self ? "self" : "" });
    cell(tr, m.id);
    cell(tr, m.role, `role ${m.role}`);
    cell(tr, m.term === null ? "?" : m.term, m.term === null ? "unknown" : "");
    cell(tr, m.address || "?");
    const repl = cell(tr, "");
    if (m.match !== null && last) {
      const bar = el("div", { class: m.lag ? "bar behind" : "bar", title: `match ${m.match} / ${last}` });
      const fill = el("span");
      fill.style.width = `${Math.min(100, (100 * m.match) / Math.max(1, last))}%`;
      bar.appendChild(fill);
      repl.appendChild(bar);
      repl.appendChild(el("small", {}, ` match ${m.match} · next ${m.next ?? "?"}`));
    } else if (m.match !== null) {
      repl.textContent = `holds up to ${m.match}`;
    } else {
      repl.textContent = "known to the leader";
      repl.className = "unknown";
    }
    cell(tr, m.lag === null ? "?" : m.lag, m.lag === null ? "unknown" : "");
    cell(tr, m.self ? "-" : linkState(m, status));
    cell(tr, m.self ? "-" : ago(m.last_contact_s));
    const links = cell(tr, "");
    if (!m.self) {
      links.appendChild(el("span", { class: m.connected_to ? "up" : "down" }, m.connected_to ? "→ up" : "→ down"));
      links.appendChild(document.createTextNode("  "));
      links.appendChild(el("span", { class: m.connected_from ? "up" : "down" }, m.connected_from ? "← up" : "← down"));
    } else {
      links.textContent = "-";
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function drawEvents(status) {
  const list = $("events");
  const items = (status.events || []).slice().reverse().map((ev) => {
    const li = el("li", { "data-kind": ev.kind });
    li.appendChild(el("time", {}, ago(status.time - ev.time)));
    li.appendChild(el("span", { class: `kind ${ev.kind}` }, ev.kind));
    li.appendChild(el("span", { class: "term" }, `term ${ev.term}`));
    li.appendChild(el("span", {}, ev.text));
    return li;
  });
  if (!items.length) items.push(el("li", { class: "unknown" }, "nothing since this node started"));
  list.replaceChildren(...items);
}

function render(status) {
  const node = status.node;
  text("cluster", node.cluster ? `cluster ${node.cluster}` : "cluster");
  text("self-id", node.id);
  text("term", node.term);
  text("leader", node.leader || "none");
  document.title = `kvraft ${node.cluster || ""} · ${node.id} (${node.role})`;
  text("commit", node.commit_index);
  text("applied", node.applied_index);
  text("last-index", node.last_index);
  text("keys", node.keys);
  text("uptime", duration(node.uptime_s));
  text("commit-rate", rate(status.rates && status.rates.commit_per_s));
  text("apply-rate", rate(status.rates && status.rates.apply_per_s));
  drawTopology(status);
  drawSpark(status.history || []);
  drawMembers(status);
  drawEvents(status);
  let note = "";
  if (!node.leader) note = "No leader known: an election is running, or this node is cut off from a quorum.";
  else if (node.role !== "leader") note = `This node follows ${node.leader}; each follower's replication progress is known to the leader: open ${node.leader}'s dashboard for it.`;
  text("view-note", note);
  document.body.dataset.leader = node.leader || "";
  document.body.dataset.updates = String(++updates);
}

function showBanner(message) {
  const banner = $("banner");
  banner.hidden = !message;
  banner.textContent = message || "";
}

async function poll() {
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    lastOk = Date.now();
    showBanner("");
  } catch (error) {
    showBanner(`Cannot read this node's status (${error.message}); showing the last known state.`);
  }
  const fresh = Date.now() - lastOk < STALE_AFTER_MS;
  const freshness = $("freshness");
  freshness.className = fresh ? "fresh" : "stale";
  freshness.textContent = fresh ? "live" : (lastOk ? `stale since ${new Date(lastOk).toLocaleTimeString()}` : "connecting…");
  setTimeout(poll, POLL_MS);
}

poll();
