// The litpulse search page (index.html). Served as a file so that the page's
// Content-Security-Policy can forbid inline script.
"use strict";
const $ = (id) => document.getElementById(id);
const WEIGHTS = ["w_sim", "w_lexical", "w_recency", "w_citation"];  // the sliders
const SCORING = [...WEIGHTS, "half_life"];  // sent only when chosen: see `chosen`
const COMPONENTS = [["similarity", "sim"], ["lexical", "lex"], ["recency", "rec"],
                    ["citation", "cit"]];
const CHOICES = { mode: "hybrid", sort: "score" };  // selectors and their defaults
// Filters /search takes more than once (an article must match all): the URL parameter,
// its first field, and the label of each further field.
const MULTI = { mesh: { input: "mesh", label: "and MeSH descriptor" },
                type: { input: "ptype", label: "and publication type" } };
const MAX_TERMS = 20;  // the API's limit of values per repeated filter
const PAGE_K = 20;  // results per page when the form's field is empty
const SIMILAR_PAGE = 5;  // similar articles per page under a result
// The server's scoring defaults (GET /status); these stand in when it cannot be read.
let defaults = { w_sim: 1, w_lexical: 0.35, w_recency: 0.15, w_citation: 0.1, half_life: 365 };
let defaultsKnown = false;
// The scoring values the researcher chose (a slider moved, the half-life typed) or the
// page's URL carried: id -> text sent. Everything else is left to the server's defaults,
// so a default is never sent back rounded, nor kept in a link once the server changes it.
const chosen = new Map();
let shown = null;  // URLSearchParams of the search whose results the page shows
// The list the last page shown was a slice of: its search (offset aside), index version
// and store version; a page of the same search from another list says so.
let lastList = null;
let searchSeq = 0;  // the latest search started: answers to earlier ones are dropped
let pageSearch = location.search;  // the query string the page's state comes from
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
  if (x === null || x === undefined) return "–";
  const text = Number(x).toFixed(digits);
  return /^-0\.?0*$/.test(text) ? text.slice(1) : text;  // never a negative zero
}

// Show or hide a block (app.css makes `hidden` win over the blocks' own `display`).
function reveal(node, on) {
  node.hidden = !on;
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

// The search the form describes (what a submit asks), at `offset`.
function params(offset = 0) {
  const p = new URLSearchParams();
  p.set("q", $("q").value.trim());
  p.set("k", String(parseInt($("k").value, 10) || PAGE_K));
  for (const id of ["since", "until"]) {
    const v = $(id).value.trim();
    if (v) p.set(id, v);
  }
  for (const v of multiValues("mesh")) p.append("mesh", v);
  const lang = $("language").value.trim();
  if (lang) p.set("language", lang);
  for (const v of multiValues("type")) p.append("type", v);
  if ($("has_abstract").checked) p.set("has_abstract", "true");
  if ($("include_retracted").checked) p.set("include_retracted", "true");
  for (const id of SCORING) if (chosen.has(id)) p.set(id, chosen.get(id));
  for (const [id, dflt] of Object.entries(CHOICES)) if ($(id).value !== dflt) p.set(id, $(id).value);
  if (offset > 0) p.set("offset", String(offset));
  return p;
}

function offsetOf(p) {
  return Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
}

// The form set to the search of a URL: every field, those the URL leaves out to their
// defaults (Back and Forward apply the URL of another search to a filled form).
function applyParams(p) {
  $("q").value = p.get("q") || "";
  for (const id of ["since", "until", "language"]) $(id).value = p.get(id) || "";
  $("k").value = p.get("k") || $("k").defaultValue;
  for (const name of Object.keys(MULTI)) setMulti(name, p.getAll(name));
  $("has_abstract").checked = p.get("has_abstract") === "true";
  $("include_retracted").checked = p.get("include_retracted") === "true";
  chosen.clear();
  for (const id of SCORING) {
    const v = (p.get(id) || "").trim();
    if (v) chosen.set(id, v);
  }
  showScoring();
  for (const [id, dflt] of Object.entries(CHOICES)) $(id).value = p.get(id) || dflt;
  const custom = ["since", "until", "mesh", "type", "language", "has_abstract",
                  "include_retracted", ...SCORING].some((x) => p.has(x));
  if (custom) $("filters").open = true;
}

// The fields of a repeated filter: its first field and the ones added after it.
function multiInputs(name) {
  return [$(MULTI[name].input), ...document.querySelectorAll(`input[data-also="${name}"]`)];
}

function multiValues(name) {
  return multiInputs(name).map((i) => i.value.trim()).filter(Boolean);
}

function addMultiInput(name, value) {
  const inputs = multiInputs(name);
  const input = inputs[0].cloneNode(false);  // its type, length limit, suggestions
  input.removeAttribute("id");
  input.dataset.also = name;
  input.value = value;
  input.addEventListener("input", () => growMulti(name));
  inputs[inputs.length - 1].closest("label").after(el("label", {}, `${MULTI[name].label} `, input));
}

// One empty field after the last filled one, for one more value (up to the API's limit).
function growMulti(name) {
  const inputs = multiInputs(name);
  if (inputs[inputs.length - 1].value.trim() && inputs.length < MAX_TERMS) addMultiInput(name, "");
}

function setMulti(name, values) {
  for (const input of multiInputs(name).slice(1)) input.closest("label").remove();
  $(MULTI[name].input).value = values[0] || "";
  for (const v of values.slice(1)) addMultiInput(name, v);
  growMulti(name);
}

// A weight as the page shows it: two decimals, more where the value has them.
function weightText(v) {
  const x = Number(v);
  if (v === "" || !Number.isFinite(x)) return String(v);
  return Number(x.toFixed(2)) === x ? x.toFixed(2) : String(x);
}

// The sliders and the half-life field show the chosen values, else the server's defaults,
// exactly: a range is widened to hold a value beyond it (step="any" keeps any value).
function showScoring() {
  for (const id of SCORING) {
    const input = $(id);
    const v = chosen.has(id) ? chosen.get(id) : String(defaults[id]);
    const x = Number(v);
    if (input.type === "range" && Number.isFinite(x)) {
      input.max = String(Math.max(Number(input.dataset.max || input.max), Math.ceil(x)));
    }
    input.value = v;
  }
  $("half_life").placeholder = String(defaults.half_life);  // emptied: the server's default
  syncSliders();
}

function syncSliders() {
  for (const w of WEIGHTS) {
    const out = $(w + "_out");
    if (chosen.has(w)) out.textContent = weightText(chosen.get(w));
    else out.textContent = defaultsKnown ? `${weightText(defaults[w])} (server default)`
      : "(server default)";
  }
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
    text: [hit.journal, hit.published || hit.best_date || hit.pub_year, `PMID ${hit.pmid}`]
      .filter(Boolean).join(" · ") });
  if (hit.retracted || hit.explanation.retracted) {
    meta.append(el("span", { class: "badge", text: "Retracted article" }));
  }
  const kind = { chapter: "Book chapter", book: "Book" }[hit.kind];
  if (kind) meta.append(el("span", { class: "badge kind", text: kind }));
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

// A result's "Similar articles" button and the region it opens.
function similarParts(hit) {
  const region = el("section", { class: "similar", id: `similar-${hit.pmid}`,
                                 "aria-live": "polite", "aria-label": `Articles similar to PMID ${hit.pmid}` });
  region.hidden = true;
  const button = el("button", { type: "button", class: "similar-btn",
    "aria-expanded": "false", "aria-controls": region.id, text: "Similar articles" });
  button.addEventListener("click", () => toggleSimilar(hit, button, region));
  return [button, region];
}

async function toggleSimilar(hit, button, region) {
  const open = button.getAttribute("aria-expanded") !== "true";
  button.setAttribute("aria-expanded", String(open));
  region.hidden = !open;
  if (!open || region.dataset.loaded) return;
  region.replaceChildren(el("p", { class: "note", text: "Loading similar articles…" }));
  // the filter of the search shown, not a change of the form not yet searched
  const retracted = Boolean(shown && shown.get("include_retracted") === "true");
  const page = async (offset) => {
    const q = new URLSearchParams({ k: String(SIMILAR_PAGE), offset: String(offset) });
    if (retracted) q.set("include_retracted", "true");
    return fetchPatient(`similar/${encodeURIComponent(hit.pmid)}?${q.toString()}`);
  };
  try {
    const resp = await page(0);
    if (!resp.ok) {
      region.replaceChildren(el("p", { class: "note", text: await errorText(resp) }));
      return;
    }
    const data = await resp.json();
    const list = el("ol", { class: "similar-list" });
    const add = (results) => {
      for (const s of results) {
        list.append(el("li", { class: "similar-hit", "data-pmid": String(s.pmid) },
          articleHead(s, "h4"),
          el("div", { class: "cosine", text: `similarity ${fmt(s.similarity)}` })));
      }
    };
    add(data.results);
    region.replaceChildren(
      el("h3", { text: `Similar to PMID ${hit.pmid}` }),
      data.results.length ? list : el("p", { class: "note", text: "No similar articles." }));
    region.dataset.loaded = "1";
    if (data.has_more) region.append(moreSimilar(list, add, page));
  } catch (e) {
    region.replaceChildren(el("p", { class: "note", text: `The server could not be reached: ${e}` }));
  }
}

// "More similar articles": the next page of the same list (the API's offset), appended;
// the button goes when no page follows, and says so when a page fails.
function moreSimilar(list, add, page) {
  const button = el("button", { type: "button", class: "more-similar",
                                text: "More similar articles" });
  const note = el("p", { class: "note", hidden: true });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const resp = await page(list.children.length);
      if (!resp.ok) {
        note.textContent = await errorText(resp);
        note.hidden = false;
        return;
      }
      const data = await resp.json();
      add(data.results);
      note.hidden = true;
      if (!data.has_more || !data.results.length) button.remove();
    } catch (e) {
      note.textContent = `The server could not be reached: ${e}`;
      note.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  return el("div", { class: "similar-more" }, button, note);
}

// What the query does not do that its syntax may suggest (Google's -word is searched for),
// each with what to write instead, above the results.
function showNotes(notes) {
  $("notes").replaceChildren(...notes.map((text) => el("li", { text })));
  reveal($("notes"), notes.length > 0);
}

// Whether `data`, a page of the search `p`, comes from another list than the page shown
// before it (a new index, or articles or citations stored meanwhile): its pages are then
// no longer slices of one list.
function listChanged(p, data) {
  const q = new URLSearchParams(p);
  q.delete("offset");
  const list = { search: q.toString(), index: data.index_version, store: data.store_version };
  const before = lastList;
  lastList = list;
  return Boolean(before && before.search === list.search && data.offset &&
    (before.index !== list.index || before.store !== list.store));
}

function render(data, p) {
  const list = $("results");
  list.replaceChildren();
  const notes = [...(data.notes || [])];
  if (p && listChanged(p, data)) {
    notes.unshift("The results changed since the page before (a new index, or articles " +
      "or citations stored meanwhile): this page is of the new list, and may repeat or " +
      "miss an article of the pages before. Go back to page 1 to read it whole.");
  }
  showNotes(notes);
  $("toolbar").classList.remove("lookup");
  reveal($("toolbar"), true);
  const n = data.results.length;
  const first = (data.offset || 0) + 1;
  const range = n ? ` (${first}–${first + n - 1})` : "";
  const excluded = (data.excluded || [])
    .map((w) => (/\s/.test(w) ? `NOT "${w}"` : `NOT ${w}`)).join(", ");
  $("count").textContent = `${n} result${n === 1 ? "" : "s"}${range} · ${data.mode}` +
    `${data.sort === "date" ? " · newest first" : ""}` +
    `${excluded ? ` · excluding ${excluded}` : ""}` +
    `${(data.authors || []).length ? ` · authors ${data.authors.join(", ")}` : ""}` +
    ` · index ${data.index_version}` +
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
    const [simButton, region] = similarParts(hit);
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

// Results per page of a search: its k (the API's default 10 where it has none).
function pageSize(p) {
  return parseInt(p.get("k"), 10) || 10;
}

function renderPager(data, n) {
  const k = pageSize(shown);
  reveal($("pager"), Boolean(data.offset || data.has_more));
  $("prev").disabled = !data.offset;
  $("next").disabled = !data.has_more || n === 0;
  const page = Math.floor((data.offset || 0) / k) + 1;
  $("page-info").textContent = `Page ${page}`;
}

// Previous or Next page of the search shown: its query, filters, k and offset, whatever
// the form holds now (the form is asked on submit only).
function goPage(delta) {
  if (!shown) return;
  const p = new URLSearchParams(shown);
  const offset = Math.max(0, offsetOf(shown) + delta * pageSize(shown));
  if (offset > 0) p.set("offset", String(offset));
  else p.delete("offset");
  runSearch(p, "push").then((done) => { if (done) $("count").focus(); });
}

function setExports(p) {
  for (const f of ["ris", "bibtex", "csv"]) {
    const q = new URLSearchParams(p);
    q.set("format", f);
    q.set("k", String(pageSize(p)));  // the page shown: its k and its offset
    q.set("offset", String(offsetOf(p)));
    $(`export-${f}`).href = `export?${q.toString()}`;
  }
}

// No search shown: no results, count, pages nor export links (after an error, or Back to
// the page without a query), so that nothing of another search stays under its URL.
function clearResults() {
  shown = null;
  $("results").replaceChildren();
  $("count").textContent = "";
  showNotes([]);
  $("toolbar").classList.remove("lookup");
  reveal($("toolbar"), false);
  reveal($("pager"), false);
  for (const f of ["ris", "bibtex", "csv"]) $(`export-${f}`).setAttribute("href", "#");
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

// An answer that is no success: its message shown in place of any results (false).
async function refused(resp, current) {
  const message = await errorText(resp);
  if (current()) {
    clearResults();
    showError(message);
  }
  return false;
}

// A PMID or a DOI alone is no search: the API refuses it, naming where that article is
// (`article` in its 400, the server's own reading of the query), and the page shows it.
async function showArticle(path, current) {
  const where = path.replace(/^\//, "");  // relative, as every request of the page
  const resp = await fetchPatient(where);
  if (!current()) return false;
  if (!resp.ok) return refused(resp, current);
  const data = await resp.json();
  if (!current()) return false;
  clearResults();
  renderArticle(data, where);
  $("toolbar").classList.add("lookup");  // no legend nor exports: no score, no list
  reveal($("toolbar"), true);
  $("count").textContent = `1 result · the article of PMID ${data.pmid}`;
  return true;
}

// One stored article (a PMID or a DOI looked up) as the one result: its head, abstract,
// MeSH and links, and its similar articles; no score, pages nor exports.
function renderArticle(a, path) {
  const names = (a.authors || []).map((x) => x.name || x.collective_name ||
    [x.last_name, x.initials || x.fore_name].filter(Boolean).join(" ")).filter(Boolean);
  const hit = {
    pmid: a.pmid, title: a.title, journal: a.journal, best_date: a.best_date,
    pub_year: a.pub_year, authors: names, author_count: names.length,
    retracted: a.is_retracted, explanation: {}, doi: a.doi, links: a.links,
    mesh: (a.mesh || []).map((m) => m.descriptor).filter(Boolean),
    publication_types: a.publication_types || [],
  };
  const body = el("div", { class: "body" }, articleHead(hit, "h3"));
  if (a.abstract) body.append(el("p", { class: "snippet", text: a.abstract }));
  body.append(tagLine(hit), linkLine(hit));
  const same = (a.same_doi || []).map((p) => `PMID ${p}`).join(", ");
  body.append(el("p", { class: "lookup", text: `The query names this article (GET /${path})` +
    (same ? `; PubMed gave its DOI to ${same} too.` : ".") }));
  const [simButton, region] = similarParts(hit);
  $("results").append(el("li", { class: hit.retracted ? "hit retracted" : "hit",
                                 "data-pmid": String(hit.pmid) },
    el("div", { class: "rank", text: "1." }), body, el("div", { class: "actions" }, simButton),
    region));
}

// Search with `p` and show its answer. `how` the URL follows: "push" (a new search or
// page: a history entry of its own, Back returns to the one before), "replace" (the URL
// the page was opened with) or "none" (Back/Forward: the URL is already this search's).
// True when its results are shown.
async function runSearch(p, how) {
  if (!p.get("q")) return false;
  const seq = ++searchSeq;
  const current = () => seq === searchSeq;
  showError("");
  const url = `?${p.toString()}`;
  if (how === "push" && location.search !== url) history.pushState(null, "", url);
  else if (how !== "none") history.replaceState(null, "", url);
  pageSearch = location.search;
  $("go").disabled = true;
  $("prev").disabled = $("next").disabled = true;  // until this page is shown
  try {
    const resp = await fetchPatient(`search?${p.toString()}`);
    if (!current()) return false;
    if (!resp.ok) {
      const body = resp.status === 400 ? await resp.clone().json().catch(() => ({})) : {};
      if (body.article) return await showArticle(body.article, current);
      return refused(resp, current);
    }
    const data = await resp.json();
    if (!current()) return false;
    shown = p;
    render(data, p);
    setExports(p);
    return true;
  } catch (e) {
    if (current()) {
      clearResults();
      showError(`The server could not be reached: ${e}`);
    }
    return false;
  } finally {
    if (current()) $("go").disabled = false;
  }
}

// Back or Forward to another entry of this page: the form and the results of its URL.
function onPopState() {
  if (location.search === pageSearch) return;  // only the fragment moved (the skip link)
  pageSearch = location.search;
  const p = new URLSearchParams(location.search);
  applyParams(p);
  if (p.get("q")) {
    runSearch(params(offsetOf(p)), "none");
    return;
  }
  searchSeq += 1;  // an answer still awaited belongs to another entry
  $("go").disabled = false;
  clearResults();
  showError("");
}

async function loadStatus() {
  try {
    const resp = await fetchPatient("status");
    if (!resp.ok) throw new Error(await errorText(resp));
    const s = await resp.json();
    defaults = { w_sim: s.scoring.weight_similarity, w_recency: s.scoring.weight_recency,
                 w_citation: s.scoring.weight_citation,
                 w_lexical: s.scoring.weight_lexical ?? defaults.w_lexical,
                 half_life: s.scoring.recency_half_life_days };
    defaultsKnown = true;
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
  for (const w of WEIGHTS) {
    $(w).dataset.max = $(w).max;  // the range the page offers; widened for larger values
    $(w).addEventListener("input", () => {
      chosen.set(w, String(Math.round(Number($(w).value) * 100) / 100));
      syncSliders();
    });
  }
  $("half_life").addEventListener("input", () => {
    const v = $("half_life").value.trim();
    if (v) chosen.set("half_life", v);
    else chosen.delete("half_life");  // emptied: the server's default again
  });
  for (const name of Object.keys(MULTI)) {
    $(MULTI[name].input).addEventListener("input", () => growMulti(name));
  }
  const p = new URLSearchParams(location.search);
  applyParams(p);
  $("search").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(params(), "push"); });
  for (const id of Object.keys(CHOICES)) {
    $(id).addEventListener("change", () => { if ($("q").value.trim()) runSearch(params(), "push"); });
  }
  $("prev").addEventListener("click", () => goPage(-1));
  $("next").addEventListener("click", () => goPage(1));
  window.addEventListener("popstate", onPopState);
  if (p.get("q")) runSearch(params(offsetOf(p)), "replace");
}
reveal($("toolbar"), false);  // nothing searched yet: as the markup says
reveal($("pager"), false);
init();
