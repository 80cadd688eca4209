// One knowledge bank: overview (settings, schema), search, documents, ingest (with job progress), evaluate.
"use strict";

const SEARCH_TYPES = ["similarity", "similarity_score_threshold", "mmr", "keyword", "hybrid", "semantic_hybrid"];
const TABS = ["overview", "search", "documents", "ingest", "evaluate"];
const DEFAULT_SEARCH_TYPES = SEARCH_TYPES.filter((t) => t !== "similarity_score_threshold");  // (it needs a threshold)

pages.knowledgeBank = async function (projectKey, kbId, tab) {
  const base = api.kb(projectKey, kbId);
  const [info, settings, count] = await Promise.all([api.get(base), api.get(base + "/settings"), api.get(base + "/count")]);
  const here = "#/p/" + encodeURIComponent(projectKey) + "/kb/" + encodeURIComponent(kbId);
  app.crumbs([{ text: "Projects", href: "#/" }, { text: projectKey, href: "#/p/" + encodeURIComponent(projectKey) },
    { text: info.name }]);
  const ctx = { projectKey, kbId, base, info, settings, count: count.count };
  const body = await kbTabs[tab in kbTabs ? tab : "overview"](ctx);
  app.main().replaceChildren(h("section", { class: "card" },
    h("h1", {}, "Knowledge bank " + info.name),
    h("p", { class: "muted" }, info.vector_store_type + " · " + info.embedding_llm_id + " · ",
      h("span", { id: "kb-count" }, String(ctx.count)), " documents · id " + kbId),
    h("nav", { class: "tabs" }, TABS.map((t) => h("a", { href: here + "/" + t, id: "tab-" + t, class: t === tab ? "active" : "" }, t))),
    body));
};

const kbTabs = {
  async overview(ctx) {
    const schema = ctx.settings.metadata_schema || {};
    const search = ctx.settings.search || {};
    const folders = await api.get(api.project(ctx.projectKey) + "/folders");
    const shown = (value) => (value === undefined || value === null ? "-" : typeof value === "object" ? JSON.stringify(value) : String(value));
    return h("div", { id: "overview" },
      table(["", ""], [["Store", ctx.info.vector_store_type], ["Embedding model", ctx.info.embedding_llm_id],
        ["Documents", String(ctx.count)], ["Images folder", ctx.settings.images_folder || "-"],
        ["Default search type", shown(search.default_search_type || "similarity")], ["Default k", shown(search.default_k || 4)],
        ["Fusion", search.fusion ? shown(search.fusion) : "the server's default"], ["Reranker", search.reranker ? shown(search.reranker) : "none"]], "", { id: "settings-summary" }),
      h("h2", {}, "Metadata schema"),
      table(["Key", "Type"], Object.entries(schema), "No schema: any metadata is accepted.", { id: "schema" }),
      h("h2", {}, "Edit settings"), settingsForm(ctx, folders),
      h("h2", {}, "All settings"), json(ctx.settings));
  },

  async search(ctx) {
    const defaults = ctx.settings.search || {};  // the knowledge bank's default search type and k, set on the overview
    const filterBox = messageBox("filter-message");
    const message = messageBox("search-message");
    const results = h("div", { id: "results" });
    const form = h("form", { id: "search", class: "stack", onsubmit: async (e) => {
      e.preventDefault();
      filterBox.clear(); message.clear(); results.replaceChildren();
      const v = formValues(e.target);
      const body = { query: v.query, search_type: v.search_type, k: Number(v.k) };
      for (const name of ["fetch_k", "lambda_mult", "score_threshold"]) if (v[name] !== "") body[name] = Number(v[name]);
      if (v.filter.trim()) {
        try { body.filter = JSON.parse(v.filter); } catch (err) { return filterBox.show("The filter is not valid JSON: " + err.message); }
      }
      try {
        const started = performance.now();
        const out = await api.post(ctx.base + "/search", body);
        message.show(out.results.length + " results in " + Math.round(performance.now() - started) + " ms", "ok");
        results.replaceChildren(...out.results.map((hit, i) => renderHit(hit, i + 1)));
      } catch (err) {
        // filter mistakes are shown under the filter editor, the rest under the form
        if (err.code === "invalid_filter") filterBox.show(explain(err)); else report(message, err);
      }
    } },
      field("Query", h("input", { name: "query", id: "query", required: true, size: 60 })),
      h("div", { class: "inline-form" },
        field("Search type", h("select", { name: "search_type", id: "search-type" }, SEARCH_TYPES.map((t) =>
          h("option", { value: t, selected: t === (defaults.default_search_type || "similarity") }, t)))),
        field("k", h("input", { name: "k", id: "k", type: "number", min: 1, value: defaults.default_k || 4, size: 4 })),
        field("fetch_k (mmr)", h("input", { name: "fetch_k", type: "number", min: 1, placeholder: "20", size: 5 })),
        field("lambda_mult (mmr)", h("input", { name: "lambda_mult", type: "number", min: 0, max: 1, step: "any", placeholder: "0.5", size: 5 })),
        field("score_threshold", h("input", { name: "score_threshold", id: "score-threshold", type: "number", step: "any", size: 6 }))),
      field("Filter (JSON)", h("textarea", { name: "filter", id: "filter", rows: 3, cols: 60,
        placeholder: '{"source": "guide", "year": {"$gte": 2020}}' }),
      "Operators: $eq $ne $gt $gte $lt $lte $in $nin on a key; $and $or $not to combine."),
      filterBox, h("button", { type: "submit" }, "Search"), message);
    return h("div", {}, form, results);
  },

  async documents(ctx) {
    const message = messageBox("documents-message");
    const list = h("div", { id: "documents" });
    const state = { offset: 0, limit: 25, filter: "" };
    const load = async () => {
      message.clear();
      const params = new URLSearchParams({ offset: state.offset, limit: state.limit });
      if (state.filter) params.set("filter", state.filter);
      try {
        const page = await api.get(ctx.base + "/documents?" + params);
        const counter = document.getElementById("kb-count");
        if (counter && !state.filter) counter.textContent = String(page.total);  // after deletes too
        const rows = page.documents.map((d) => [h("input", { type: "checkbox", value: d.id, class: "pick" }), h("code", {}, d.id),
          h("div", { class: "text" }, d.text), h("code", { class: "meta" }, JSON.stringify(d.metadata))]);
        list.replaceChildren(
          h("p", { class: "muted" }, "Documents " + (page.total ? page.offset + 1 : 0) + "–" + (page.offset + page.documents.length) + " of " + page.total),
          table(["", "Id", "Text", "Metadata"], rows, "No documents.", { id: "document-table" }),
          h("div", { class: "inline-form" },
            h("button", { type: "button", disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(); } }, "Previous"),
            h("button", { type: "button", disabled: page.offset + page.documents.length >= page.total, onclick: () => { state.offset += state.limit; load(); } }, "Next"),
            h("button", { type: "button", class: "danger", id: "delete-documents", onclick: async () => {
              const ids = [...list.querySelectorAll("input.pick:checked")].map((c) => c.value);
              if (!ids.length) return message.show("Tick the documents to delete first.");
              try {
                const out = await api.post(ctx.base + "/documents/delete", { ids });
                await load();  // (clears the message box: the result is shown after)
                message.show("Deleted " + out.deleted + " documents.", "ok");
              } catch (err) { report(message, err); }
            } }, "Delete ticked")));
      } catch (err) { report(message, err); }
    };
    const filterForm = h("form", { class: "inline-form", onsubmit: (e) => { e.preventDefault(); state.filter = formValues(e.target).filter.trim(); state.offset = 0; load(); } },
      field("Filter (JSON)", h("input", { name: "filter", size: 50 })), h("button", { type: "submit" }, "Apply"));
    await load();
    return h("div", {}, filterForm, message, list);
  },

  async ingest(ctx) {
    const folders = await api.get(api.project(ctx.projectKey) + "/folders");
    const message = messageBox("ingest-message");
    const status = h("div", { id: "job" });
    if (!folders.length) {
      return h("p", { class: "muted" }, "Ingestion reads a file of a managed folder: create a folder on the project page first.");
    }
    const folderSelect = h("select", { name: "folder", id: "ingest-folder" }, folders.map((f) => h("option", { value: f.id }, f.name)));
    const fileSelect = h("select", { name: "path", id: "ingest-path" });
    const refreshFiles = async () => {
      try {
        const files = await api.get(api.folder(ctx.projectKey, folderSelect.value) + "/files");
        fileSelect.replaceChildren(...files.map((p) => h("option", { value: p }, p)));
      } catch (err) { report(message, err); }
    };
    folderSelect.addEventListener("change", refreshFiles);
    await refreshFiles();
    const upload = h("div", {}, h("h2", {}, "1. Upload a file into a folder"),
      h("p", { class: "muted" }, "JSONL, CSV, Parquet or Arrow; one row per document, a text column and metadata columns."),
      uploadForm(ctx.projectKey, () => folderSelect.value, refreshFiles));
    const form = h("form", { id: "ingest", class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      message.clear();
      const v = formValues(e.target);
      const body = { folder: v.folder, path: v.path, text_column: v.text_column || "text", chunk_size: Number(v.chunk_size) };
      if (v.id_column) body.id_column = v.id_column;
      if (v.metadata_columns.trim()) body.metadata_columns = v.metadata_columns.split(",").map((c) => c.trim()).filter(Boolean);
      try {
        const job = await api.post(ctx.base + "/ingest-jobs", body);
        followJob(ctx.projectKey, job.id, message, status);
      } catch (err) { report(message, err); }
    } },
      field("Folder", folderSelect), field("File", fileSelect),
      field("Text column", h("input", { name: "text_column", value: "text", size: 10 })),
      field("Id column", h("input", { name: "id_column", size: 10 })),
      field("Metadata columns", h("input", { name: "metadata_columns", id: "metadata-columns", size: 24 }),
        "comma-separated; default: the schema's keys, else every other column"),
      field("Chunk size", h("input", { name: "chunk_size", type: "number", min: 0, value: 1000, size: 6 })),
      h("button", { type: "submit" }, "Start ingestion"));
    return h("div", {}, upload, h("h2", {}, "2. Ingest it"), form, message, status);
  },

  async evaluate(ctx) {
    const message = messageBox("eval-message");
    const out = h("div", { id: "eval-results" });
    const form = h("form", { id: "evaluate", class: "stack", onsubmit: async (e) => {
      e.preventDefault();
      message.clear(); out.replaceChildren();
      const queries = e.target.elements.queries.files[0];
      const qrels = e.target.elements.qrels.files[0];
      const types = [...e.target.querySelectorAll("input.stype:checked")].map((c) => c.value);
      try {
        message.show("Evaluating…", "ok");
        const result = await api.post(ctx.base + "/evaluate", { queries: await readText(queries), qrels: await readText(qrels), search_types: types });
        message.show(result.judged_queries + " judged queries of " + result.queries, "ok");
        out.replaceChildren(table(["Search type", ...result.metrics, "queries/s"],
          Object.entries(result.results).map(([type, m]) => [type, ...result.metrics.map((k) => fmt(m[k])), fmt(m.queries_per_second)]),
          "", { id: "metrics" }));
      } catch (err) { report(message, err); }
    } },
      field("Queries (BEIR queries.jsonl: _id, text)", h("input", { type: "file", name: "queries", id: "eval-queries", required: true })),
      field("Qrels (TSV: query-id, corpus-id, score)", h("input", { type: "file", name: "qrels", id: "eval-qrels", required: true })),
      h("div", { class: "inline-form" }, SEARCH_TYPES.filter((t) => t !== "similarity_score_threshold").map((t) =>
        h("label", {}, h("input", { type: "checkbox", class: "stype", value: t, checked: ["similarity", "keyword", "hybrid"].includes(t) }), " " + t))),
      h("button", { type: "submit" }, "Evaluate"), message);
    return h("div", {}, form, out);
  },
};

function renderHit(hit, rank) {
  const scores = Object.entries(hit.scores || {});
  const images = h("div", { class: "images" });
  for (const image of hit.images || []) {
    if (!image.url) continue;
    const img = h("img", { alt: image.path, title: image.path, class: "hit-image" });
    api.imageUrl(image.url).then((url) => { img.src = url; }, (err) => { img.replaceWith(h("span", { class: "message error" }, image.path + ": " + explain(err))); });
    images.append(img);
  }
  return h("article", { class: "hit", "data-id": hit.id },
    h("header", {}, h("strong", {}, "#" + rank + " "), h("code", {}, hit.id), " score " + fmt(hit.score)),
    h("div", { class: "hit-body" },
      h("div", {},
        scores.length ? table(scores.map(([k]) => k), [scores.map(([, v]) => fmt(v))], "", { class: "scores" }) : null,
        h("p", { class: "text" }, hit.text),
        table(["Metadata", "Value"], Object.entries(hit.metadata).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
          "No metadata.", { class: "metadata" })),
      images));
}

// Poll a job until it ends: progress while it runs, then the report (or the error) as a table.
function followJob(projectKey, jobId, message, status) {
  const target = status || message;
  const bar = h("p", { id: "job-progress", class: "muted" }, "Job " + jobId + " queued…");
  if (status) status.replaceChildren(bar);
  const tick = async () => {
    let job;
    try { job = await api.get(api.project(projectKey) + "/jobs/" + encodeURIComponent(jobId)); } catch (err) { return report(message, err); }
    const p = job.progress || {};
    bar.textContent = "Job " + jobId + ": " + job.state + (p.rows_read !== undefined ? " — " + p.rows_read + " rows read, " + p.chunks_written + " chunks written, " + p.commits + " commits" : "");
    if (job.state === "succeeded") {
      const r = job.report || {};
      const keys = ["rows_read", "rows_written", "rows_skipped", "rows_rejected", "chunks_written", "chunks_skipped", "chunks_removed", "texts_embedded", "commits", "seconds"];
      target.append(...[h("h2", {}, "Ingestion report"), table(["", ""], keys.filter((k) => k in r).map((k) => [k, fmt(r[k])]), "", { id: "job-report" }),
        r.rejected && r.rejected.length ? table(["Rejected row", "Reason"], r.rejected.slice(0, 50).map((x) => [String(x.row), x.reason]), "") : null]
        .filter(Boolean));
    } else if (job.state === "failed") {
      message.show("Job failed: " + job.error.message + " (" + job.error.code + ")");
    } else {
      setTimeout(tick, 400);
    }
  };
  tick();
}

// The knowledge bank's editable settings: metadata schema, search defaults, fusion, reranker, images folder.
// Saved with PATCH (only these sections travel, so a masked secret elsewhere never comes back as "***"); the
// server checks the whole and answers 422 with what was wrong (an index type that cannot change on a non-empty
// knowledge bank, an unknown fusion method, ...), shown under the form. Changing settings needs admin.
function settingsForm(ctx, folders) {
  const canEdit = app.roleIn(ctx.projectKey) === "admin";
  const search = ctx.settings.search || {};
  const message = messageBox("settings-message");
  const rows = h("tbody", {});
  const addRow = (key, type) => {
    const row = h("tr", { class: "schema-row" },
      h("td", {}, h("input", { class: "schema-key", value: key || "", placeholder: "key", size: 18, "aria-label": "metadata key" })),
      h("td", {}, h("select", { class: "schema-type", "aria-label": "type" }, SCHEMA_TYPES.map((t) => h("option", { value: t, selected: t === type }, t)))),
      h("td", {}, h("button", { type: "button", class: "danger schema-remove", onclick: () => row.remove() }, "Remove")));
    rows.append(row);
    return row;
  };
  for (const [key, type] of Object.entries(ctx.settings.metadata_schema || {})) addRow(key, type);
  const jsonArea = (name, value, placeholder) => h("textarea", { name, id: "settings-" + name, rows: 2, cols: 56, placeholder },
    value ? JSON.stringify(value) : "");
  const folder = ctx.settings.images_folder || "";
  const known = folders.some((f) => ctx.projectKey + "." + f.id === folder);

  const form = h("form", { id: "kb-settings", class: "stack", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    message.clear();
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
    const bad = (el, text) => { el.classList.add("invalid"); el.focus(); message.show(text); };
    const schema = {};
    for (const row of rows.querySelectorAll("tr")) {
      const keyInput = row.querySelector(".schema-key");
      const key = keyInput.value.trim();
      if (!key) return bad(keyInput, "Every schema column needs a key (or remove the row).");
      if (key in schema) return bad(keyInput, "The schema names " + key + " twice.");
      schema[key] = row.querySelector(".schema-type").value;
    }
    const v = formValues(form);
    const next = {};
    if (v.default_search_type) next.default_search_type = v.default_search_type;
    if (v.default_k.trim()) {
      const k = Number(v.default_k);
      if (!Number.isInteger(k) || k < 1) return bad(form.elements.default_k, "Default k must be a whole number of 1 or more.");
      next.default_k = k;
    }
    for (const name of ["fusion", "reranker"]) {
      if (!v[name].trim()) continue;
      let value;
      try { value = JSON.parse(v[name]); } catch (err) { return bad(form.elements[name], name + " is not valid JSON: " + err.message); }
      if (value === null || typeof value !== "object" || Array.isArray(value)) return bad(form.elements[name], name + " must be a JSON object.");
      next[name] = value;
    }
    try {
      await api.patch(ctx.base + "/settings", { metadata_schema: schema, search: next, images_folder: v.images_folder || null });
    } catch (err) { return report(message, err); }
    await app.route();
    const saved = document.getElementById("settings-message");
    if (saved) saved.show("Settings saved.", "ok");
  } },
    h("fieldset", { class: "plain", id: "settings-fields", disabled: !canEdit },
      canEdit ? null : h("p", { class: "muted", id: "settings-note" }, "Changing settings needs the admin role on " + ctx.projectKey + "; yours is " + (app.roleIn(ctx.projectKey) || "none") + "."),
      h("fieldset", { class: "section" }, h("legend", {}, "Metadata schema"),
        h("table", { class: "editor", id: "schema-editor" }, rows),
        h("button", { type: "button", id: "add-column", onclick: () => addRow("", "string").querySelector("input").focus() }, "Add column"),
        h("p", { class: "muted" }, "Documents must match the schema; filters may use only its keys.")),
      h("fieldset", { class: "section" }, h("legend", {}, "Search"),
        h("div", { class: "inline-form" },
          field("Default search type", h("select", { name: "default_search_type", id: "default-search-type" },
            h("option", { value: "" }, "(not set: similarity)"),
            DEFAULT_SEARCH_TYPES.map((t) => h("option", { value: t, selected: t === search.default_search_type }, t)))),
          field("Default k", h("input", { name: "default_k", id: "default-k", type: "number", min: 1, step: 1, size: 5,
            placeholder: "4", value: search.default_k === undefined ? null : search.default_k }))),
        h("p", { class: "muted" }, "What a search that names no search type or k gets (REST, and the search tab's starting values)."),
        field("Fusion for hybrid search (JSON)", jsonArea("fusion", search.fusion, '{"method": "rrf"}  or  {"method": "linear", "weight": 0.4, "normalisation": "zscore"}'),
          "empty: the server's default fusion"),
        field("Reranker for semantic_hybrid (JSON)", jsonArea("reranker", search.reranker, '{"type": "cross-encoder", "path": "/models/reranker"}'),
          'or {"type": "http", "url": "https://…/rerank", "model": "…", "connection": "…"}; empty: none')),
      h("fieldset", { class: "section" }, h("legend", {}, "Images folder"),
        field("Where retrieval-content images are", h("select", { name: "images_folder", id: "images-folder" },
          h("option", { value: "" }, "(none)"),
          folders.map((f) => h("option", { value: ctx.projectKey + "." + f.id, selected: folder === ctx.projectKey + "." + f.id }, f.name)),
          folder && !known ? h("option", { value: folder, selected: true }, folder) : null))),
      h("button", { type: "submit", id: "save-settings" }, "Save settings")),
    message);
  return form;
}
