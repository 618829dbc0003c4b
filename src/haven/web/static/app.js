// haven dashboard: plain ES module, no build step. Reads /api/v1/*, follows the SSE stream,
// and writes intents (migrate, drain, resume, start, stop, acknowledge; a service's move, start,
// stop) with the admin token.

import { fmtAge, fmtCopy, fmtMiB } from "./format.js";

const API = "/api/v1";
const REFRESH_MS = 1000;
const VM_STATES = ["running", "starting", "migrating", "stopping", "recovering", "error", "stopped", "pending"];
const $ = (sel) => document.querySelector(sel);

const state = { summary: null, hosts: [], vms: [], services: [], token: null, role: null, roleToken: null,
  lastEvent: null, streamAbort: null };

// -- DOM helper -----------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "style") el.setAttribute("style", value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// -- token and HTTP ----------------------------------------------------------------------------
function initToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("haven-token", params.get("token"));
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
  }
  state.token = sessionStorage.getItem("haven-token");
}

// One sign-in dialog at a time: every call that finds no token (the first refresh makes several at
// once) waits for the same answer, and a late refusal does not clear what the operator is typing.
let signIn = null;

function askToken(message = "") {
  if (signIn) {
    if (message) $("#token-error").textContent = message;
    return signIn;
  }
  $("#token-error").textContent = message;
  const dialog = $("#token-dialog");
  $("#token-input").value = "";
  if (!dialog.open) dialog.showModal();
  signIn = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const token = $("#token-input").value.trim();
      if (token) { sessionStorage.setItem("haven-token", token); state.token = token; }
      signIn = null;
      resolve(state.token);
    }, { once: true });
  });
  return signIn;
}

class ApiError extends Error {
  constructor(status, body) {
    const problems = (body && body.problems) || [];
    const detail = (body && body.detail) || `HTTP ${status}`;
    super([detail, ...problems].join(" — "));
    Object.assign(this, { status, detail, problems });
  }
}

// The operator changed their mind in a follow-up dialog: nothing was requested.
class Cancelled extends Error {}

async function api(path, options = {}) {
  if (!state.token) await askToken();
  const token = state.token;
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    ...options, headers: { Authorization: `Bearer ${token}`, ...(options.headers || {}) },
  });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401 || (response.status === 403 && !options.method)) {
    // Only the token this request carried is refused; another may have been entered meanwhile.
    if (state.token === token) {
      sessionStorage.removeItem("haven-token");
      state.token = null;
      await askToken(body && body.detail ? `The token was refused: ${body.detail}.` : "Please sign in.");
    }
    return api(path, options);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

const post = (path, body) => api(path, {
  method: "POST", body: body === undefined ? undefined : JSON.stringify(body),
  headers: body === undefined ? {} : { "Content-Type": "application/json" },
});

// What the token may do, asked once per token: a read-only session is shown no write buttons
// (the API would refuse them with 403 anyway).
async function loadRole() {
  if (state.role && state.roleToken === state.token) return;
  const session = await api("session");
  Object.assign(state, { role: session.role, roleToken: state.token });
}
const canWrite = () => state.role === "admin";

function renderRole() {
  document.body.dataset.role = state.role || "";
  $("#role").hidden = state.role !== "read";
}

// -- the pet ----------------------------------------------------------------------------------
const MOODS = {
  content: { label: "Content", color: "#4ade80", dark: "#15803d" },
  worried: { label: "Worried", color: "#fbbf24", dark: "#b45309" },
  ill: { label: "Ill", color: "#a3b18a", dark: "#4b5320" },
  unknown: { label: "…", color: "#cbd5e1", dark: "#64748b" },
};

function petSvg(mood) {
  const m = MOODS[mood] || MOODS.unknown;
  const eyes = {
    content: `<path d="M25 30 q4 -5 8 0 M41 30 q4 -5 8 0" stroke="#1f2937" stroke-width="2.5" fill="none" stroke-linecap="round"/>`,
    worried: `<circle cx="29" cy="30" r="3.2" fill="#1f2937"/><circle cx="45" cy="30" r="3.2" fill="#1f2937"/>
              <path d="M24 23 l9 3 M50 23 l-9 3" stroke="#1f2937" stroke-width="2" stroke-linecap="round"/>`,
    ill: `<path d="M25 31 q4 3 8 0 M41 31 q4 3 8 0" stroke="#1f2937" stroke-width="2.5" fill="none" stroke-linecap="round"/>`,
    unknown: `<circle cx="29" cy="30" r="3" fill="#1f2937"/><circle cx="45" cy="30" r="3" fill="#1f2937"/>`,
  }[mood] || "";
  const mouth = {
    content: `<path d="M29 40 q8 8 16 0" stroke="#1f2937" stroke-width="2.5" fill="#f87171" stroke-linecap="round"/>`,
    worried: `<path d="M29 43 q4 -4 8 0 t8 0" stroke="#1f2937" stroke-width="2.5" fill="none" stroke-linecap="round"/>`,
    ill: `<path d="M30 45 q7 -6 14 0" stroke="#1f2937" stroke-width="2.5" fill="none" stroke-linecap="round"/>`,
    unknown: `<path d="M31 42 h12" stroke="#1f2937" stroke-width="2.5" stroke-linecap="round"/>`,
  }[mood] || "";
  const extra = {
    content: `<circle cx="22" cy="38" r="3.5" fill="#f9a8d4" opacity=".8"/><circle cx="52" cy="38" r="3.5" fill="#f9a8d4" opacity=".8"/>`,
    worried: `<path d="M56 18 q3 5 0 8 q-3 -3 0 -8z" fill="#60a5fa"/>`,
    ill: `<rect x="50" y="40" width="16" height="4" rx="2" fill="#f8fafc" stroke="#64748b" transform="rotate(-25 50 42)"/>
          <circle cx="51" cy="43" r="2.6" fill="#ef4444"/>
          <text x="52" y="14" font-size="9" fill="#475569" font-family="sans-serif">z</text>`,
    unknown: "",
  }[mood] || "";
  return `<svg viewBox="0 0 74 64" role="img" aria-label="cluster pet: ${m.label}">
    <ellipse cx="37" cy="60" rx="20" ry="3" fill="#000" opacity=".12"/>
    <path d="M37 6 C55 6 64 20 64 36 C64 52 52 58 37 58 C22 58 10 52 10 36 C10 20 19 6 37 6z"
          fill="${m.color}" stroke="${m.dark}" stroke-width="2"/>
    <path d="M30 7 q-2 -5 -6 -4 M44 7 q2 -5 6 -4" stroke="${m.dark}" stroke-width="2" fill="none" stroke-linecap="round"/>
    ${eyes}${mouth}${extra}</svg>`;
}

function renderPet(protection) {
  const mood = protection ? protection.mood : "unknown";
  const pet = $("#pet");
  if (pet.dataset.mood !== mood) { pet.dataset.mood = mood; pet.innerHTML = petSvg(mood); }
  $("#pet-card").dataset.mood = mood;
  const moodEl = $("#mood");
  moodEl.className = `mood ${mood}`;
  moodEl.textContent = protection ? `${MOODS[mood].label} · ${protection.level}` : "…";
  $("#pet-reason").textContent = protection ? protection.reason : "";
}

// -- rendering ------------------------------------------------------------------------------
function bar(label, used, total, reserve = 0) {
  const pct = total ? Math.min(100, (used / total) * 100) : 0;
  const level = pct >= 100 ? "full" : pct >= 85 ? "high" : "";
  const reservePct = total ? Math.min(100, (reserve / total) * 100) : 0;
  return h("div", { class: "bar-row" }, h("span", {}, label),
    h("div", { class: "bar", role: "meter", "aria-label": label, "aria-valuenow": used, "aria-valuemax": total },
      h("div", { class: `fill ${level}`, style: `width:${pct.toFixed(1)}%` }),
      reserve ? h("div", { class: "reserve", style: `width:${reservePct.toFixed(1)}%`, title: `${fmtMiB(reserve)} reserved for the host` }) : null),
    h("span", { class: "value" }, label === "Memory" ? `${fmtMiB(used)} / ${fmtMiB(total)}` : `${used} / ${total}`));
}

const vmByName = () => Object.fromEntries(state.vms.map((vm) => [vm.name, vm]));

function renderHosts() {
  const vms = vmByName();
  const container = $("#hosts");
  container.replaceChildren(...state.hosts.map((host) => {
    const chips = host.vms.map((name) => {
      const vm = vms[name];
      const incoming = vm && vm.host !== host.name;
      const st = vm ? vm.state : "pending";
      return h("span", { class: `vm-chip s-${st}${incoming ? " incoming" : ""}`, "data-vm": name, "data-state": st,
        title: `${name}: ${st}${incoming ? ` (arriving from ${vm.host})` : ""}` }, name);
    });
    const op = operations.hosts[host.name];
    const action = !canWrite() ? null : host.maintenance_requested
      ? h("button", { class: "ghost small", "data-action": "resume", onclick: () => confirmResume(host) }, "Resume")
      : h("button", { class: "ghost small", "data-action": "drain", onclick: () => confirmDrain(host),
          disabled: host.state !== "online" }, "Drain");
    return h("article", { class: "card host", "data-host": host.name, "data-state": host.state },
      h("div", { class: "host-head" },
        h("div", { class: "host-name" }, host.name, host.manager ? h("span", { class: "badge manager", title: "runs the active manager" }, "manager") : null),
        // The state's own word, as the CLI and the events say it; a drain in progress is a note.
        h("span", { class: `badge state-${host.state}`, "data-role": "host-state",
          title: host.draining ? "VMs moving out" : null }, host.state)),
      bar("Memory", host.memory_mib.used, host.memory_mib.total, host.memory_reserve_mib),
      bar("vCPUs", host.vcpus.used, host.vcpus.total),
      fenceBadge(host),
      h("div", { class: "vm-chips" }, chips.length ? chips : h("span", { class: "empty" }, "no VMs")),
      op ? h("div", { class: "progress" }, h("div", { class: "fill", style: `width:${op.pct}%` })) : null,
      h("div", { class: "host-foot" }, h("span", {}, host.reason || host.spec.address), action));
  }));
}

// The power-fence device's last check by the leading manager: a failing one is seen before it is needed.
function fenceBadge(host) {
  const check = host.fence_device;
  const [kind, text] = !check ? ["none", "none"] : check.ok ? ["ok", "ok"] : ["failing", `failing: ${check.detail}`];
  return h("div", { class: "fence-row" }, h("span", { class: `badge fence-${kind}`, "data-role": "fence-device",
    title: check ? check.detail : "no fence device: recovery waits for lease expiry + grace" }, `fence device: ${text}`));
}

// The write actions a VM offers now; none at all for a read-only session.
function vmActions(vm) {
  const actions = [];
  if (!canWrite()) return actions;
  // A service's member is pinned to its host: the service moves between members, the member never does.
  const member = state.services.some((service) => service.spec.members.includes(vm.name));
  if (vm.state === "running" && !member) actions.push(h("button", { class: "ghost small", "data-action": "migrate", onclick: () => confirmMigrate(vm) }, "Migrate"));
  if (vm.state === "error") actions.push(h("button", { class: "danger small", "data-action": "acknowledge", onclick: () => confirmSimple(vm, "acknowledge") }, "Acknowledge"));
  if (vm.desired === "running" && vm.state !== "error") actions.push(h("button", { class: "ghost small", "data-action": "stop", onclick: () => confirmSimple(vm, "stop") }, "Stop"));
  if (vm.desired === "stopped") actions.push(h("button", { class: "ghost small", "data-action": "start", onclick: () => confirmSimple(vm, "start") }, "Start"));
  return actions;
}

// A VM on a replicated pool: one small badge per copy (in sync / syncing 40% / stale for 5 min).
function replicaBadges(vm) {
  const r = vm.replicas;
  if (!r || !r.copies.length) return null;
  const many = r.copies.length > 1;
  return h("span", { class: "replicas", "data-role": "replicas", "data-protected": String(r.protected) },
    ...r.copies.map((c) => {
      const age = c.age_s === null || c.age_s === undefined ? "" : fmtAge(c.age_s);
      const text = c.state === "stale" && age ? `stale for ${age}` : fmtCopy(c);
      const title = `copy of disk ${c.disk} on ${c.host}: ${c.state} since t=${c.since.toFixed(1)}${age ? ` (${age} ago)` : ""}` +
        `${c.reason ? `: ${c.reason}` : ""}; primary ${r.primary}${r.write_without_replica ? "; writes without replica" : ""}`;
      return h("span", { class: `badge replica r-${c.state}`, "data-role": "replica", "data-state": c.state, title },
        `${many ? `disk ${c.disk} ` : ""}${c.host}: ${text}`);
    }));
}

function renderVms() {
  const rows = state.vms.map((vm) => {
    const actions = vmActions(vm);
    return h("tr", { "data-vm": vm.name },
      h("td", {}, h("strong", {}, vm.name), vm.ha ? null : h("span", { class: "muted" }, " (not HA)"), replicaBadges(vm)),
      h("td", {}, h("span", { class: `pill s-${vm.state}`, title: vm.reason || vm.state }, vm.state)),
      h("td", { "data-label": "on" }, vm.host || "–"),
      h("td", { class: "num", "data-label": "memory" }, fmtMiB(vm.spec.memory_mib)),
      h("td", { class: "num", "data-label": "vCPUs" }, vm.spec.vcpus),
      h("td", { class: "num", "data-label": "priority" }, vm.spec.priority),
      h("td", { class: "actions" }, actions));
  });
  $("#vms tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No VMs declared."))]));
}

// -- services: each with its members (pinned to their hosts), the active one, the floating IP --------
// A member's condition is the manager's judgement of it (healthy, booting, QEMU gone, ...); what it
// holds (disk, IP, application) is its host agent's last report.
function memberItem(service, m) {
  const role = m.active ? "active" : service.standbys.includes(m.name) ? "standby" : "out";
  const holds = [m.holds_disk && "disk", m.holds_ip && "IP", m.app_started && "app"].filter(Boolean);
  return h("li", { class: `member ${role}`, "data-member": m.name, "data-role": role, "data-condition": m.condition },
    h("span", { class: "member-name" }, m.active ? h("span", { class: "star", "aria-label": "active", title: "active: runs the service" }, "★") : null, m.name),
    h("span", { class: "muted" }, ` on ${m.host || "?"}`),
    h("span", { class: `cond c-${m.condition.replace(/ /g, "-")}`, title: m.detail || m.condition }, m.condition),
    holds.length ? h("span", { class: "holds", title: "held by this member" }, holds.join(" · ")) : null);
}

function serviceActions(service) {
  if (!canWrite()) return [];
  const actions = [];
  if (service.phase === "running") actions.push(h("button", { class: "ghost small", "data-action": "move", onclick: () => confirmMove(service) }, "Move"));
  if (service.desired === "running") actions.push(h("button", { class: "ghost small", "data-action": "stop", onclick: () => confirmService(service, "stop") }, "Stop"));
  else actions.push(h("button", { class: "ghost small", "data-action": "start", onclick: () => confirmService(service, "start") }, "Start"));
  return actions;
}

function renderServices() {
  $("#services-section").hidden = state.services.length === 0;
  $("#services").replaceChildren(...state.services.map((service) => {
    const foot = service.reason || (service.active ? `standby: ${service.standbys.join(", ") || "none healthy"}` : `desired: ${service.desired}`);
    return h("article", { class: "card service", "data-service": service.name, "data-phase": service.phase },
      h("div", { class: "host-head" },
        h("div", { class: "host-name" }, service.name),
        h("span", { class: `badge phase-${service.phase}`, "data-role": "service-phase" }, service.phase)),
      h("div", { class: "service-ip" }, "floating IP ", h("strong", { "data-role": "floating-ip" }, service.floating_ip),
        service.active ? h("span", { class: "muted" }, ` on ${service.active}`) : null),
      h("ul", { class: "members" }, service.members.map((m) => memberItem(service, m))),
      h("div", { class: "host-foot" }, h("span", { class: "service-reason", title: foot }, foot),
        h("span", { class: "service-actions" }, serviceActions(service))));
  }));
}

function renderSummary() {
  const s = state.summary;
  if (!s) return;
  $("#cluster-name").textContent = s.cluster;
  $("#manager").textContent = `manager: ${s.manager || "none"}`;
  $("#clock").textContent = s.simulation ? `sim t=${s.time.toFixed(1)} s ×${s.simulation.speed}` : `t=${s.time.toFixed(1)}`;
  const hostsTotal = Object.values(s.hosts).reduce((a, b) => a + b, 0);
  const vmsTotal = Object.values(s.vms).reduce((a, b) => a + b, 0);
  $("#stat-hosts").textContent = `${s.hosts.online} / ${hostsTotal}`;
  $("#stat-vms").textContent = `${s.vms.running + s.vms.migrating} / ${vmsTotal}`;
  const servicesDown = (s.services && s.services.down) || 0;
  $("#stat-ha").textContent = String(s.vms.error + s.vms.recovering + s.hosts.lost + s.hosts.fenced + s.hosts.offline + servicesDown);
  $("#state-legend").replaceChildren(...VM_STATES.filter((st) => s.vms[st]).map((st) =>
    h("span", {}, h("i", { class: `swatch s-${st}` }), `${st} ${s.vms[st]}`)));
  renderPet(s.protection);
}

function renderAll() { renderRole(); renderSummary(); renderHosts(); renderServices(); renderVms(); }

async function refresh() {
  try {
    const [summary, hosts, vms, services] = await Promise.all([api("summary"), api("hosts"), api("vms"),
      api("services"), loadRole()]);
    Object.assign(state, { summary, hosts, vms, services });
    renderAll();
    trackOperations();
  } catch (error) {
    setLive(false, error.message);
  }
}

let refreshTimer = null;
function refreshSoon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refresh, 120); }

// -- events -----------------------------------------------------------------------------------
// Events are data (kind, old/new state, ...): what needs an operator's eye is read from the fields.
const ALERT_KINDS = new Set(["self_fence", "killed", "watchdog_fired", "lease_lost", "lease_expired", "fault",
  "action_failed", "migration_aborted", "migration_refused", "manager_deposed", "power_fence"]);
const ALERT_STATES = new Set(["lost", "fenced", "recovering", "error", "failing"]);  // failing: a fence device

function addEvents(events, fresh) {
  const list = $("#events");
  for (const e of events) {
    const alert = ALERT_KINDS.has(e.kind) || ALERT_STATES.has(e.new);
    const cls = [fresh ? "fresh" : "", alert ? "alert" : ""].filter(Boolean).join(" ");
    list.prepend(h("li", { class: cls, "data-id": e.id, "data-kind": e.kind, "data-subject": e.subject },
      h("span", { class: "t" }, `${e.t.toFixed(2)}`),
      h("span", {}, h("span", { class: "subject" }, e.subject), h("span", { class: "source" }, e.source),
        h("div", {}, e.message))));
    state.lastEvent = e.id;
  }
  while (list.children.length > 200) list.lastChild.remove();
}

function setLive(on, why = "") {
  const el = $("#live");
  el.className = `live ${on ? "on" : "off"}`;
  $("#live-text").textContent = on ? "live" : "reconnecting";
  el.title = why || (on ? "receiving live events" : "");
}

async function follow() {
  // fetch() instead of EventSource: EventSource cannot send the Authorization header.
  for (;;) {
    const abort = new AbortController();
    state.streamAbort = abort;
    try {
      const url = `${API}/events/stream${state.lastEvent ? `?after=${encodeURIComponent(state.lastEvent)}` : ""}`;
      const response = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` }, signal: abort.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handleMessage(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (error) {
      setLive(false, error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function handleMessage(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (kind === "event" && data) { addEvents([JSON.parse(data)], true); refreshSoon(); }
  else if (kind === "store" && data) setLive(JSON.parse(data).reachable, "store unreachable");
}

// -- actions, confirmation, progress --------------------------------------------------------
const operations = { vms: {}, hosts: {}, services: {} };

function confirmDialog(title, text, fields = [], { ok = "Confirm", danger = false } = {}) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-fields").replaceChildren(...fields);
  $("#confirm-ok").textContent = ok;
  $("#confirm-ok").className = danger ? "danger" : "primary";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function toast(title) {
  const el = h("div", { class: "toast" }, h("div", { class: "title" }, title),
    h("div", { class: "progress indeterminate" }, h("div", { class: "fill" })), h("div", { class: "detail" }, "requested…"));
  $("#toasts").append(el);
  return {
    progress(pct, detail) {
      const p = el.querySelector(".progress");
      p.classList.toggle("indeterminate", pct === null);
      if (pct !== null) p.firstChild.style.width = `${pct}%`;
      el.querySelector(".detail").textContent = detail;
    },
    finish(ok, detail) {
      el.classList.add(ok ? "ok" : "fail");
      el.querySelector(".progress").remove();
      el.querySelector(".detail").textContent = detail;
      setTimeout(() => el.remove(), ok ? 6000 : 12000);
    },
    cancel(detail) {
      el.classList.add("cancelled");
      el.querySelector(".progress").remove();
      el.querySelector(".detail").textContent = detail;
      setTimeout(() => el.remove(), 4000);
    },
  };
}

async function run(title, request, track) {
  const t = toast(title);
  try {
    const answer = await request(t);
    t.progress(null, answer.message);
    if (track) {
      // The operation's clock starts now: read the cluster time fresh, not from the last refresh.
      const start = { t0: (await api("summary")).time, wall0: Date.now() };
      track(answer, t, start);
    } else t.finish(true, answer.message);
    refreshSoon();
  } catch (error) {
    if (error instanceof Cancelled) t.cancel(error.message);
    else t.finish(false, error.message);
  }
}

const now = () => (state.summary ? state.summary.time : 0);
const seconds = (op) => `${(now() - op.t0).toFixed(1)} s cluster time, ${((Date.now() - op.wall0) / 1000).toFixed(1)} s here`;

async function confirmMigrate(vm) {
  const targets = state.hosts.filter((host) => host.name !== vm.host && host.state === "online");
  const kinds = vm.spec.migratable ? ["live", "quick", "cold"] : ["quick", "cold"];
  const select = h("select", { id: "migrate-target" }, h("option", { value: "" }, "best host (scheduler decides)"),
    targets.map((host) => h("option", { value: host.name }, `${host.name} — ${fmtMiB(host.memory_mib.total - host.memory_mib.used)} free`)));
  const fields = [
    h("label", {}, "Kind"),
    h("div", { class: "segmented" }, kinds.map((kind, i) => h("label", {}, h("input", { type: "radio", name: "kind", value: kind, checked: i === 0 }), kind))),
    h("div", { class: "hint" }, "live: no visible outage · quick: save, move, restore · cold: stop and boot"),
    h("label", { for: "migrate-target" }, "Target"), select,
  ];
  if (!(await confirmDialog(`Migrate ${vm.name}`, `${vm.name} runs on ${vm.host}. Where should it go?`, fields))) return;
  const kind = document.querySelector('#confirm-fields input[name="kind"]:checked').value;
  const target = select.value || null;
  run(`Migrating ${vm.name} (${kind})`, () => post(`vms/${vm.name}/migrate`, { kind, target }), (answer, t, start) => {
    operations.vms[vm.name] = { id: answer.request_id, from: vm.host, kind, ...start, toast: t, seen: false };
  });
}

async function confirmSimple(vm, action) {
  const text = { stop: `Stop ${vm.name}? It will not be restarted until started again.`,
    start: `Start ${vm.name}?`, acknowledge: `Clear the error of ${vm.name} and let the manager try again?` }[action];
  if (!(await confirmDialog(`${action[0].toUpperCase()}${action.slice(1)} ${vm.name}`, text))) return;
  run(`${action} ${vm.name}`, () => post(`vms/${vm.name}/${action}`));
}

async function confirmMove(service) {
  const others = service.members.filter((m) => !m.active);
  const select = h("select", { id: "move-target" }, h("option", { value: "" }, "best other member (the manager decides)"),
    others.map((m) => h("option", { value: m.name, disabled: m.condition !== "healthy" }, `${m.name} on ${m.host} — ${m.condition}`)));
  const fields = [h("label", { for: "move-target" }, "Target"), select,
    h("div", { class: "hint" }, "The active member stops the application and releases the floating IP and the data disk; then the target takes them.")];
  if (!(await confirmDialog(`Move ${service.name}`, `${service.name} runs on ${service.active}. Where should it go?`, fields))) return;
  const target = select.value || null;
  run(`Moving ${service.name}`, () => post(`services/${service.name}/move`, { target }), (answer, t, start) => {
    operations.services[service.name] = { id: answer.request_id, from: service.active, ...start, toast: t };
  });
}

async function confirmService(service, action) {
  const text = { stop: `Stop ${service.name}? The application stops and releases ${service.floating_ip}; it no longer fails over. Its member VMs keep running.`,
    start: `Start ${service.name} on its best healthy member?` }[action];
  if (!(await confirmDialog(`${action[0].toUpperCase()}${action.slice(1)} ${service.name}`, text))) return;
  run(`${action} ${service.name}`, () => post(`services/${service.name}/${action}`));
}

async function confirmDrain(host) {
  const text = `Put ${host.name} in maintenance? Its ${host.vms.length} VM(s) move to other hosts and it takes no new VMs until resumed.`;
  if (!(await confirmDialog(`Drain ${host.name}`, text))) return;
  run(`Draining ${host.name}`, (t) => drainOrAsk(host, t), (answer, t, start) => {
    operations.hosts[host.name] = { total: Math.max(1, host.vms.length), pct: 0, ...start, toast: t };
  });
}

// The API refuses (409) a drain that could not finish — a VM with nowhere to go, a host that is
// down — and says why; the operator reads the reasons and may drain anyway (`force`).
async function drainOrAsk(host, t) {
  try {
    return await post(`hosts/${host.name}/drain`);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 409) throw error;
    t.progress(null, "refused: the drain would not finish");
    const problems = error.problems.length
      ? [h("ul", { id: "drain-problems", class: "problems" }, error.problems.map((line) => h("li", {}, line)))] : [];
    const anyway = await confirmDialog(`${host.name} cannot be drained cleanly`, error.detail,
      [...problems, h("div", { class: "hint" }, "Draining anyway puts the host in maintenance; what cannot move stays where it is.")],
      { ok: "Drain anyway", danger: true });
    if (!anyway) throw new Cancelled(`${host.name} was not drained`);
    return post(`hosts/${host.name}/drain`, { force: true });
  }
}

async function confirmResume(host) {
  if (!(await confirmDialog(`Resume ${host.name}`, `End maintenance on ${host.name}? It takes VMs again.`))) return;
  run(`Resuming ${host.name}`, () => post(`hosts/${host.name}/resume`));
}

function trackOperations() {
  const vms = vmByName();
  for (const [name, op] of Object.entries(operations.vms)) {
    const vm = vms[name];
    if (!vm) { op.toast.finish(false, `${name} disappeared`); delete operations.vms[name]; continue; }
    if (vm.request && vm.request.id === op.id) { op.toast.progress(null, "waiting for the manager…"); continue; }
    if (vm.state === "migrating") {
      op.seen = true;
      const target = vm.placement && vm.placement.migration ? vm.placement.migration.target : "?";
      op.toast.progress(null, `${op.kind} migration ${op.from} → ${target}…`);
    } else if (vm.state === "running" && (vm.host !== op.from || op.seen)) {
      const ok = vm.host !== op.from;
      op.toast.finish(ok, ok ? `${name}: ${op.from} → ${vm.host} in ${seconds(op)}` : `${name} stayed on ${op.from}: ${vm.reason || "migration did not complete"}`);
      delete operations.vms[name];
    } else if (vm.state === "error") {
      op.toast.finish(false, `${name} is in error: ${vm.reason}`);
      delete operations.vms[name];
    }
  }
  for (const [name, op] of Object.entries(operations.services)) {
    const service = state.services.find((x) => x.name === name);
    if (!service) { op.toast.finish(false, `${name} disappeared`); delete operations.services[name]; continue; }
    if (service.request && service.request.id === op.id) { op.toast.progress(null, "waiting for the manager…"); continue; }
    if (service.phase === "moving") op.toast.progress(null, `moving ${op.from} → ${service.active}…`);
    else if (service.phase === "running" && service.active !== op.from) {
      op.toast.finish(true, `${name}: ${op.from} → ${service.active} in ${seconds(op)}`);
      delete operations.services[name];
    } else if (service.phase === "running" && service.state && service.state.request_id === op.id) {
      op.toast.finish(false, `${name} stayed on ${op.from}: the manager did not move it (see its events)`);
      delete operations.services[name];
    } else if (service.phase === "down" || service.desired !== "running") {
      op.toast.finish(false, `${name} is ${service.phase}${service.reason ? `: ${service.reason}` : ""}`);
      delete operations.services[name];
    }
  }
  for (const [name, op] of Object.entries(operations.hosts)) {
    const host = state.hosts.find((x) => x.name === name);
    if (!host) { delete operations.hosts[name]; continue; }
    const left = host.vms.length;
    op.pct = Math.round(((op.total - Math.min(left, op.total)) / op.total) * 100);
    if (!host.maintenance_requested) { op.toast.finish(false, "maintenance was cancelled"); delete operations.hosts[name]; }
    else if (left === 0 && host.state === "maintenance") {
      op.toast.finish(true, `${name} drained in ${seconds(op)}`);
      delete operations.hosts[name];
    } else op.toast.progress(op.pct, `${left} VM(s) still on ${name}`);
  }
  renderHosts();
}

// -- start --------------------------------------------------------------------------------------
async function main() {
  initToken();
  $("#signout").addEventListener("click", async () => {
    sessionStorage.removeItem("haven-token");
    state.token = null;
    await askToken();
    refresh();
  });
  renderPet(null);
  await refresh();
  try {
    const page = await api("events?limit=100");
    addEvents(page.events, false);
  } catch (error) { setLive(false, error.message); }
  setInterval(refresh, REFRESH_MS);
  follow();
}

main();
