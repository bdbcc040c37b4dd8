// emostream's supervisor page: keeps every call's summary from /events and redraws at most once
// per animation frame, however many updates arrive.
"use strict";

const COLORS = {
  anger: "#c62828", disgust: "#7b3f98", fear: "#e06c00", frustration: "#a83232", joy: "#2e9d4f",
  neutral: "#b8bec9", sadness: "#2f6db5", surprise: "#e2b100",
};
const SEVERITY = { critical: 0, warning: 1, info: 2 };
const QUIET_S = 120;  // no utterance labelled for this long: the call shows as quiet, not live
const calls = new Map();
let clockOffset = 0;  // the board server's clock minus this browser's, in seconds
let selected = null;
let drawPending = false;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const color = (label) => COLORS[label] || "#7d8597";
const signed = (x) => (x >= 0 ? "+" : "") + x.toFixed(2);

function worst(call) {
  return call.alerts.reduce((w, a) => Math.min(w, SEVERITY[a.severity]), 3);
}

// seconds since the call's latest utterance was labelled (0 for an ended call)
let nowS = Date.now() / 1000;  // the board server's time at this drawing (one value for a whole sort)
const quietFor = (c) => (c.ended ? 0 : Math.max(0, nowS - c.heard_at));
const isQuiet = (c) => quietFor(c) >= QUIET_S;
// how it ended, where not by its 'ended' (a platform that lost it: README, Calls that end)
const howEnded = (c) => (c.ended_by === "idle" ? " (went quiet, no 'ended')"
  : c.ended_by === "started" ? " (started again, no 'ended')" : "");
const state = (c) => (c.ended ? "ended" + howEnded(c) + (c.after_end ? ` · ${c.after_end} more after its end` : "")
  : isQuiet(c) ? `quiet ${Math.floor(quietFor(c) / 60)} min` : "live");
// "7 turns (1 not read)", as the call's summary counts them
const turns = (c) => `${c.turns} turn${c.turns === 1 ? "" : "s"}${c.unread ? ` (${c.unread} not read)` : ""}`;

function order(a, b) {
  if (a.ended !== b.ended) return a.ended ? 1 : -1;
  // the most severe open alert first, quiet or not: a furious customer put on hold went quiet and
  // sank below every calm live call (a supervisor's trial)
  const w = worst(a) - worst(b);
  if (w !== 0) return w;
  if (isQuiet(a) !== isQuiet(b)) return isQuiet(a) ? 1 : -1;  // then live calls first: a quiet one may have hung up
  return b.updated_at - a.updated_at;
}

function speakerRow(s) {
  const cells = s.timeline.map((u) =>
    u.read === false
      ? `<span class="cell unread" title="#${u.seq} nothing read"></span>`
      : `<span class="cell" style="background:${color(u.label)}" title="#${u.seq} ${esc(u.label)} ${signed(u.sentiment)}"></span>`).join("");
  let sent = "";
  if (s.sentiment !== undefined) {
    const arrow = s.trend > 0.05 ? "↑" : s.trend < -0.05 ? "↓" : "";
    sent = `<span class="sent ${s.sentiment < -0.1 ? "neg" : s.sentiment > 0.1 ? "pos" : ""}">${signed(s.sentiment)}${arrow}</span>`;
  }
  const who = !s.role || s.role === s.speaker ? `<b>${esc(s.speaker)}</b>` : `<b>${esc(s.role)}</b> ${esc(s.speaker)}`;
  return `<div class="speaker"><span class="who" title="${esc(s.speaker)}">${who}</span>` +
    `<span class="timeline">${cells}</span>${sent}</div>`;
}

function card(c) {
  const sev = c.alerts.length ? c.alerts[0].severity : "";
  let alerts = c.alerts.map((a) =>
    `<div class="alert ${a.severity}" data-rule="${esc(a.rule)}">⚠ ${esc(a.message)}</div>`).join("");
  if (c.ended && !c.alerts.length && (c.raised || []).length) {  // its alerts cleared: say it escalated all the same
    alerts = `<div class="alert cleared">✓ had: ${(c.raised || []).map(esc).join(", ")}</div>`;
  }
  const quiet = isQuiet(c) ? "quiet" : "";
  return `<article class="call ${sev} ${c.ended ? "ended" : quiet}" data-call="${esc(c.call_id)}">` +
    `<div class="top"><span class="id">${esc(c.call_id)}</span><span class="meta">${turns(c)} · ${esc(state(c))}</span></div>` +
    alerts + c.speakers.map(speakerRow).join("") + `</article>`;
}

function draw() {
  drawPending = false;
  nowS = Date.now() / 1000 + clockOffset;
  const list = [...calls.values()].sort(order);
  $("list").innerHTML = list.length ? list.map(card).join("") : `<div class="empty">No calls yet: waiting for emotion events.</div>`;
  $("n-active").textContent = list.filter((c) => !c.ended && !isQuiet(c)).length;
  $("n-quiet").textContent = list.filter((c) => !c.ended && isQuiet(c)).length;
  $("n-ended").textContent = list.filter((c) => c.ended).length;
  $("n-alerts").textContent = list.reduce((n, c) => n + c.alerts.length, 0);
}

function schedule() {
  if (!drawPending) {
    drawPending = true;
    requestAnimationFrame(draw);
  }
}

let asked = 0;  // the latest detail request: an older answer that comes after it is dropped
async function showDetail(callId) {
  selected = callId;
  const mine = ++asked;
  let c;
  try {
    const resp = await fetch(`/api/calls/${encodeURIComponent(callId)}`);
    if (mine !== asked) return;
    if (!resp.ok) { $("detail").hidden = true; return; }
    c = await resp.json();
  } catch (err) {
    return;  // the server away: the stream's status says so; the next update asks again
  }
  if (mine !== asked || selected !== callId) return;
  const rows = c.utterances.map((u) => {
    const weights = Object.entries(u.weights).map(([m, w]) => `${m} ${w.toFixed(2)}`).join(" · ");
    const notUsed = (Object.keys(u.ignored).length ? ` (${Object.keys(u.ignored).join(", ")} not used)` : "") +
      Object.entries(u.suspect || {}).map(([m, why]) => ` (${m} suspect: ${why.split(":")[0]})`).join("");
    return `<tr><td class="num">${u.seq}</td><td>${esc(u.speaker)}</td>` +
      (u.read === false  // every part ignored: the label is the model's prior, not a reading of the speaker
        ? `<td><span class="chip unread" title="nothing of this utterance was read">nothing read</span></td><td></td><td></td>`
        : `<td><span class="chip" style="background:${color(u.label)}">${esc(u.label)}</span>${u.revision ? " ↻" : ""}</td>` +
          `<td class="num">${u.confidence.toFixed(2)}</td><td class="num">${signed(u.sentiment)}</td>`) +
      `<td>${esc(weights)}${esc(notUsed)}</td></tr>`;
  }).join("");
  const history = c.history.map((a) =>
    `<li>${a.state === "cleared" ? "✓ cleared" : "⚠ " + a.state} ${esc(a.rule)}${a.reason ? " (" + esc(a.reason) + ")" : ""}` +
    `${a.evidence.length ? ": turns " + a.evidence.map((e) => "#" + e.seq).join(", ") : ""}` +
    `${a.measured ? " · " + esc(a.measured) : ""}</li>`).join("");
  $("detail-body").innerHTML = `<h2>${esc(c.call_id)}</h2>` +
    `<div class="meta">${turns(c)} · ${esc(state(c))}</div>` +
    c.alerts.map((a) => `<div class="alert ${a.severity}">⚠ ${esc(a.message)}</div>`).join("") +
    (history ? `<ul class="history">${history}</ul>` : "") +
    `<table><thead><tr><th>#</th><th>speaker</th><th>label</th><th>conf.</th><th>sent.</th><th>weights</th></tr></thead>` +
    `<tbody>${rows}</tbody></table>`;
  $("detail").hidden = false;
}

function apply(change, replace) {
  if (change.now !== undefined) clockOffset = change.now - Date.now() / 1000;
  if (replace) calls.clear();
  for (const c of change.calls) calls.set(c.call_id, c);
  for (const id of change.removed) calls.delete(id);
  schedule();
  if (selected && !calls.has(selected)) { selected = null; $("detail").hidden = true; }  // it left the board
  if (selected && change.calls.some((c) => c.call_id === selected)) showDetail(selected);
}

function connect() {
  const source = new EventSource("/events");
  const status = (cls, text, title) => { $("status").className = `status ${cls}`; $("status").textContent = text; $("status").title = title || ""; };
  let feedError = null;  // the server cannot read the topics (Kafka away): what the page shows may be old
  source.addEventListener("snapshot", (e) => {
    apply(JSON.parse(e.data), true);
    if (!feedError) status("live", "live");
  });
  source.addEventListener("feed", (e) => {
    feedError = JSON.parse(e.data).error;
    if (feedError) status("lost", "not reading the topics", feedError);
    else status("live", "live");
  });
  source.addEventListener("update", (e) => { const change = JSON.parse(e.data); apply(change, change.reset); });
  source.onerror = () => {
    status("lost", "reconnecting…");
    // a refusal (503: too many pages follow the board) or an error answer closes it for good: try again
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}

$("list").addEventListener("click", (e) => {
  const el = e.target.closest(".call");
  if (el) showDetail(el.dataset.call);
});
$("close").addEventListener("click", () => { selected = null; $("detail").hidden = true; });
$("legend").innerHTML = Object.entries(COLORS).map(([k, v]) => `<span class="cell" style="background:${v}"></span>${k}`).join("");
draw();
connect();
setInterval(schedule, 15000);  // a call that says nothing more turns quiet without an update
