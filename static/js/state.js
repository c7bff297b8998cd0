// URL state: the hash holds everything needed to reproduce a view, so a copied link shows the same
// thing and back/forward walk through topology, view, option and selection changes.
//
//   #/<topology>?view=table&system=show&q=image%3Abusybox&node=<node id>&sort=cpu-desc
//
// Only non-default values are written, which keeps links short and stable.

export const OPTION_DEFAULTS = Object.freeze({
  system: "hide",
  stopped: "hide",
  unconnected: "hide",
  pseudo: "show",
});

export const DEFAULT_STATE = Object.freeze({
  topology: "",
  view: "graph",
  options: OPTION_DEFAULTS,
  node: "",
  search: "",
  sort: { column: "name", desc: false },
});

export function parseHash(hash) {
  const raw = (hash || "").replace(/^#/, "");
  const [path, query = ""] = raw.split("?", 2);
  const params = new URLSearchParams(query);
  const options = { ...OPTION_DEFAULTS };
  for (const name of Object.keys(OPTION_DEFAULTS)) {
    const value = params.get(name);
    if (value === "show" || value === "hide") options[name] = value;
  }
  const [column, dir] = (params.get("sort") || "").split("-");
  return {
    topology: decodeURIComponent(path.replace(/^\/+/, "")),
    view: params.get("view") === "table" ? "table" : "graph",
    options,
    node: params.get("node") || "",
    search: params.get("q") || "",
    sort: column ? { column, desc: dir === "desc" } : { ...DEFAULT_STATE.sort },
  };
}

export function toHash(state) {
  const params = new URLSearchParams();
  if (state.view !== "graph") params.set("view", state.view);
  for (const [name, def] of Object.entries(OPTION_DEFAULTS)) {
    if (state.options[name] && state.options[name] !== def) params.set(name, state.options[name]);
  }
  if (state.search) params.set("q", state.search);
  if (state.sort && (state.sort.column !== "name" || state.sort.desc)) {
    params.set("sort", `${state.sort.column}-${state.sort.desc ? "desc" : "asc"}`);
  }
  if (state.node) params.set("node", state.node);
  const query = params.toString();
  return `#/${encodeURIComponent(state.topology || "")}${query ? `?${query}` : ""}`;
}

// The websocket/REST query for a set of options: always all four, so the server never guesses.
export function optionsQuery(options) {
  const params = new URLSearchParams();
  for (const name of Object.keys(OPTION_DEFAULTS)) params.set(name, options[name] || OPTION_DEFAULTS[name]);
  return params.toString();
}

// A tiny store around the URL: `update` merges a patch, writes the hash (push or replace) and tells
// subscribers; `popstate` (back/forward) re-reads the hash and tells them too.
export class UrlState {
  constructor() {
    this.state = parseHash(window.location.hash);
    this.listeners = [];
    window.addEventListener("popstate", () => this._fromLocation());
    window.addEventListener("hashchange", () => this._fromLocation());
  }

  subscribe(fn) {
    this.listeners.push(fn);
  }

  // push=false for high-frequency changes (typing in search) so history is not flooded.
  update(patch, { push = true } = {}) {
    const prev = this.state;
    this.state = { ...prev, ...patch, options: { ...prev.options, ...(patch.options || {}) } };
    const hash = toHash(this.state);
    if (hash !== window.location.hash) {
      if (push) window.history.pushState(null, "", hash);
      else window.history.replaceState(null, "", hash);
    }
    this._notify(prev);
  }

  _fromLocation() {
    const next = parseHash(window.location.hash);
    if (toHash(next) === toHash(this.state)) return;
    const prev = this.state;
    this.state = next;
    this._notify(prev);
  }

  _notify(prev) {
    for (const fn of this.listeners) fn(this.state, prev);
  }
}
