// The appliance's file-level recovery page. No framework: five views of
// lists are a few DOM helpers away, and none means nothing more to audit,
// a bundle of a few kilobytes, and no eval or inline code (the CSP allows
// only the appliance's own scripts). Text goes into the DOM as text only,
// never as HTML: file names come from backups, not from us.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./api.gen";

type BrowseSnapshot = components["schemas"]["BrowseSnapshot"];
type FileEntry = components["schemas"]["FileEntry"];
type Location = components["schemas"]["SnapshotLocation"];

const pageSize = 200;

let csrfToken = "";

const csrf: Middleware = {
  onRequest({ request }) {
    if (request.method !== "GET" && request.method !== "HEAD" && csrfToken !== "") {
      request.headers.set("X-CSRF-Token", csrfToken);
    }
    return request;
  },
  onResponse({ request, response }) {
    // A session that ended (logout elsewhere, a restart, its 8 hours)
    // sends the page back to the login.
    if (response.status === 401 && new URL(request.url).pathname !== "/v1/session") {
      showLogin("Your session ended: log in again.");
    }
    return response;
  },
};

const client = createClient<paths>({ baseUrl: "" });
client.use(csrf);

function byId<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`page element #${id} missing`);
  return el as T;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text = "", attrs: Record<string, string> = {}): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function formatSize(n: number): string {
  if (n < 0) return "size unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function formatTime(iso: string | undefined): string {
  return iso === undefined ? "time unknown" : new Date(iso).toLocaleString();
}

function errorText(error: unknown): string {
  if (typeof error === "object" && error !== null && "message" in error) return String(error.message);
  return "the appliance did not answer";
}

// Where the browser stands: each level adds to the one before.
type View =
  | { level: "services" }
  | { level: "pes"; service: string }
  | { level: "snapshots"; service: string; pe: string }
  | { level: "files"; service: string; pe: string; snap: BrowseSnapshot; path: string }
  | { level: "search"; service: string; pe: string; snap: BrowseSnapshot; path: string; q: string };

let view: View = { level: "services" };
// loads counts the views shown, so that an answer for a view left since
// is dropped.
let loads = 0;

function showLogin(message = ""): void {
  csrfToken = "";
  byId("browser").hidden = true;
  byId("logout").hidden = true;
  byId("crumbs").replaceChildren();
  byId("login").hidden = false;
  byId("login-error").textContent = message;
  byId<HTMLInputElement>("token").focus();
}

function showBrowser(): void {
  byId("login").hidden = true;
  byId("browser").hidden = false;
  byId("logout").hidden = false;
  void go({ level: "services" });
}

async function login(ev: SubmitEvent): Promise<void> {
  ev.preventDefault();
  const input = byId<HTMLInputElement>("token");
  const { data, error } = await client.POST("/v1/session", { body: { token: input.value } });
  if (data === undefined) {
    byId("login-error").textContent = `Login refused: ${errorText(error)}.`;
    input.select();
    return;
  }
  input.value = "";
  csrfToken = data.csrfToken;
  showBrowser();
}

async function logout(): Promise<void> {
  await client.DELETE("/v1/session");
  showLogin("Logged out.");
}

function crumbs(): void {
  const nav = byId("crumbs");
  const parts: [string, View][] = [["PE types", { level: "services" }]];
  if (view.level !== "services") parts.push([view.service, { level: "pes", service: view.service }]);
  if (view.level === "snapshots" || view.level === "files" || view.level === "search") parts.push([view.pe, { level: "snapshots", service: view.service, pe: view.pe }]);
  if (view.level === "files" || view.level === "search") {
    const v: View & { level: "files" } = { level: "files", service: view.service, pe: view.pe, snap: view.snap, path: view.path };
    parts.push([`${v.snap.location} ${formatTime(v.snap.created)}`, { ...v, path: "" }]);
    let prefix = "";
    for (const elem of v.path === "" ? [] : v.path.split("/")) {
      prefix = prefix === "" ? elem : `${prefix}/${elem}`;
      parts.push([elem, { ...v, path: prefix }]);
    }
  }
  nav.replaceChildren();
  parts.forEach(([label, target], i) => {
    if (i > 0) nav.append(el("span", " / "));
    const b = el("button", label, { type: "button" });
    b.addEventListener("click", () => void go(target));
    nav.append(b);
  });
}

function item(label: string, meta: string[], attrs: Record<string, string>, open?: () => void): HTMLLIElement {
  const li = el("li", "", attrs);
  if (open === undefined) {
    li.append(el("span", label));
  } else {
    const b = el("button", label, { type: "button", class: "open" });
    b.addEventListener("click", open);
    li.append(b);
  }
  for (const m of meta) li.append(el("span", m, { class: "meta" }));
  return li;
}

function setStatus(text: string): void {
  byId("status").textContent = text;
}

// more is what the "Load more" button (and scrolling to it) does: the
// next page of the directory shown.
let more: (() => Promise<void>) | undefined;

async function go(next: View): Promise<void> {
  view = next;
  const load = ++loads;
  const list = byId("list");
  list.replaceChildren();
  more = undefined;
  byId("more").hidden = true;
  crumbs();
  byId("search").hidden = next.level !== "files" && next.level !== "search";
  byId("zip").hidden = true;
  setStatus("Loading…");
  const stale = () => load !== loads;
  switch (next.level) {
    case "services": {
      byId("title").textContent = "PE types";
      const { data, error } = await client.GET("/v1/astrolabe");
      if (stale()) return;
      if (data === undefined) return setStatus(`Cannot list the PE types: ${errorText(error)}.`);
      for (const s of data.services) list.append(item(s, [], { "data-name": s }, () => void go({ level: "pes", service: s })));
      return setStatus(data.services.length === 0 ? "No PE types." : "");
    }
    case "pes": {
      byId("title").textContent = `PEs of ${next.service}`;
      const { data, error } = await client.GET("/v1/astrolabe/{service}", { params: { path: { service: next.service } } });
      if (stale()) return;
      if (data === undefined) return setStatus(`Cannot list the PEs: ${errorText(error)}.`);
      for (const id of data.list) {
        list.append(item(id, [], { "data-name": id }, () => void go({ level: "snapshots", service: next.service, pe: id })));
      }
      return setStatus(data.list.length === 0 ? "No PEs." : data.truncated ? "The first 1000 PEs." : "");
    }
    case "snapshots": {
      byId("title").textContent = `Snapshots of ${next.pe}`;
      const { data, error } = await client.GET("/v1/appliance/browse/{protectedEntityID}/snapshots", {
        params: { path: { protectedEntityID: next.pe } },
      });
      if (stale()) return;
      if (data === undefined) return setStatus(`Cannot list the snapshots: ${errorText(error)}.`);
      for (const snap of data.snapshots) {
        const li = item(formatTime(snap.created), [formatSize(snap.size)], { "data-name": snap.id, "data-location": snap.location }, () =>
          void go({ level: "files", service: next.service, pe: next.pe, snap, path: "" }),
        );
        li.insertBefore(el("span", snap.location, { class: `badge ${snap.location}` }), li.children[1] ?? null);
        list.append(li);
      }
      return setStatus(data.snapshots.length === 0 ? "No snapshots." : "");
    }
    case "files": {
      byId("title").textContent = next.path === "" ? "/" : `/${next.path}`;
      const zip = byId<HTMLAnchorElement>("zip");
      zip.href = browseURL("/v1/appliance/browse/{protectedEntityID}/zip", next.snap, next.path);
      zip.download = `${next.path === "" ? "snapshot" : (next.path.split("/").pop() ?? "folder")}.zip`;
      zip.hidden = false;
      more = () => filesPage(next, load);
      return more();
    }
    case "search":
      byId("title").textContent = `Names containing “${next.q}”`;
      more = () => searchPage(next, load);
      return more();
  }
}

async function searchPage(v: View & { level: "search" }, load: number, cursor?: string): Promise<void> {
  more = undefined;
  const { data, error } = await client.GET("/v1/appliance/browse/{protectedEntityID}/search", {
    params: {
      path: { protectedEntityID: v.snap.id },
      query: { location: v.snap.location, q: v.q, limit: pageSize, ...(cursor === undefined ? {} : { cursor }) },
    },
  });
  if (load !== loads) return;
  if (data === undefined) return setStatus(`Cannot search: ${errorText(error)}.`);
  const list = byId("list");
  const files: View & { level: "files" } = { level: "files", service: v.service, pe: v.pe, snap: v.snap, path: "" };
  for (const m of data.matches) {
    const dir = m.path.includes("/") ? m.path.slice(0, m.path.lastIndexOf("/")) : "";
    list.append(fileItem({ ...files, path: dir }, m.entry, m.path));
  }
  const next = data.nextCursor;
  byId("more").hidden = next === undefined;
  if (next !== undefined) more = () => searchPage(v, load, next);
  setStatus(list.children.length === 0 ? "Nothing found." : `${list.children.length} found${next === undefined ? "" : " so far"}.`);
}

function search(ev: SubmitEvent): void {
  ev.preventDefault();
  const q = byId<HTMLInputElement>("search-q").value;
  if (q === "" || (view.level !== "files" && view.level !== "search")) return;
  void go({ level: "search", service: view.service, pe: view.pe, snap: view.snap, path: view.path, q });
}

// browseURL is where a file or folder of a snapshot downloads from: a
// plain link (the session cookie goes with it), so the browser streams it
// to disk.
function browseURL(route: keyof paths & `/v1/appliance/browse/{protectedEntityID}/${"content" | "zip"}`, snap: BrowseSnapshot, path: string): string {
  const q = new URLSearchParams({ location: snap.location satisfies Location, path });
  return `${route.replace("{protectedEntityID}", encodeURIComponent(snap.id))}?${q}`;
}

async function filesPage(v: View & { level: "files" }, load: number, cursor?: string): Promise<void> {
  more = undefined;
  const { data, error } = await client.GET("/v1/appliance/browse/{protectedEntityID}/files", {
    params: {
      path: { protectedEntityID: v.snap.id },
      query: { location: v.snap.location, path: v.path, limit: pageSize, ...(cursor === undefined ? {} : { cursor }) },
    },
  });
  if (load !== loads) return;
  if (data === undefined) return setStatus(`Cannot list the directory: ${errorText(error)}.`);
  const list = byId("list");
  for (const e of data.entries) list.append(fileItem(v, e));
  const next = data.nextCursor;
  byId("more").hidden = next === undefined;
  if (next !== undefined) more = () => filesPage(v, load, next);
  setStatus(list.children.length === 0 ? "Empty directory." : `${list.children.length} entries${next === undefined ? "" : " so far"}.`);
}

// fileItem is an entry of directory v.path; label, if given, is shown
// for its name (a search shows the whole path).
function fileItem(v: View & { level: "files" }, e: FileEntry, label = e.name): HTMLLIElement {
  const path = v.path === "" ? e.name : `${v.path}/${e.name}`;
  const attrs = { "data-name": e.name, "data-kind": e.kind, "data-path": path };
  const when = formatTime(e.modified);
  switch (e.kind) {
    case "dir":
      return item(`${label}/`, [when], attrs, () => void go({ ...v, path }));
    case "file": {
      const li = el("li", "", attrs);
      li.append(el("a", label, { href: browseURL("/v1/appliance/browse/{protectedEntityID}/content", v.snap, path), download: e.name }));
      li.append(el("span", formatSize(e.size), { class: "meta" }), el("span", when, { class: "meta" }));
      return li;
    }
    case "symlink":
      return item(`${label} → ${e.linkTarget ?? ""}`, [when], attrs);
    default:
      return item(label, [when], attrs);
  }
}

async function start(): Promise<void> {
  byId<HTMLFormElement>("login").addEventListener("submit", (ev) => void login(ev));
  byId("logout").addEventListener("click", () => void logout());
  byId<HTMLFormElement>("search").addEventListener("submit", search);
  const moreButton = byId("more");
  moreButton.addEventListener("click", () => void more?.());
  // Scrolling to the end of a long directory loads its next page.
  new IntersectionObserver((seen) => {
    if (seen.some((s) => s.isIntersecting)) void more?.();
  }).observe(moreButton);

  const { data } = await client.GET("/v1/session");
  if (data === undefined) return showLogin();
  csrfToken = data.csrfToken;
  showBrowser();
}

void start();
