// Small DOM helpers shared by the pages: element building, tables, messages, forms.
"use strict";

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function table(headers, rows, emptyText, attrs) {
  if (!rows.length) return h("p", { class: "muted" }, emptyText || "Nothing here yet.");
  return h("table", attrs || {},
    headers.some(Boolean) ? h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))) : null,
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

// A message box that sits where the problem is (under a form, a filter editor, ...).
function messageBox(id) {
  const box = h("div", { class: "message", role: "status", id, hidden: true });
  box.show = (text, kind) => {
    box.textContent = text;
    box.className = "message " + (kind || "error");
    box.hidden = false;
  };
  box.clear = () => { box.hidden = true; box.textContent = ""; };
  return box;
}

// How an API error reads to a person: a 403 says which role is missing, a 401 sends to sign-in.
function explain(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  if (err.status === 403) return "Not allowed (403): " + err.message;
  if (err.status === 401) return "Not signed in (401): " + err.message;
  return err.message + " (" + err.status + " " + err.code + ")";
}

function report(box, err) {
  box.show(explain(err), err && err.status === 403 ? "forbidden" : "error");
  if (err && err.status === 401) app.signIn("Your key was refused: " + err.message);
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

function formValues(form) {
  const values = {};
  for (const el of form.elements) if (el.name) values[el.name] = el.type === "checkbox" ? el.checked : el.value;
  return values;
}

function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function fmt(value) {
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(4)) : String(value);
}

function readText(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsText(file);
  });
}
