// Saved searches on the search page: "Save this search" and the list with feed links.
// Loaded after app.js, whose params(), apiToken(), el(), showError() and errorText() it uses.
"use strict";

function savedBody(name) {
  const p = params();
  const body = { name, query: p.get("q") || "" };
  for (const id of ["since", "until", "language"]) if (p.get(id)) body[id] = p.get(id);
  if (p.has("mesh")) body.mesh = p.getAll("mesh");  // every value: all must hold
  if (p.has("type")) body.publication_type = p.getAll("type");
  if (p.get("has_abstract")) body.has_abstract = true;
  if (p.get("include_retracted")) body.include_retracted = true;
  const min = document.getElementById("save-min-score").value.trim();
  if (min) body.min_score = Number(min);
  return body;
}

async function saveSearch() {
  const query = document.getElementById("q").value.trim();
  if (!query) { showError("Type a query first, then save it."); return; }
  const name = (window.prompt("Name of this saved search:", query.slice(0, 60)) || "").trim();
  if (!name) return;
  const token = apiToken();
  if (!token) return;
  const resp = await fetch("alerts", {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token}` },
    body: JSON.stringify(savedBody(name)),
  });
  if (!resp.ok) { showError(`Could not save the search: ${await errorText(resp)}`); return; }
  showError("");
  await loadSaved();
}

async function loadSaved() {
  const list = document.getElementById("saved-list");
  const resp = await fetch("alerts");
  if (!resp.ok) { list.replaceChildren(el("li", { text: await errorText(resp) })); return; }
  const items = await resp.json();
  list.replaceChildren(...items.map((s) => el("li", { "data-id": String(s.id) },
    el("span", { class: "saved-name", text: s.name }), " — ",
    el("span", { class: "saved-query", text: s.query }),
    ` (${s.matches} match${s.matches === 1 ? "" : "es"}) `,
    el("a", { href: s.feed.replace(/^\//, ""), class: "feed", text: "Atom feed" }),
    // why it cannot be searched, and what its query does not do (-word: the word is found)
    ...[s.problem, ...(s.notes || [])].filter(Boolean)
      .map((text) => el("div", { class: "saved-note", text })))));
  if (!items.length) list.replaceChildren(el("li", { text: "No saved searches yet." }));
}

document.getElementById("save-search").addEventListener("click", saveSearch);
loadSaved();
