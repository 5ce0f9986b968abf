// Weir's web UI: reads the JobManager's REST API and draws the cluster, its jobs, their graphs,
// checkpoints and recoveries. Every value is set as text (never parsed as HTML).
"use strict";

const REFRESH_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

// ---- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function table(headers, rows, attrs) {
  return el("table", attrs,
    el("thead", null, el("tr", null, headers.map((h) => el("th", null, h)))),
    el("tbody", null, rows));
}

// ---- formatting --------------------------------------------------------------------------

function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1000) return `${v} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(1)} s`;
  if (v < 3600000) return `${Math.floor(v / 60000)} min ${Math.floor((v % 60000) / 1000)} s`;
  return `${Math.floor(v / 3600000)} h ${Math.floor((v % 3600000) / 60000)} min`;
}

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function count(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)} K`;
  return String(v);
}

function time(msSinceEpoch) {
  if (!msSinceEpoch) return "–";
  return new Date(msSinceEpoch).toLocaleTimeString();
}

function badge(state) {
  return el("span", { class: `badge state-${String(state).toLowerCase()}` }, state);
}

function checkpointStatus(r) {
  return String(r.status).toUpperCase();
}

// ---- REST --------------------------------------------------------------------------------

class Standby extends Error {}
class Unauthorized extends Error {}

// The cluster's token lives in this tab's session storage only. A link may carry it once as
// `#token=…`: it is stored and removed from the address at once.
const TOKEN_KEY = "weir-token";
// A token is printable ASCII without spaces (it travels in a header); anything else is
// not one, and is never stored.
function usableToken(text) {
  return /^[\x21-\x7e]{16,512}$/.test(text);
}

function takeTokenFromAddress() {
  if (location.hash.startsWith("#token=")) {
    let token = "";
    try {
      token = decodeURIComponent(location.hash.slice("#token=".length));
    } catch (e) {
      token = "";
    }
    if (usableToken(token)) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", `${location.pathname}#/`);
  }
}
takeTokenFromAddress();

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function get(path) {
  let res;
  try {
    res = await fetch(path, { headers: headers() });
  } catch (e) {
    // A stored token the browser cannot send as a header: forget it and ask again.
    if (e instanceof TypeError && sessionStorage.getItem(TOKEN_KEY)) {
      sessionStorage.removeItem(TOKEN_KEY);
      throw new Unauthorized("the stored token cannot be sent; paste it again");
    }
    throw e;
  }
  const body = await res.json().catch(() => ({}));
  if (res.status === 401) throw new Unauthorized(body.error || "this JobManager needs its token");
  if (res.status === 503 && body.leader) throw new Standby(body.error);
  if (!res.ok) throw new Error(body.error || `${path}: HTTP ${res.status}`);
  return body;
}

async function send(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers({ "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(answer.error || `${method} ${path}: HTTP ${res.status}`);
  return answer;
}

function tokenForm(message) {
  const input = el("input", { type: "password", autocomplete: "off", "data-test": "token", size: 70 });
  const form = el("form", { class: "token-form", "data-test": "token-form" },
    el("p", null, message),
    el("p", { class: "muted" }, "Paste the cluster's token: security.auth.token, or the file ",
      el("code", null, "~/.config/weir/auth-token"), " of the user who runs the JobManager. ",
      "It stays in this tab only."),
    input, " ", el("button", { type: "submit" }, "Use token"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!usableToken(token)) {
      input.setCustomValidity("a token has 16 to 512 printable characters, no spaces");
      input.reportValidity();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("main").dataset.page = "";
    refresh();
  });
  return form;
}

// ---- pages -------------------------------------------------------------------------------

function card(label, value, test) {
  return el("div", { class: "card", "data-test": test }, el("div", { class: "value" }, value),
    el("div", { class: "label" }, label));
}

function jobsTable(jobs) {
  if (jobs.length === 0) return el("p", { class: "muted" }, "No jobs yet.");
  return table(
    ["Job", "State", "Started", "Duration", "Tasks", "Restarts", "Records/s", "Last checkpoint"],
    jobs.slice().reverse().map((j) => el("tr", { "data-test": "job-row" },
      el("td", null, el("a", { href: `#/jobs/${j.id}` }, j.name), el("div", { class: "id" }, j.id)),
      el("td", null, badge(j.state)),
      el("td", null, time(j.start_ms)),
      el("td", null, ms(j.duration_ms)),
      el("td", null, `${j.tasks_running} / ${j.tasks_total}`),
      el("td", null, j.restarts),
      el("td", { class: "num" }, count(j.records_per_s)),
      el("td", null, j.last_checkpoint_age_ms == null ? "–" : `${ms(j.last_checkpoint_age_ms)} ago`))),
    { "data-test": "jobs" });
}

async function overviewPage() {
  const [o, jobs] = await Promise.all([get("/overview"), get("/jobs")]);
  return [
    el("h1", null, "Cluster"),
    el("div", { class: "cards" },
      card("TaskManagers", o.taskmanagers, "taskmanagers"),
      card("Slots free / total", `${o.slots_free} / ${o.slots_total}`, "slots"),
      card("Jobs running", o.jobs_running, "jobs-running"),
      card("Finished", o.jobs_finished),
      card("Failed", o.jobs_failed),
      card("Cancelled", o.jobs_canceled)),
    el("h2", null, "Jobs"),
    jobsTable(jobs.jobs),
  ];
}

async function taskmanagersPage() {
  const v = await get("/taskmanagers");
  const rows = v.taskmanagers.map((t) => el("tr", { "data-test": "taskmanager-row" },
    el("td", null, t.id),
    el("td", null, t.data_address),
    el("td", null, t.metrics_address || "–"),
    el("td", { class: "num" }, t.pid),
    el("td", null, ms(t.uptime_ms)),
    el("td", null, ms(t.last_heartbeat_age_ms)),
    el("td", null, slotBar(t)),
    el("td", null, t.slots_used.map((s) =>
      el("div", null, `slot ${s.slot}: `, el("a", { href: `#/jobs/${s.job}` }, s.job.slice(0, 8)),
        ` (job slot ${s.job_slot})`)))));
  const lost = v.lost.map((l) => el("tr", null,
    el("td", null, l.id), el("td", null, l.data_address), el("td", { class: "num" }, l.pid),
    el("td", null, time(l.detected_ms)), el("td", null, l.reason)));
  return [
    el("h1", null, "TaskManagers"),
    rows.length ? table(["Id", "Data address", "Metrics", "PID", "Uptime", "Heartbeat", "Slots", "Used by"],
      rows, { "data-test": "taskmanagers" }) : el("p", { class: "muted" }, "No TaskManager registered."),
    lost.length ? [el("h2", null, "Lost"), table(["Id", "Data address", "PID", "Detected", "Why"], lost)] : null,
  ];
}

function slotBar(t) {
  const used = t.slots_total - t.slots_free;
  return el("span", { class: "slots", title: `${used} of ${t.slots_total} used` },
    Array.from({ length: t.slots_total }, (_, i) => el("span", { class: i < used ? "slot used" : "slot" })),
    ` ${used} / ${t.slots_total}`);
}

// The job graph: vertices in columns by their longest distance from a source.
function graph(job) {
  const vertices = job.vertices;
  const edges = job.edges || [];
  const depth = new Map(vertices.map((v) => [v.id, 0]));
  for (let pass = 0; pass < vertices.length; pass++) {
    for (const e of edges) depth.set(e.target, Math.max(depth.get(e.target), depth.get(e.source) + 1));
  }
  const columns = [];
  for (const v of vertices) (columns[depth.get(v.id)] ||= []).push(v);
  const W = 230, H = 92, GX = 90, GY = 28, PAD = 16;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((v, r) => pos.set(v.id, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
  const height = PAD * 2 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const root = svg("svg", { class: "graph", viewBox: `0 0 ${width} ${height}`, width, height, "data-test": "graph" });
  root.append(svg("defs", null, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const mx = (x1 + x2) / 2;
    root.append(svg("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, class: "edge", "marker-end": "url(#arrow)", "data-test": "edge" }));
    root.append(svg("text", { x: mx, y: (y1 + y2) / 2 - 6, class: "edge-label", "text-anchor": "middle" }, e.partitioner));
  }
  for (const v of vertices) {
    const p = pos.get(v.id);
    const bp = v.metrics ? v.metrics.backpressured_pct : 0;
    const level = bp >= 50 ? "high" : bp >= 10 ? "low" : "ok";
    const name = v.name.length > 32 ? `${v.name.slice(0, 31)}…` : v.name;
    root.append(svg("g", { class: `vertex bp-${level}`, "data-test": "vertex", "data-vertex": v.id, "data-parallelism": v.parallelism },
      svg("title", null, v.name),
      svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }),
      svg("text", { x: p.x + 10, y: p.y + 20, class: "vertex-name" }, name),
      svg("text", { x: p.x + 10, y: p.y + 40, class: "vertex-detail" }, `Parallelism: ${v.parallelism}${v.keyed ? " · keyed" : ""}`),
      svg("text", { x: p.x + 10, y: p.y + 58, class: "vertex-detail" },
        `in ${count(v.metrics?.records_in_per_s ?? 0)}/s · out ${count(v.metrics?.records_out_per_s ?? 0)}/s`),
      svg("text", { x: p.x + 10, y: p.y + 76, class: "vertex-detail" }, `Backpressured: ${bp}%`)));
  }
  return el("div", { class: "graph-box" }, root);
}

function vertexTable(job) {
  return table(["Vertex", "Parallelism", "Records in", "Records out", "In/s", "Out/s", "Sent", "Backpressured"],
    job.vertices.map((v) => el("tr", null,
      el("td", null, v.name),
      el("td", { class: "num" }, v.parallelism),
      el("td", { class: "num" }, count(v.metrics.records_in)),
      el("td", { class: "num" }, count(v.metrics.records_out)),
      el("td", { class: "num" }, count(v.metrics.records_in_per_s)),
      el("td", { class: "num" }, count(v.metrics.records_out_per_s)),
      el("td", { class: "num" }, bytes(v.metrics.bytes_out)),
      el("td", { class: "num" }, `${v.metrics.backpressured_pct}%`))));
}

function subtaskTable(job) {
  const rows = [];
  for (const v of job.vertices) {
    for (const s of v.subtasks) {
      rows.push(el("tr", { "data-test": "subtask-row" },
        el("td", null, v.name), el("td", { class: "num" }, s.subtask), el("td", null, badge(s.state)),
        el("td", null, s.taskmanager || "–"), el("td", { class: "num" }, s.slot ?? "–"),
        el("td", { class: "num" }, s.attempt),
        el("td", { class: "num" }, count(s.records_in)), el("td", { class: "num" }, count(s.records_out)),
        el("td", { class: "num" }, `${s.backpressured_pct}%`),
        el("td", { class: "failure" }, s.failure || "")));
    }
  }
  return table(["Vertex", "Subtask", "State", "TaskManager", "Slot", "Attempt", "In", "Out", "Backpressured", "Failure"],
    rows, { "data-test": "subtasks" });
}

// Duration (bars) and full size (line) of the last completed checkpoints.
function checkpointChart(history) {
  const done = history.filter((r) => r.status === "completed").slice(-60);
  if (done.length === 0) return el("p", { class: "muted" }, "No completed checkpoint yet.");
  const W = 720, H = 180, L = 60, R = 70, T = 12, B = 26;
  const maxD = Math.max(1, ...done.map((r) => r.duration_ms));
  const maxS = Math.max(1, ...done.map((r) => r.full_size));
  const step = (W - L - R) / done.length;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, "data-test": "checkpoint-chart" });
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("text", { x: L - 6, y: T + 8, class: "tick", "text-anchor": "end" }, ms(maxD)));
  root.append(svg("text", { x: L - 6, y: H - B, class: "tick", "text-anchor": "end" }, "0"));
  root.append(svg("text", { x: W - R + 6, y: T + 8, class: "tick size" }, bytes(maxS)));
  root.append(svg("text", { x: L, y: H - 6, class: "tick" }, `#${done[0].id}`));
  root.append(svg("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, `#${done[done.length - 1].id}`));
  const points = [];
  done.forEach((r, i) => {
    const h = (r.duration_ms / maxD) * (H - T - B);
    const x = L + i * step;
    root.append(svg("rect", { x: x + step * 0.15, y: H - B - h, width: Math.max(1, step * 0.7), height: h, class: "bar" },
      svg("title", null, `checkpoint ${r.id}: ${ms(r.duration_ms)}, ${bytes(r.full_size)}`)));
    points.push(`${x + step / 2},${H - B - (r.full_size / maxS) * (H - T - B)}`);
  });
  root.append(svg("polyline", { points: points.join(" "), class: "size-line" }));
  return el("div", null, root, el("div", { class: "legend" },
    el("span", { class: "key bar-key" }), " duration ", el("span", { class: "key line-key" }), " full size"));
}

function checkpointTable(view) {
  const rows = view.history.slice(-50).reverse().map((r) => el("tr", { "data-test": "checkpoint-row" },
    el("td", { class: "num" }, r.id),
    el("td", null, badge(checkpointStatus(r)), r.reason ? el("div", { class: "failure" }, r.reason) : null),
    el("td", { class: "num" }, r.attempt),
    el("td", null, time(r.trigger_ms)),
    el("td", { class: "num" }, ms(r.duration_ms)),
    el("td", { class: "num" }, ms(r.sync_ms)),
    el("td", { class: "num" }, ms(r.alignment_ms)),
    el("td", { class: "num" }, ms(r.async_ms)),
    el("td", { class: "num" }, bytes(r.full_size)),
    el("td", { class: "num" }, bytes(r.bytes_uploaded)),
    el("td", { class: "num" }, r.acknowledged)));
  return table(["Id", "Status", "Attempt", "Triggered", "Duration", "Task pause", "Alignment", "Upload", "Full size", "Uploaded", "Acks"],
    rows, { "data-test": "checkpoints" });
}

const PHASES = [
  ["detection_ms", "detect"],
  ["cancel_ms", "cancel"],
  ["schedule_ms", "schedule"],
  ["deploy_ms", "deploy + restore"],
  ["first_record_ms", "first record"],
];

function recoveryTimeline(recoveries) {
  if (recoveries.length === 0) return el("p", { class: "muted" }, "No recovery: the job has not failed.");
  return recoveries.slice().reverse().map((r) => {
    const d = r.durations || {};
    const total = PHASES.reduce((sum, [k]) => sum + (d[k] || 0), 0) || 1;
    const bar = el("div", { class: "timeline" }, PHASES.filter(([k]) => d[k] != null).map(([k, label]) =>
      el("div", { class: `phase phase-${k}`, title: `${label}: ${ms(d[k])}`, "data-width": ((d[k] / total) * 100).toFixed(2) },
        el("span", null, `${label} ${ms(d[k])}`))));
    return el("div", { class: "recovery", "data-test": "recovery" },
      el("div", { class: "recovery-head" },
        el("strong", null, `Recovery ${r.id}`), " ", badge(r.status),
        r.lost_taskmanager ? el("span", { class: "lost" }, ` TaskManager ${r.lost_taskmanager} lost`) : null,
        el("span", { class: "muted" }, ` at ${time(r.detected_ms)} · total ${ms(d.total_ms)}`)),
      el("div", { class: "cause" }, r.cause),
      bar,
      el("div", { class: "muted" },
        `attempt ${r.attempt ?? "–"} · restored checkpoint ${r.restored_checkpoint ?? "none"} · `,
        `${bytes(r.bytes_local)} from local copies, ${bytes(r.bytes_downloaded)} downloaded · `,
        `${r.tasks_restored} tasks restored (slowest ${ms(r.restore_ms)}) · ${(r.moves || []).length} subtasks moved`));
  });
}

function savepointTable(job, ops) {
  if (!ops || ops.length === 0) return null;
  return [el("h2", null, "Savepoints"), table(["Request", "Format", "Stop", "Status", "Location", "Failure"],
    ops.map((o) => el("tr", null, el("td", { class: "num" }, o.request_id), el("td", null, o.format),
      el("td", null, o.stop ? "yes" : "no"), el("td", null, badge(o.status)),
      el("td", { class: "id" }, o.location || "–"), el("td", { class: "failure" }, o.failure_cause || ""))))];
}

// Actions ask once more before they act: the first click arms, the second sends.
function action(label, test, run) {
  const button = el("button", { "data-test": test, type: "button" }, label);
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = `${label}: click again to confirm`;
      button.classList.add("armed");
      setTimeout(() => { armed = false; button.textContent = label; button.classList.remove("armed"); }, 4000);
      return;
    }
    button.disabled = true;
    try {
      const answer = await run();
      flash(`${label}: ${JSON.stringify(answer)}`);
    } catch (e) {
      flash(`${label} failed: ${e.message}`, true);
    }
    refresh();
  });
  return button;
}

let flashed = null;
function flash(text, error) {
  flashed = { text, error, until: Date.now() + 8000 };
}

const jobSavepoints = new Map();

async function jobPage(id) {
  const [job, cps, recs] = await Promise.all([
    get(`/jobs/${id}`), get(`/jobs/${id}/checkpoints`), get(`/jobs/${id}/recoveries`),
  ]);
  const running = !["FINISHED", "FAILED", "CANCELED"].includes(job.state);
  const actions = running ? el("div", { class: "actions" },
    action("Cancel", "cancel", () => send("PATCH", `/jobs/${id}`)),
    job.checkpointing ? action("Savepoint", "savepoint", async () => {
      const a = await send("POST", `/jobs/${id}/savepoints`, {});
      jobSavepoints.set(id, [...(jobSavepoints.get(id) || []), a["request-id"]]);
      return a;
    }) : null,
    job.checkpointing ? action("Stop with savepoint", "stop", () => send("POST", `/jobs/${id}/stop`, {})) : null) : null;
  const ops = await Promise.all((jobSavepoints.get(id) || []).map((n) => get(`/jobs/${id}/savepoints/${n}`).catch(() => null)));
  return [
    el("h1", null, job.name, " ", badge(job.state)),
    el("div", { class: "id" }, job.id),
    el("div", { class: "cards" },
      card("Duration", ms(job.duration_ms)),
      card("Attempt", job.attempt),
      card("Restarts", job.restarts, "restarts"),
      card("Records/s (sources)", count(job.records_per_s), "records-per-s"),
      card("Source records", count(job.metrics.source_records)),
      card("Sink records", count(job.metrics.sink_records)),
      card("Checkpoints", job.checkpointing ? `${cps.counts.completed} ok · ${cps.counts.aborted} aborted` : "off"),
      card("Restart strategy", job.restart_strategy)),
    job.failure_cause ? el("div", { class: "failure box", "data-test": "failure" },
      running ? "Last failure (recovered): " : "Failure: ", job.failure_cause) : null,
    actions,
    el("h2", null, "Graph"),
    graph(job),
    vertexTable(job),
    el("h2", null, "Subtasks"),
    subtaskTable(job),
    el("h2", null, "Checkpoints"),
    job.checkpointing ? [checkpointChart(cps.history), checkpointTable(cps)] : el("p", { class: "muted" }, "Checkpointing is off."),
    el("h2", null, "Recoveries"),
    el("div", { "data-test": "recoveries" }, recoveryTimeline(recs.recoveries)),
    savepointTable(job, ops.filter(Boolean)),
  ];
}

// ---- routing and refresh -----------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const job = hash.match(/^\/jobs\/([0-9a-f]{32})$/);
  if (job) return { name: "job", render: () => jobPage(job[1]) };
  if (hash === "/taskmanagers") return { name: "taskmanagers", render: taskmanagersPage };
  return { name: "overview", render: overviewPage };
}

let rendering = false;
async function refresh() {
  if (rendering) return;
  rendering = true;
  const r = route();
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  try {
    const content = await r.render();
    const scroll = window.scrollY;
    const box = el("div", null, content);
    if (flashed && flashed.until > Date.now()) {
      box.prepend(el("div", { class: flashed.error ? "flash error" : "flash", "data-test": "flash" }, flashed.text));
    }
    main.replaceChildren(box);
    // Phase widths are set here, not in markup: the style policy allows no inline style.
    for (const p of main.querySelectorAll(".phase[data-width]")) p.style.flexBasis = `${p.dataset.width}%`;
    window.scrollTo(0, scroll);
    main.dataset.page = r.name;
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "status ok";
  } catch (e) {
    status.textContent = e instanceof Standby ? `standby: ${e.message}` : `error: ${e.message}`;
    status.className = "status error";
    if (e instanceof Unauthorized) {
      // Keep a form being typed into; draw it once.
      if (main.dataset.page !== "token") main.replaceChildren(tokenForm(e.message));
      main.dataset.page = "token";
    } else {
      if (e instanceof Standby || main.dataset.page !== r.name) main.replaceChildren(el("p", { class: "failure box" }, e.message));
      main.dataset.page = r.name;
    }
  } finally {
    for (const a of document.querySelectorAll("nav a[data-nav]")) a.classList.toggle("active", a.dataset.nav === r.name);
    rendering = false;
  }
}

window.addEventListener("hashchange", () => {
  takeTokenFromAddress();
  document.getElementById("main").dataset.page = "";
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
