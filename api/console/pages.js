// Pages: projects, one project (knowledge banks and managed folders), one managed folder (files, upload).
"use strict";

const STORE_TYPES = ["FAISS", "CHROMA", "ELASTICSEARCH", "AZURE_AI_SEARCH"];
const SCHEMA_TYPES = ["string", "int", "float", "bool", "date"];

const pages = {
  async projects() {
    app.crumbs([{ text: "Projects" }]);
    const projects = await api.get("/v1/projects");
    const admin = Boolean(app.whoami && app.whoami.admin);
    const message = messageBox("project-message");
    // Only a global admin may create projects (a role is held per project, so no other key could): other keys
    // see the form disabled, and the server answers 403 if asked anyway.
    const form = h("form", { id: "create-project", class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      message.clear();
      const v = formValues(e.target);
      try {
        const created = await api.post("/v1/projects", { key: v.key.trim(), name: v.name.trim() || null });
        await pages.projects();
        document.getElementById("project-message").show("Created project " + created.key + " (" + created.name + ").", "ok");
      } catch (err) { report(message, err); }
    } },
      h("fieldset", { class: "plain", id: "create-project-fields", disabled: !admin },
        field("Key", h("input", { name: "key", id: "project-key", required: true, maxlength: 64, size: 16, placeholder: "e.g. RESEARCH" }),
          "letters, digits, underscores"),
        field("Name", h("input", { name: "name", id: "project-name", size: 24, placeholder: "(the key)" })),
        h("button", { type: "submit" }, "Create project")));
    app.main().replaceChildren(h("section", { class: "card" }, h("h1", {}, "Projects"),
      table(["Project", "Name", "Your role"], projects.map((p) => [
        h("a", { href: "#/p/" + encodeURIComponent(p.key) }, p.key), p.name, app.roleIn(p.key) || "-"]),
      "This key can read no project.", { id: "projects" }),
      h("h2", {}, "New project"),
      admin ? null : h("p", { class: "muted", id: "create-project-note" }, "Creating a project needs a global admin key."),
      form, message));
  },

  async project(projectKey) {
    app.crumbs([{ text: "Projects", href: "#/" }, { text: projectKey }]);
    const base = api.project(projectKey);
    const [kbs, folders, llms] = await Promise.all([
      api.get(base + "/knowledge-banks"), api.get(base + "/folders"),
      api.get(base + "/llms?purpose=TEXT_EMBEDDING_EXTRACTION")]);
    const counts = await Promise.all(kbs.map((k) => api.get(api.kb(projectKey, k.id) + "/count")
      .then((c) => c.count, (err) => "? (" + err.code + ")")));
    const role = app.roleIn(projectKey) || "none";

    const kbMessage = messageBox("kb-message");
    const kbRows = kbs.map((k, i) => [
      h("a", { href: "#/p/" + encodeURIComponent(projectKey) + "/kb/" + encodeURIComponent(k.id) }, k.name),
      h("code", {}, k.id), k.vector_store_type, k.embedding_llm_id, String(counts[i]),
      h("button", { type: "button", class: "danger", "data-delete-kb": k.id, onclick: async () => {
        if (!confirm("Delete knowledge bank " + k.name + " and all its documents?")) return;
        try { await api.del(api.kb(projectKey, k.id)); app.route(); } catch (err) { report(kbMessage, err); }
      } }, "Delete")]);

    const createForm = h("form", { id: "create-kb", class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      kbMessage.clear();
      const v = formValues(e.target);
      try {
        const settings = v.settings.trim() ? JSON.parse(v.settings) : {};
        const schema = parseSchema(v.schema);
        if (Object.keys(schema).length) settings.metadata_schema = schema;
        const created = await api.post(base + "/knowledge-banks", {
          name: v.name, vector_store_type: v.store, embedding_llm_id: v.model, settings });
        kbMessage.show("Created knowledge bank " + created.name + " (" + created.id + ").", "ok");
        location.hash = "#/p/" + encodeURIComponent(projectKey) + "/kb/" + encodeURIComponent(created.id);
      } catch (err) {
        report(kbMessage, err);
      }
    } },
      field("Name", h("input", { name: "name", required: true })),
      field("Store", h("select", { name: "store" }, STORE_TYPES.map((s) => h("option", { value: s }, s)))),
      field("Embedding model", h("select", { name: "model" }, llms.map((m) => h("option", { value: m.id }, m.id)))),
      field("Metadata schema", h("input", { name: "schema", placeholder: "source=string,year=int", size: 28 }),
        "key=type, types: " + SCHEMA_TYPES.join(" ")),
      field("More settings (JSON)", h("input", { name: "settings", placeholder: '{"store": {"index": {"type": "HNSW"}}}', size: 30 })),
      h("button", { type: "submit" }, "Create knowledge bank"));

    const folderMessage = messageBox("folder-message");
    const folderRows = folders.map((f) => [
      h("a", { href: "#/p/" + encodeURIComponent(projectKey) + "/folder/" + encodeURIComponent(f.id) }, f.name),
      h("code", {}, f.id),
      h("button", { type: "button", class: "danger", "data-delete-folder": f.id, onclick: async () => {
        if (!confirm("Delete managed folder " + f.name + " and its files?")) return;
        try { await api.del(api.folder(projectKey, f.id)); app.route(); } catch (err) { report(folderMessage, err); }
      } }, "Delete")]);
    const folderForm = h("form", { id: "create-folder", class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      folderMessage.clear();
      try {
        await api.post(base + "/folders", { name: formValues(e.target).name });
        app.route();
      } catch (err) { report(folderMessage, err); }
    } }, field("Name", h("input", { name: "name", required: true })), h("button", { type: "submit" }, "Create folder"));

    app.main().replaceChildren(
      h("section", { class: "card" }, h("h1", {}, "Knowledge banks of " + projectKey),
        h("p", { class: "muted" }, "Your role here: " + role + ". Creating and deleting knowledge banks needs admin."),
        table(["Name", "Id", "Store", "Model", "Documents", ""], kbRows, "No knowledge banks yet.", { id: "kb-table" }),
        h("h2", {}, "New knowledge bank"), createForm, kbMessage),
      h("section", { class: "card" }, h("h1", {}, "Managed folders"),
        h("p", { class: "muted" }, "Creating folders needs writer, deleting them admin."),
        table(["Name", "Id", ""], folderRows, "No managed folders yet.", { id: "folder-table" }),
        folderForm, folderMessage));
  },

  async folder(projectKey, folderId) {
    const folders = await api.get(api.project(projectKey) + "/folders");
    const folder = folders.find((f) => f.id === folderId) || { id: folderId, name: folderId };
    app.crumbs([{ text: "Projects", href: "#/" }, { text: projectKey, href: "#/p/" + encodeURIComponent(projectKey) },
      { text: "folder " + folder.name }]);
    const files = await api.get(api.folder(projectKey, folderId) + "/files");
    const message = messageBox("file-message");
    const rows = files.map((path) => [h("code", {}, path),
      h("button", { type: "button", onclick: async () => {
        try {
          const url = URL.createObjectURL(await api.call("GET", api.filePath(projectKey, folderId, path)));
          h("a", { href: url, download: path.split("/").pop() }).click();
        } catch (err) { report(message, err); }
      } }, "Download"),
      h("button", { type: "button", class: "danger", onclick: async () => {
        try { await api.del(api.filePath(projectKey, folderId, path)); app.route(); } catch (err) { report(message, err); }
      } }, "Delete")]);
    app.main().replaceChildren(
      h("section", { class: "card" }, h("h1", {}, "Managed folder " + folder.name),
        table(["Path", "", ""], rows, "No files yet.", { id: "file-table" }),
        h("h2", {}, "Upload"), uploadForm(projectKey, folderId, () => app.route()), message),
      h("section", { class: "card", id: "folder-sync" }, h("h2", {}, "Folder sync"), await syncPanel(projectKey, folderId)));
  },
};

function parseSchema(text) {
  const schema = {};
  for (const item of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [key, type] = item.split("=").map((s) => (s || "").trim());
    if (!key || !SCHEMA_TYPES.includes(type)) {
      throw new Error("schema entry '" + item + "' must be key=type with type one of " + SCHEMA_TYPES.join(", "));
    }
    schema[key] = type;
  }
  return schema;
}

// Upload one or more files into a folder (an id, or a function giving the id chosen now), with a progress bar.
function uploadForm(projectKey, folderId, done) {
  const folderOf = typeof folderId === "function" ? folderId : () => folderId;
  const message = messageBox("upload-message");
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
  const input = h("input", { type: "file", name: "file", id: "upload-file", multiple: true, required: true });
  const prefix = h("input", { name: "prefix", value: "/", size: 16 });
  return h("form", { id: "upload", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    message.clear();
    bar.hidden = false;
    const uploaded = [];
    try {
      for (const file of input.files) {
        const path = (prefix.value.replace(/\/*$/, "/") + file.name).replace(/^\/*/, "/");
        await api.upload(api.filePath(projectKey, folderOf(), path), file, (loaded, total) => { bar.value = (100 * loaded) / total; });
        bar.value = 100;
        uploaded.push(path + " (" + file.size + " bytes)");
        message.show("Uploaded " + uploaded.join(", ") + ".", "ok");
      }
      if (done) done();
    } catch (err) { report(message, err); }
  } }, field("Files", input), field("Into folder path", prefix), h("button", { type: "submit" }, "Upload"), bar, message);
}

// The folder sync panel: present when this server has the sync routes (another branch adds them).
// Sync this folder's documents (PDF, DOCX, PPTX, HTML, Markdown, text, images) into a knowledge bank: a sync job
// (api/routers/sync.py) followed until it ends, with its progress and its report.
async function syncPanel(projectKey, folderId) {
  const kbs = await api.get(api.project(projectKey) + "/knowledge-banks");
  if (!kbs.length) return h("p", { class: "muted" }, "Create a knowledge bank on the project page to sync this folder into.");
  const message = messageBox("sync-message");
  const status = h("div", { id: "sync-job" });
  const form = h("form", { id: "sync", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    message.clear(); status.replaceChildren();
    const v = formValues(e.target);
    const base = api.kb(projectKey, v.kb) + "/sync-jobs";
    try {
      const job = await api.post(base, { folder_id: folderId, extraction: v.extraction, screenshots: e.target.elements.screenshots.checked });
      followSync(base + "/" + encodeURIComponent(job.job_id), message, status);
    } catch (err) { report(message, err); }
  } },
    field("Knowledge bank", h("select", { name: "kb", id: "sync-kb" }, kbs.map((k) => h("option", { value: k.id }, k.name)))),
    field("Extraction", h("select", { name: "extraction", id: "sync-extraction" }, ["raw", "structured"].map((m) => h("option", { value: m }, m)))),
    h("label", {}, h("input", { type: "checkbox", name: "screenshots", id: "sync-screenshots" }), " page screenshots"),
    h("button", { type: "submit" }, "Sync now"));
  return h("div", {}, h("p", { class: "muted" }, "Added and changed files are extracted and embedded, removed files leave the knowledge bank, unchanged files cost nothing."), form, message, status);
}

function followSync(url, message, status) {
  const bar = h("p", { id: "sync-progress", class: "muted" }, "Sync started…");
  // a cancelled sync stops at its next commit; what it committed stays, and the next sync does the rest
  const cancel = h("button", { type: "button", id: "sync-cancel", onclick: async () => {
    cancel.disabled = true;
    try { await api.post(url + "/cancel", {}); } catch (err) { cancel.disabled = false; report(message, err); }
  } }, "Cancel sync");
  status.replaceChildren(bar, cancel);
  const tick = async () => {
    let job;
    try { job = await api.get(url); } catch (err) { return report(message, err); }
    const p = job.progress || {};
    bar.textContent = "Sync " + job.state + ": " + p.files_processed + " of " + p.files_to_process + " files to extract processed (" + p.files_total + " in the folder), " + p.commits + " commits";
    if (job.state !== "running" && job.state !== "queued") cancel.remove();
    if (job.state === "succeeded") {
      const r = job.report;
      const counts = ["added", "updated", "unchanged", "removed", "empty", "failed"].map((k) => [k, String(r[k].length)]);
      const figures = ["pages", "chunks_written", "chunks_removed", "texts_embedded", "screenshots_written", "commits", "seconds"].map((k) => [k, fmt(r[k])]);
      status.append(h("h2", {}, "Sync report"), table(["", ""], [...counts, ...figures], "", { id: "sync-report" }),
        r.failed.length ? table(["Failed file", "Reason"], r.failed.map((f) => [f.path, f.reason]), "", { id: "sync-failed" }) : "",
        // empty files are not failures: readable, with nothing to index (a redirect page, an image-only PDF with OCR off)
        r.empty.length ? table(["Empty file (nothing to index)", "Reason"], r.empty.map((f) => [f.path, f.reason]), "", { id: "sync-empty" }) : "",
        // indexed, with something to know: pages left out for want of OCR, screenshots skipped for want of LibreOffice
        r.warnings.length ? table(["File with a warning", "Warning"], r.warnings.map((w) => [w.path, w.message]), "", { id: "sync-warnings" }) : "");
    } else if (job.state === "failed") {
      message.show("Sync failed: " + job.error.message + " (" + job.error.code + ")");
    } else if (job.state === "cancelled") {
      message.show("Sync cancelled: the files it committed stay in the knowledge bank; the next sync does the rest.");
    } else {
      setTimeout(tick, 400);
    }
  };
  tick();
}
