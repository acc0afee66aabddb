// ScratchWatch incident page: plain JS over /api (no build step).
// The bearer token is kept in this tab's sessionStorage and sent as a header; images are fetched
// with it and shown as blob: URLs, so the token never appears in a URL or an access log.
"use strict";

const TOKEN_KEY = "scratchwatch-token";
const $ = (id) => document.getElementById(id);
let nextCursor = null;
const blobUrls = [];

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${token() || ""}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { showSignIn("the token was refused"); throw new Unauthorized(); }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(describeError(response.status, body.detail));
  }
  return response;
}

function describeError(status, detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
  }
  return detail ? String(detail) : `HTTP ${status}`;
}

async function imageInto(img, path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  blobUrls.push(url);
  img.src = url;
}

function releaseImages() { while (blobUrls.length) URL.revokeObjectURL(blobUrls.pop()); }

function showSignIn(reason) {
  $("token-form").hidden = false;
  $("sign-out").hidden = true;
  $("token-error").textContent = reason || "";
}

function localTime(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

function mediaTime(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, "0")}`;
}

function sourceText(incident) {
  if (incident.kind !== "replay") return "live";
  return `${incident.source.split("/").pop()} @ ${mediaTime(incident.media_time_s)}`;
}

function filterParams() {
  const params = new URLSearchParams();
  for (const field of $("filters").elements) {
    if (!field.name || field.value === "") continue;
    const value = field.type === "datetime-local" ? new Date(field.value).toISOString() : field.value;
    params.set(field.name, value);
  }
  return params;
}

async function loadCameras() {
  const select = $("filter-camera");
  const cameras = await (await api("/api/cameras")).json();
  for (const camera of cameras) {
    if ([...select.options].some((o) => o.value === camera.id)) continue;
    const option = document.createElement("option");
    option.value = camera.id;
    option.textContent = `${camera.id} (last ${localTime(camera.last_seen)})`;
    select.append(option);
  }
}

async function loadIncidents(append) {
  const params = filterParams();
  params.set("limit", "50");
  if (append && nextCursor) params.set("cursor", nextCursor);
  else params.set("count", "true");
  try {
    const page = await (await api(`/api/incidents?${params}`)).json();
    if (!append) { $("incident-rows").replaceChildren(); releaseImages(); }
    $("list-status").className = "";
    if (page.total !== null && page.total !== undefined) $("list-status").textContent = `${page.total} incident(s)`;
    page.items.forEach(addRow);
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
  } catch (error) {
    if (!(error instanceof Unauthorized)) { $("list-status").textContent = error.message; $("list-status").className = "error"; }
  }
}

function addRow(incident) {
  const row = document.createElement("tr");
  row.dataset.id = incident.id;
  const cells = ["", incident.id, incident.camera_id, localTime(incident.opened_at), incident.best_score.toFixed(2),
    incident.closed_at ? "closed" : "open", incident.verdict || "-", sourceText(incident)];
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  const thumbPath = incident.crop_path ? "crop" : incident.snapshot_path ? "snapshot" : null;
  if (thumbPath) {
    const img = document.createElement("img");
    img.alt = `incident ${incident.id}`;
    row.firstChild.append(img);
    imageInto(img, `/api/incidents/${incident.id}/${thumbPath}`).catch(() => {});
  }
  row.addEventListener("click", () => { location.hash = `#/incident/${incident.id}`; });
  $("incident-rows").append(row);
}

async function showDetail(id) {
  $("list-view").hidden = true;
  $("detail").hidden = false;
  $("review-status").textContent = "";
  for (const name of ["snapshot", "crop", "car"]) $(`detail-${name}`).removeAttribute("src");
  try {
    const incident = await (await api(`/api/incidents/${id}`)).json();
    renderDetail(incident);
    const images = [["snapshot", incident.snapshot_path], ["crop", incident.crop_path], ["car", incident.car_path]];
    $("detail-car-figure").hidden = !incident.car_path;
    for (const [name, stored] of images) {
      if (stored) imageInto($(`detail-${name}`), `/api/incidents/${id}/${name}`).catch(() => {});
    }
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("detail-title").textContent = error.message;
  }
}

function renderDetail(incident) {
  $("detail-title").textContent = `Incident ${incident.id} — ${incident.camera_id}`;
  const fields = [
    ["Opened", localTime(incident.opened_at)], ["Closed", localTime(incident.closed_at)],
    ["Score", incident.best_score.toFixed(3)], ["Box", `${incident.x1},${incident.y1} – ${incident.x2},${incident.y2}`],
    ["Frame", `${incident.frame_width}×${incident.frame_height}`], ["Detections", incident.detection_count],
    ["Kind", incident.kind], ["Source", incident.source],
  ];
  if (incident.kind === "replay") {
    fields.push(["File", incident.source.split("/").pop()], ["Media time", mediaTime(incident.media_time_s)]);
  }
  if (incident.car_path || incident.car_track_id !== null) {
    fields.push(["Car", `track ${incident.car_track_id ?? "-"}, score ${incident.car_score?.toFixed(2) ?? "-"}`]);
  }
  fields.push(["Model", incident.model_name], ["Review", reviewText(incident)]);
  const list = $("detail-fields");
  list.replaceChildren();
  for (const [name, value] of fields) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    if (name === "Review") dd.id = "detail-review";
    list.append(dt, dd);
  }
  $("review").dataset.id = incident.id;
}

function reviewText(incident) {
  if (!incident.verdict) return "not reviewed";
  const note = incident.review_note ? ` — ${incident.review_note}` : "";
  return `${incident.verdict} by ${incident.reviewed_by} at ${localTime(incident.reviewed_at)}${note}`;
}

async function review(verdict) {
  const id = $("review").dataset.id;
  try {
    const response = await api(`/api/incidents/${id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ verdict, note: $("review-note").value || null }),
    });
    const incident = await response.json();
    $("detail-review").textContent = reviewText(incident);
    $("review-status").textContent = `saved: ${incident.verdict}`;
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("review-status").textContent = error.message;
  }
}

function route() {
  const match = location.hash.match(/^#\/incident\/(\d+)$/);
  if (match) return showDetail(match[1]);
  $("detail").hidden = true;
  $("list-view").hidden = false;
  return undefined;
}

async function start() {
  if (!token()) { showSignIn(); return; }
  $("token-form").hidden = true;
  $("sign-out").hidden = false;
  try {
    await loadCameras();
    await loadIncidents(false);
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("list-status").textContent = error.message;
  }
  route();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
  $("token-input").value = "";
  start();
});
$("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showSignIn(); });
$("filters").addEventListener("submit", (event) => { event.preventDefault(); loadIncidents(false); });
$("more").addEventListener("click", () => loadIncidents(true));
$("back").addEventListener("click", (event) => { event.preventDefault(); history.pushState("", "", location.pathname); route(); });
$("review-confirmed").addEventListener("click", () => review("confirmed"));
$("review-false-alarm").addEventListener("click", () => review("false-alarm"));
window.addEventListener("hashchange", route);
start();
