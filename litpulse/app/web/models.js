// The /models page: the model versions' table, built from GET /models (JSON).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function list(items) {
  const ul = el("ul");
  for (const item of items) ul.appendChild(el("li", item));
  return ul;
}

function num(x) {
  return typeof x === "number" ? x.toFixed(3) : "?";
}

function signed(x) {
  return (x >= 0 ? "+" : "") + x.toFixed(3);
}

function short(id) {
  return id === "base" ? "base" : id;
}

function day(iso) {
  return iso ? iso.slice(0, 16).replace("T", " ") : null;
}

function lineageCell(v) {
  const td = el("td");
  td.appendChild(el("div", `${short(v.parent_id || "base")} → ${v.id}`, "id"));
  if (v.children.length) td.appendChild(el("div", `continued by ${v.children.join(", ")}`, "muted"));
  td.appendChild(el("div", `generation ${v.generation} on ${v.base_model}`, "muted"));
  return td;
}

function pairsCell(v) {
  const td = el("td");
  td.appendChild(el("div", `${v.pairs_total} pairs`));
  td.appendChild(list(Object.entries(v.pairs).map(([k, n]) => `${k.replace(/_/g, " ")}: ${n}`)));
  const experts = Object.entries(v.feedback_experts);
  if (experts.length) td.appendChild(el("div", "feedback from " +
    experts.map(([who, n]) => `${who} (${n})`).join(", "), "muted"));
  if (v.feedback_excluded) td.appendChild(el("div",
    `feedback excluded: ${v.feedback_excluded} (revoked API tokens)`, "muted"));
  td.appendChild(el("div", `window ${day(v.window_start) || "the start"} – ${day(v.window_end) || "now"}`, "muted"));
  return td;
}

function trainingCell(v) {
  const t = v.training || {};
  const td = el("td");
  if (!Object.keys(t).length) { td.appendChild(el("span", "not recorded", "muted")); return td; }
  const lines = [];
  if (t.steps !== undefined) lines.push(`${t.steps} steps` + (t.epochs !== undefined ? ` (${t.epochs.toFixed(2)} epochs)` : ""));
  if (t.seconds !== undefined) lines.push(`${Number(t.seconds).toFixed(1)} s on ${t.device || "?"}`);
  if (t.first_loss !== undefined && t.last_loss !== undefined) lines.push(`loss ${num(t.first_loss)} → ${num(t.last_loss)}`);
  if (t.new_articles !== undefined) lines.push(`${t.new_articles} new articles`);
  lines.push(`created ${day(v.created_at)}`);
  td.appendChild(list(lines));
  return td;
}

function metricsCell(v) {
  const td = el("td", null, "num");
  const lines = [];
  for (const [set, row] of Object.entries(v.metrics)) {
    for (const [metric, value] of Object.entries(row)) {
      const deltas = v.comparisons
        .filter((c) => c.delta[set] && c.delta[set][metric] !== undefined)
        .map((c) => `${signed(c.delta[set][metric])} vs ${c.relation === "base" ? "base" : c.relation + " " + short(c.against)}`);
      lines.push(`${set} ${metric} ${num(value)}` + (deltas.length ? ` (${deltas.join(", ")})` : ""));
    }
  }
  td.appendChild(lines.length ? list(lines) : el("span", "no metrics recorded", "muted"));
  const sizes = Object.entries(v.heldout);
  if (sizes.length) td.appendChild(el("div", "held out: " + sizes.map(([k, n]) => `${k} ${n}`).join(", "), "muted"));
  return td;
}

function gateCell(v) {
  const td = el("td");
  if (v.gate_passed === null) { td.appendChild(el("span", "no gate decision", "muted")); return td; }
  td.appendChild(el("div", v.gate_passed ? "passed" : "failed", v.gate_passed ? "pass" : "fail"));
  td.appendChild(list(v.gate_reasons));
  return td;
}

function historyCell(v) {
  const td = el("td");
  td.appendChild(el("div", v.summary));
  td.appendChild(list(v.events.map((e) => `${day(e.at) || "?"} ${e.event.replace(/_/g, " ")}` +
    (e.by ? ` by ${e.by}` : "") + (e.reason ? `: ${e.reason}` : ""))));
  return td;
}

function render(doc) {
  const body = document.getElementById("versions-body");
  body.replaceChildren();
  document.getElementById("models-active").textContent = doc.count
    ? `${doc.count} model version${doc.count === 1 ? "" : "s"}; active: ${doc.active}`
    : "No model versions yet: the base model is in use (run `litpulse retrain`).";
  if (!doc.count) {
    const tr = el("tr");
    const td = el("td", "no model versions yet");
    td.colSpan = 7;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const v of doc.versions) {
    const tr = el("tr");
    const head = el("th");
    head.scope = "row";
    head.appendChild(el("div", v.id, "id"));
    head.appendChild(el("div", v.status, v.status === "active" ? "pass" : "muted"));
    tr.appendChild(head);
    for (const cell of [lineageCell, pairsCell, trainingCell, metricsCell, gateCell, historyCell]) {
      tr.appendChild(cell(v));
    }
    body.appendChild(tr);
  }
}

async function load() {
  const error = document.getElementById("models-error");
  try {
    const r = await fetch("models", { headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`GET /models answered ${r.status}`);
    render(await r.json());
  } catch (e) {
    error.textContent = `Could not load the model versions: ${e.message}`;
    error.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", load);
