// The console's only way to the data: kb's REST API, with the key kept in this tab's sessionStorage.
"use strict";

const KEY_SLOT = "kb.apiKey";

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const api = {
  key() { return sessionStorage.getItem(KEY_SLOT); },
  setKey(key) { sessionStorage.setItem(KEY_SLOT, key); },
  forget() { sessionStorage.removeItem(KEY_SLOT); },

  headers(extra) {
    const headers = Object.assign({}, extra || {});
    const key = api.key();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  },

  async call(method, path, body, options) {
    const init = { method, headers: api.headers(options && options.headers) };
    if (body !== undefined && body !== null) {
      if (body instanceof Blob || body instanceof ArrayBuffer) {
        init.body = body;
      } else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "unreachable", "the kb service did not answer: " + err.message);
    }
    if (response.status === 204) return null;
    if (!response.ok) throw await api.errorOf(response);
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.blob();
  },

  async errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error) return new ApiError(response.status, body.error.code, body.error.message);
    } catch (_) { /* not JSON: fall through */ }
    return new ApiError(response.status, "http_error", "HTTP " + response.status);
  },

  get(path) { return api.call("GET", path); },
  post(path, body) { return api.call("POST", path, body === undefined ? {} : body); },
  put(path, body) { return api.call("PUT", path, body); },
  patch(path, body) { return api.call("PATCH", path, body); },
  del(path) { return api.call("DELETE", path); },

  // Uploads report their progress (fetch cannot), so they go through XMLHttpRequest.
  upload(path, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", path);
      const headers = api.headers({ "Content-Type": "application/octet-stream" });
      for (const name of Object.keys(headers)) xhr.setRequestHeader(name, headers[name]);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded, e.total); };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* empty or not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else if (body && body.error) reject(new ApiError(xhr.status, body.error.code, body.error.message));
        else reject(new ApiError(xhr.status, "http_error", "HTTP " + xhr.status));
      };
      xhr.onerror = () => reject(new ApiError(0, "unreachable", "the upload broke off"));
      xhr.send(file);
    });
  },

  // Images need the key too, so an <img> gets a blob: URL of bytes fetched with it.
  async imageUrl(path) {
    const blob = await api.call("GET", path);
    return URL.createObjectURL(blob);
  },

  project(key) { return "/v1/projects/" + encodeURIComponent(key); },
  kb(projectKey, kbId) { return api.project(projectKey) + "/knowledge-banks/" + encodeURIComponent(kbId); },
  folder(projectKey, folderId) { return api.project(projectKey) + "/folders/" + encodeURIComponent(folderId); },
  filePath(projectKey, folderId, path) {
    return api.folder(projectKey, folderId) + "/files/" + path.replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
  },
};
