// The live page: polls the API's JSON endpoints once a second and redraws.
// Every value reaches the DOM through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const JOBS_SHOWN = 20;
const HEADERS = { "X-Docqueue-Page": "1" };  // see docqueue/api/session.py
const finished = new Map();  // job id -> its last status, once it stopped changing
let selected = null;  // the job whose errors and recent results are shown
let pinned = false;  // chosen by a click; else the newest job is shown
let timer = null;

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    ...options,
    headers: { ...HEADERS, ...(options.headers || {}) },
  });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- jobs ---------------------------------------------------------------------------

async function jobStatuses() {
  const listed = (await api(`/api/jobs?limit=${JOBS_SHOWN}`)).data;
  return Promise.all(listed.map(async (brief) => {
    if (finished.has(brief.id)) return finished.get(brief.id);
    const status = await api(`/api/jobs/${encodeURIComponent(brief.id)}`);
    if (status.state !== "running") finished.set(status.id, status);
    return status;
  }));
}

function jobRow(job) {
  const p = job.progress;
  const total = p.total ?? p.enqueued;
  const row = el("tr");
  row.dataset.jobId = job.id;
  row.dataset.state = job.state;
  if (job.id === selected) row.classList.add("selected");
  row.append(
    el("td", job.name || job.id.slice(0, 12), "job-name"),
    el("td", `${job.task} · ${job.model_label ?? job.model}`),
    el("td", job.state, job.warning ? "state warn" : "state"),
    progressCell(p, total),
    el("td", job.docs_per_second === null ? "–" : job.docs_per_second.toFixed(1), "num rate"),
    el("td", job.state === "running" ? duration(job.eta_seconds) : "–", "num eta"),
    el("td", job.errors.failed, "num failed" + (job.errors.failed ? " failed-count" : "")),
    cancelCell(job),
  );
  if (job.warning) row.title = job.warning;
  row.addEventListener("click", () => { selected = job.id; pinned = true; refresh(); });
  return row;
}

function progressCell(p, total) {
  const cell = el("td", null, "progress");
  const bar = el("progress");
  bar.max = Math.max(total, 1);
  bar.value = p.done + p.failed + p.cancelled;
  const count = el("span", null, "count");
  count.append(
    el("span", p.done, "done"), " done · ",
    el("span", p.pending, "pending"), " pending",
    ...(p.cancelled ? [" · ", el("span", p.cancelled, "cancelled"), " cancelled"] : []),
    " · of ", el("span", p.total ?? "…", "total"),
  );
  cell.append(bar, count);
  return cell;
}

function cancelCell(job) {
  const cell = el("td");
  if (job.state !== "running") return cell;
  const button = el("button", "Cancel", "cancel");
  button.type = "button";
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!window.confirm(`Cancel job ${job.name || job.id}? Documents not computed yet are dropped.`)) return;
    button.disabled = true;
    try {
      await api(`/api/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
    } catch (error) {
      handle(error);
    }
    refresh();
  });
  cell.append(button);
  return cell;
}

async function drawJobs() {
  const jobs = await jobStatuses();
  if (!pinned || !jobs.some((job) => job.id === selected)) {
    selected = jobs.length ? jobs[0].id : null;
    pinned = false;
  }
  fill($("#jobs tbody"), jobs.map(jobRow));
  $("#jobs-empty").hidden = jobs.length > 0;
  await drawDetail(jobs.find((job) => job.id === selected));
}

async function drawDetail(job) {
  $("#job-detail").hidden = !job;
  if (!job) return;
  const id = encodeURIComponent(job.id);
  const [errors, recent] = await Promise.all([
    api(`/api/jobs/${id}/results?status=failed&limit=5`),
    api(`/api/jobs/${id}/recent?limit=5`),
  ]);
  $("#detail-id").textContent = job.name ? `${job.name} (${job.id})` : job.id;
  fill($("#errors tbody"), errors.data.map((r) => resultRow(r, r.error, "error")));
  fill($("#recent tbody"), recent.data.map((r) => resultRow(r, summary(r))));
}

function summary(row) {
  if (row.status === "failed") return `failed: ${row.error}`;
  const { id, seq, status, embedding, ...fields } = row;
  if (embedding) fields.embedding = `[${embedding.length} floats]`;
  // numbers to three decimals, nested ones too: a row fits on a line or two
  const short = (_, value) => (typeof value === "number" ? Number(value.toFixed(3)) : value);
  return Object.entries(fields)
    .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value, short)}`)
    .join(", ");
}

function resultRow(row, text, className) {
  const tr = el("tr");
  tr.append(el("td", row.seq), el("td", row.id ?? ""), el("td", text, `cell-text ${className || ""}`));
  return tr;
}

// --- workers and dead letters -------------------------------------------------------

async function drawWorkers() {
  const workers = (await api("/api/workers")).data;
  fill($("#workers tbody"), workers.map((w) => {
    const tr = el("tr");
    tr.dataset.workerId = w.id;
    const models = Object.entries(w.models)
      .map(([name, info]) => `${name} (${(info.tasks || []).join(", ")})`).join("; ");
    const memory = `${bytes(w.peak_host_bytes)} host` +
      (w.peak_gpu_bytes === null ? "" : `, ${bytes(w.peak_gpu_bytes)} GPU`);
    tr.append(
      el("td", `${w.id} @ ${w.hostname}`), el("td", w.device, "device"), el("td", models, "models"),
      el("td", w.batches, "num batches"),
      el("td", w.mean_batch_size === null ? "–" : w.mean_batch_size.toFixed(1), "num batch-size"),
      el("td", w.padded_tokens.toLocaleString("en"), "num padded-tokens"),
      el("td", w.documents, "num documents"), el("td", memory, "memory"),
      el("td", `${duration(w.seconds_since_heartbeat)} ago`, "heartbeat"),
    );
    return tr;
  }));
  $("#workers-empty").hidden = workers.length > 0;
}

async function drawDeadLetters() {
  const page = await api("/api/dead-letters?limit=10");
  $("#dead-counts").textContent = `(${page.held} held, ${page.dropped} dropped, at most ${page.limit})`;
  fill($("#dead-letters tbody"), page.data.map((d) => {
    const tr = el("tr");
    tr.append(
      el("td", d.id, "num"), el("td", d.queue), el("td", d.reason, "cell-text"),
      el("td", new Date(d.at * 1000).toLocaleString()), el("td", d.size, "num"),
    );
    return tr;
  }));
}

// --- the loop and the login ----------------------------------------------------------

function show(loggedIn) {
  $("#login-view").hidden = loggedIn;
  $("#live-view").hidden = !loggedIn;
}

function handle(error) {
  if (error instanceof Unauthorized) {
    show(false);
    $("#updated").textContent = "log in to see the queue";
    return false;
  }
  $("#updated").textContent = `error: ${error.message}`;
  return true;
}

let drawing = false;  // one redraw at a time: a click during one asks for another
let redraw = false;

async function refresh() {
  if (drawing) { redraw = true; return; }
  drawing = true;
  clearTimeout(timer);
  let poll = true;
  try {
    await Promise.all([drawJobs(), drawWorkers(), drawDeadLetters()]);
    show(true);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    poll = handle(error);
  }
  drawing = false;
  if (redraw) { redraw = false; refresh(); } else if (poll) timer = setTimeout(refresh, POLL_MS);
}

async function login(event) {
  event.preventDefault();
  const token = $("#token");
  $("#login-error").textContent = "";
  try {
    await api("/api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: token.value }),
    });
    token.value = "";
    $("#logout").hidden = false;
    refresh();
  } catch (error) {
    $("#login-error").textContent =
      error instanceof Unauthorized ? "That token is not valid." : error.message;
  }
}

async function logout() {
  await api("/api/session", { method: "DELETE" }).catch(() => {});
  finished.clear();
  clearTimeout(timer);
  show(false);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  refresh();
});
