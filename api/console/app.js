// The console's shell: sign-in, the hash router (#/, #/p/KEY, #/p/KEY/kb/ID, #/p/KEY/folder/ID), the header.
"use strict";

const app = {
  whoami: null,
  main: () => document.getElementById("main"),

  banner(text) {
    const banner = document.getElementById("banner");
    banner.textContent = text || "";
    banner.hidden = !text;
  },

  crumbs(items) {
    const nav = document.getElementById("crumbs");
    nav.replaceChildren(...items.flatMap((item, i) => [i ? " / " : "", item.href ? h("a", { href: item.href }, item.text) : item.text]));
  },

  roleIn(projectKey) {
    const who = app.whoami;
    if (!who) return null;
    return who.admin ? "admin" : (who.roles[projectKey] || null);
  },

  signIn(reason) {
    app.whoami = null;
    api.forget();
    document.getElementById("who").textContent = "";
    document.getElementById("sign-out").hidden = true;
    app.crumbs([]);
    const box = messageBox("signin-message");
    const input = h("input", { type: "password", name: "key", id: "api-key", autocomplete: "off", required: true,
      placeholder: "kb_<id>_<secret>", size: 48 });
    const form = h("form", { id: "signin", class: "card narrow", onsubmit: async (e) => {
      e.preventDefault();
      api.setKey(input.value.trim());
      try {
        await app.loadWhoami();
        location.hash = location.hash && location.hash !== "#/signin" ? location.hash : "#/";
        app.route();
      } catch (err) {
        api.forget();
        box.show(explain(err));
      }
    } },
      h("h1", {}, "Sign in"),
      h("p", {}, "Enter an API key. It is kept only for this browser tab's session (sessionStorage) and sent to this kb service only."),
      field("API key", input),
      h("button", { type: "submit" }, "Sign in"), box);
    if (reason) box.show(reason);
    app.main().replaceChildren(form);
    input.focus();
  },

  async loadWhoami() {
    app.whoami = await api.get("/v1/whoami");
    const who = app.whoami;
    const roles = who.admin ? "global admin" : Object.entries(who.roles).map(([p, r]) => p + ": " + r).join(", ");
    document.getElementById("who").textContent = who.auth ? who.name + " (" + (roles || "no roles") + ")" : "authentication off";
    document.getElementById("sign-out").hidden = !who.auth;
  },

  async route() {
    app.banner("");
    if (!app.whoami) {
      try {
        await app.loadWhoami();
      } catch (err) {
        if (err.status === 401) return app.signIn(api.key() ? "Your key was refused: " + err.message : "");
        app.main().replaceChildren(h("p", { class: "message error" }, explain(err)));
        return;
      }
    }
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    try {
      if (parts[0] === "p" && parts[2] === "kb" && parts[3]) await pages.knowledgeBank(parts[1], parts[3], parts[4] || "overview");
      else if (parts[0] === "p" && parts[2] === "folder" && parts[3]) await pages.folder(parts[1], parts[3]);
      else if (parts[0] === "p" && parts[1]) await pages.project(parts[1]);
      else await pages.projects();
    } catch (err) {
      if (err.status === 401) return app.signIn("Your key was refused: " + err.message);
      app.main().replaceChildren(h("p", { class: "message " + (err.status === 403 ? "forbidden" : "error") }, explain(err)));
    }
  },
};

window.addEventListener("hashchange", () => app.route());
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => { location.hash = "#/"; app.signIn(""); });
  app.route();
});
