// The litpulse search page (index.html). Served as a file so that the page's
// Content-Security-Policy can forbid inline script.
"use strict";
const $ = (id) => document.getElementById(id);
const WEIGHTS = ["w_sim", "w_recency", "w_citation"];
const COMPONENTS = [["similarity", "sim"], ["lexical", "lex"], ["recency", "rec"],
                    ["citation", "cit"]];
const CHOICES = { mode: "hybrid", sort: "score" };  // selectors and their defaults
let defaults = { w_sim: 1, w_recency: 0.15, w_citation: 0.1, half_life: 365 };
let offset = 0;  // the page shown: results skipped before it
const AUTHORS_SHOWN = 3;  // then "et al."
const TERMS_SHOWN = 8;  // MeSH terms shown per result

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmt(x, digits = 3) {
  return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits);
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.style.display = message ? "block" : "none";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    }
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

function params() {
  const p = new URLSearchParams();
  p.set("q", $("q").value.trim());
  const k = parseInt($("k").value, 10);
  if (k) p.set("k", String(k));
  for (const id of ["since", "until", "mesh", "language"]) {
    const v = $(id).value.trim();
    if (v) p.set(id, v);
  }
  const t = $("ptype").value.trim();
  if (t) p.set("type", t);
  if ($("has_abstract").checked) p.set("has_abstract", "true");
  if ($("include_retracted").checked) p.set("include_retracted", "true");
  for (const w of WEIGHTS) {
    if (Number($(w).value) !== Number(defaults[w])) p.set(w, $(w).value);
  }
  const hl = $("half_life").value.trim();
  if (hl && Number(hl) !== Number(defaults.half_life)) p.set("half_life", hl);
  for (const [id, dflt] of Object.entries(CHOICES)) if ($(id).value !== dflt) p.set(id, $(id).value);
  if (offset > 0) p.set("offset", String(offset));
  return p;
}

function applyParams(p) {
  $("q").value = p.get("q") || "";
  for (const id of ["since", "until", "mesh", "language", "k"]) {
    if (p.get(id)) $(id).value = p.get(id);
  }
  if (p.get("type")) $("ptype").value = p.get("type");
  $("has_abstract").checked = p.get("has_abstract") === "true";
  $("include_retracted").checked = p.get("include_retracted") === "true";
  for (const w of WEIGHTS) if (p.get(w)) $(w).value = p.get(w);
  if (p.get("half_life")) $("half_life").value = p.get("half_life");
  for (const id of Object.keys(CHOICES)) if (p.get(id)) $(id).value = p.get(id);
  offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  const custom = ["since", "until", "mesh", "type", "language", "has_abstract",
                  "include_retracted", "half_life", ...WEIGHTS].some((x) => p.has(x));
  if (custom) $("filters").open = true;
  syncSliders();
}

function syncSliders() {
  for (const w of WEIGHTS) $(w + "_out").textContent = Number($(w).value).toFixed(2);
}

function stackedBar(hit, full) {
  const comps = hit.explanation.components;
  const bar = el("div", { class: "bar", role: "img" });
  const parts = [];
  for (const [name, cls] of COMPONENTS) {
    if (!comps[name]) continue;  // no lexical part: an index version without one
    const c = Math.max(0, comps[name].contribution);
    const seg = el("span", { class: cls, title: `${name}: ${fmt(comps[name].contribution)}` });
    seg.style.width = `${full > 0 ? (100 * c / full).toFixed(2) : 0}%`;
    bar.append(seg);
    parts.push(`${name} ${fmt(comps[name].contribution)}`);
  }
  bar.setAttribute("aria-label", parts.join(", "));
  return bar;
}

function explanation(hit) {
  const ex = hit.explanation;
  const table = el("table", { class: "explain" },
    el("tr", {}, el("th", { text: "component" }), el("th", { text: "value" }),
       el("th", { text: "weight" }), el("th", { text: "contribution" }),
       el("th", { text: "because" })));
  for (const [name] of COMPONENTS) {
    const c = ex.components[name];
    if (!c) continue;
    table.append(el("tr", {},
      el("td", { text: name }), el("td", { class: "num", text: fmt(c.value) }),
      el("td", { class: "num", text: fmt(c.weight, 2) }),
      el("td", { class: "num", text: fmt(c.contribution, 4) }),
      el("td", { class: "text", text: c.text })));
  }
  const lex = ex.components.lexical;
  const terms = (lex && lex.terms && lex.terms.length)
    ? "Matched terms (BM25 weight): " + lex.terms.map((t) =>
      `${t.term} ${fmt(t.weight, 2)} (${Object.keys(t.fields).join(", ")})`).join(" · ")
    : (lex ? "No query term occurs in this article." : "");
  return el("details", { class: "why" }, el("summary", { text: "Why this score?" }), table,
            el("div", { class: "terms", text: terms }),
            el("div", { class: "formula", text: `${ex.formula}: ${ex.text}` }));
}

const TOKEN_KEY = "litpulse.token";

function apiToken() {
  let token = localStorage.getItem(TOKEN_KEY);
  if (!token) {
    token = (window.prompt("Your litpulse API token (an admin makes one with " +
      "`litpulse tokens create --expert NAME`; kept in this browser):") || "").trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
  }
  return token;
}

async function sendFeedback(query, hit, relevant, box) {
  const token = apiToken();
  if (!token) return;
  const note = box.querySelector(".thanks");
  note.textContent = "sending…";
  let resp;
  try {
    resp = await fetch("feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token}` },
      body: JSON.stringify({ query, pmid: hit.pmid, relevant }),
    });
  } catch (e) {
    note.textContent = `not recorded: the server could not be reached (${e})`;
    return;
  }
  if (resp.ok) {
    const done = await resp.json();
    note.textContent = `thanks, ${done.expert} — recorded`;
    for (const b of box.querySelectorAll("button[data-relevant]")) {
      b.classList.toggle("on", (b.dataset.relevant === "true") === relevant);
    }
  } else {
    if (resp.status === 401) localStorage.removeItem(TOKEN_KEY);  // ask again next time
    note.textContent = `not recorded: ${await errorText(resp)}`;
  }
}

// Text with the API's highlight spans ([start, end) in code points) as <mark> nodes;
// never markup from the record: every piece is a text node.
function marked(text, spans) {
  const chars = Array.from(text || "");
  const out = [];
  let pos = 0;
  for (const [a, b] of spans || []) {
    if (a < pos || b > chars.length || a >= b) continue;
    if (a > pos) out.push(chars.slice(pos, a).join(""));
    out.push(el("mark", { text: chars.slice(a, b).join("") }));
    pos = b;
  }
  if (pos < chars.length) out.push(chars.slice(pos).join(""));
  return out;
}

function authorLine(hit) {
  const names = (hit.authors || []).slice(0, AUTHORS_SHOWN);
  if (!names.length) return null;
  const more = (hit.author_count || names.length) > names.length ? ", et al." : "";
  return el("div", { class: "authors", text: names.join(", ") + more });
}

function articleHead(hit, titleTag) {
  const url = (hit.links && hit.links.pubmed) ||
    `https://pubmed.ncbi.nlm.nih.gov/${encodeURIComponent(hit.pmid)}/`;
  const title = el("a", { class: "title", href: url, target: "_blank", rel: "noopener" },
    ...(hit.title ? marked(hit.title, hit.title_highlights) : [`PMID ${hit.pmid}`]));
  const meta = el("div", { class: "meta",
    text: [hit.journal, hit.best_date || hit.pub_year, `PMID ${hit.pmid}`]
      .filter(Boolean).join(" · ") });
  if (hit.retracted || hit.explanation.retracted) {
    meta.append(el("span", { class: "badge", text: "Retracted article" }));
  }
  const head = el("div", { class: "head" }, el(titleTag, { class: "htitle" }, title));
  const authors = authorLine(hit);
  if (authors) head.append(authors);
  head.append(meta);
  return head;
}

function tagLine(hit) {
  const box = el("div", { class: "tags" });
  for (const t of hit.publication_types || []) box.append(el("span", { class: "ptype", text: t }));
  const mesh = hit.mesh || [];
  for (const m of mesh.slice(0, TERMS_SHOWN)) box.append(el("span", { class: "mesh", text: m }));
  if (mesh.length > TERMS_SHOWN) {
    box.append(el("span", { class: "more", text: `+${mesh.length - TERMS_SHOWN} MeSH` }));
  }
  if (mesh.length) box.setAttribute("aria-label", `Publication types and MeSH terms`);
  return box;
}

function linkLine(hit) {
  const box = el("div", { class: "links" });
  box.append(el("a", { href: hit.links.pubmed, target: "_blank", rel: "noopener",
                       text: "PubMed" }));
  if (hit.links.doi) {
    box.append(el("a", { href: hit.links.doi, target: "_blank", rel: "noopener",
                         text: `DOI ${hit.doi}` }));
  }
  return box;
}

async function toggleSimilar(hit, button, region) {
  const open = button.getAttribute("aria-expanded") !== "true";
  button.setAttribute("aria-expanded", String(open));
  region.hidden = !open;
  if (!open || region.dataset.loaded) return;
  region.replaceChildren(el("p", { class: "note", text: "Loading similar articles…" }));
  const q = new URLSearchParams({ k: "5" });
  if ($("include_retracted").checked) q.set("include_retracted", "true");
  try {
    const resp = await fetchPatient(`similar/${encodeURIComponent(hit.pmid)}?${q.toString()}`);
    if (!resp.ok) {
      region.replaceChildren(el("p", { class: "note", text: await errorText(resp) }));
      return;
    }
    const data = await resp.json();
    const list = el("ol", { class: "similar-list" });
    for (const s of data.results) {
      list.append(el("li", { class: "similar-hit", "data-pmid": String(s.pmid) },
        articleHead(s, "h4"),
        el("div", { class: "cosine", text: `similarity ${fmt(s.similarity)}` })));
    }
    region.replaceChildren(
      el("h3", { text: `Similar to PMID ${hit.pmid}` }),
      data.results.length ? list : el("p", { class: "note", text: "No similar articles." }));
    region.dataset.loaded = "1";
  } catch (e) {
    region.replaceChildren(el("p", { class: "note", text: `The server could not be reached: ${e}` }));
  }
}

function render(data) {
  const list = $("results");
  list.replaceChildren();
  $("toolbar").hidden = false;
  const n = data.results.length;
  const first = (data.offset || 0) + 1;
  const range = n ? ` (${first}–${first + n - 1})` : "";
  $("count").textContent = `${n} result${n === 1 ? "" : "s"}${range} · ${data.mode}` +
    `${data.sort === "date" ? " · newest first" : ""} · index ${data.index_version}` +
    ` · model ${data.model_version}`;
  renderPager(data, n);
  if (!n) {
    list.append(el("li", { class: "empty", text: data.offset
      ? "No more results." : "No article matches this query and these filters." }));
    return;
  }
  const o = data.options;
  const full = Math.max(1e-9, o.w_similarity + o.w_recency + o.w_citation);
  data.results.forEach((hit, i) => {
    const score = el("div", { class: "scorebox" },
      el("div", { class: "score", text: fmt(hit.score) }), stackedBar(hit, full));
    const region = el("section", { class: "similar", id: `similar-${hit.pmid}`,
                                   "aria-live": "polite", "aria-label": `Articles similar to PMID ${hit.pmid}` });
    region.hidden = true;
    const simButton = el("button", { type: "button", class: "similar-btn",
      "aria-expanded": "false", "aria-controls": region.id, text: "Similar articles" });
    simButton.addEventListener("click", () => toggleSimilar(hit, simButton, region));
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", "data-relevant": "true", text: "Relevant" }),
      el("button", { type: "button", "data-relevant": "false", text: "Not relevant" }),
      simButton, el("span", { class: "thanks", role: "status" }));
    for (const b of actions.querySelectorAll("button[data-relevant]")) {
      b.addEventListener("click", () =>
        sendFeedback(data.query, hit, b.dataset.relevant === "true", actions));
    }
    const body = el("div", { class: "body" }, articleHead(hit, "h3"));
    if (hit.snippet) body.append(el("p", { class: "snippet" }, ...marked(hit.snippet.text, hit.snippet.highlights)));
    body.append(tagLine(hit), linkLine(hit));
    list.append(el("li", { class: hit.retracted ? "hit retracted" : "hit", "data-pmid": String(hit.pmid) },
      el("div", { class: "rank", text: `${(data.offset || 0) + i + 1}.` }),
      body, score, explanation(hit), actions, region));
  });
}

function renderPager(data, n) {
  const k = parseInt($("k").value, 10) || 20;
  $("pager").hidden = !(data.offset || data.has_more);
  $("prev").disabled = !data.offset;
  $("next").disabled = !data.has_more || n === 0;
  const page = Math.floor((data.offset || 0) / k) + 1;
  $("page-info").textContent = `Page ${page}`;
}

function goPage(delta) {
  const k = parseInt($("k").value, 10) || 20;
  offset = Math.max(0, offset + delta * k);
  runSearch().then(() => $("count").focus());
}

function setExports(p) {
  for (const f of ["ris", "bibtex", "csv"]) {
    const q = new URLSearchParams(p);
    q.set("format", f);
    q.set("k", p.get("k") || "20");  // the page shown: its k and its offset
    q.set("offset", p.get("offset") || "0");
    $(`export-${f}`).href = `export?${q.toString()}`;
  }
}

// A read the API answered 429 (the client's request rate) is asked once more after the
// server's Retry-After (at most 5 s): a quick series of clicks waits instead of failing.
async function fetchPatient(url) {
  let resp = await fetch(url);
  if (resp.status === 429) {
    const wait = Math.min(5, Math.max(1, Number(resp.headers.get("Retry-After")) || 1));
    await new Promise((done) => setTimeout(done, wait * 1000));
    resp = await fetch(url);
  }
  return resp;
}

async function runSearch() {
  const p = params();
  if (!p.get("q")) return;
  showError("");
  $("go").disabled = true;
  history.replaceState(null, "", `?${p.toString()}`);
  try {
    const resp = await fetchPatient(`search?${p.toString()}`);
    if (!resp.ok) {
      showError(await errorText(resp));
      return;
    }
    render(await resp.json());
    setExports(p);
  } catch (e) {
    showError(`The server could not be reached: ${e}`);
  } finally {
    $("go").disabled = false;
  }
}

async function loadStatus() {
  try {
    const resp = await fetchPatient("status");
    if (!resp.ok) throw new Error(await errorText(resp));
    const s = await resp.json();
    defaults = { w_sim: s.scoring.weight_similarity, w_recency: s.scoring.weight_recency,
                 w_citation: s.scoring.weight_citation,
                 half_life: s.scoring.recency_half_life_days };
    const idx = s.index ? `index ${s.index.version} (${s.index.size} vectors, ` +
      `published ${(s.index.published_at || "").slice(0, 16).replace("T", " ")})`
      : "no index published yet";
    $("status").textContent = `${s.articles.live.toLocaleString()} articles · newest ` +
      `${s.articles.newest_best_date || "–"} · ${idx} · model ${s.model_version}`;
  } catch (e) {
    $("status").textContent = `status unavailable: ${e.message || e}`;
  }
}

async function init() {
  await loadStatus();
  for (const w of WEIGHTS) { $(w).value = defaults[w]; $(w).addEventListener("input", syncSliders); }
  $("half_life").value = defaults.half_life;
  const p = new URLSearchParams(location.search);
  applyParams(p);
  $("search").addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; runSearch(); });
  for (const id of Object.keys(CHOICES)) {
    $(id).addEventListener("change", () => { offset = 0; if ($("q").value.trim()) runSearch(); });
  }
  $("prev").addEventListener("click", () => goPage(-1));
  $("next").addEventListener("click", () => goPage(1));
  if (p.get("q")) runSearch();
}
init();
