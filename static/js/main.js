// Scope UI entry point: wires URL state, the topology websocket, the node store and the views.
//
// Libraries (pinned in ui/package.json, bundled by ui/build.sh into static/vendor/; see ui/README.md):
//  - sigma 3 + graphology: WebGL node/edge rendering with built-in zoom/pan, hover picking and
//    label culling, which is what keeps 5,000 nodes interactive; graphology is its graph model.
//  - graphology-layout-forceatlas2: force layout over that same graph model, with per-node
//    `fixed` so an incremental run moves only new nodes.
//  - uPlot: tiny, fast canvas time-series charts for the CPU/memory sparklines.
import { TopologySocket, fetchTopologies } from "./api.js";
import { DetailsPanel } from "./details.js";
import { PipeWindow } from "./pipes.js";
import { escapeHtml, formatCount } from "./format.js";
import { GraphView } from "./graph.js";
import { compileSearch } from "./search.js";
import { KIND_STYLE } from "./shapes.js";
import { NodeStore } from "./store.js";
import { OPTION_DEFAULTS, UrlState, optionsQuery } from "./state.js";
import { TableView } from "./table.js";
import { TrafficMeter } from "./traffic.js";

// The topology list (counts of the other tabs) is fetched again after each push, at most this often,
// and this often anyway when no push comes.
const TOPOLOGY_MIN_INTERVAL_MS = 1000;
const TOPOLOGY_REFRESH_MS = 5000;
const OPTION_LABELS = {
  system: { label: "System", title: "System containers and processes (the probe, the app, pause containers)", hidden: "system containers" },
  stopped: { label: "Stopped", title: "Containers that are not running", hidden: "stopped containers" },
  unconnected: { label: "Unconnected", title: "Processes with no connections", hidden: "processes without connections" },
  pseudo: { label: "Pseudo", title: "Pseudo nodes: the internet and peers outside the probed hosts", hidden: "pseudo nodes (the internet, unknown peers)" },
};

const $ = (selector) => document.querySelector(selector);
const el = {
  topologies: $('[data-testid="topology-selector"]'),
  options: $('[data-testid="options"]'),
  summary: $('[data-testid="view-summary"]'),
  search: $('[data-testid="search"]'),
  status: $('[data-testid="connection-status"]'),
  graphView: $('[data-testid="graph-view"]'),
  tableView: $('[data-testid="table-view"]'),
  empty: $('[data-testid="empty-state"]'),
  legend: $('[data-testid="legend"]'),
  viewButtons: document.querySelectorAll("[data-view]"),
};

const url = new UrlState();
const store = new NodeStore();
const traffic = new TrafficMeter();
let topologies = [];
let filter = compileSearch(url.state.search);
let resets = 0;

const select = (id) => url.update({ node: id || "" });

const graph = new GraphView($('[data-testid="graph"]'), { onSelect: select, traffic });
const table = new TableView($('[data-testid="node-table"]'), {
  traffic,
  onSelect: select,
  onSort: (sort) => url.update({ sort }),
});
const pipes = new PipeWindow($('[data-testid="pipe-window"]'));
const details = new DetailsPanel($('[data-testid="details"]'), {
  traffic,
  onNavigate: (topology, node) => url.update({ topology, node }),
  onSelect: select,
  onClose: () => select(""),
  onPipe: (pipeId, kind, title) => pipes.open(pipeId, kind, title),
});

const socket = new TopologySocket({
  onStatus: (status, detail) => {
    el.status.textContent = status;
    el.status.dataset.state = status;
    el.status.title = detail;
  },
  onMessage: (message, receivedAt) => {
    const change = store.apply(message);
    if (!change) return;
    // The meter first: the graph styles edges by their traffic as it adds them.
    for (const id of change.removed) if (!store.get(id)) traffic.forget(id);
    for (const id of [...change.added, ...change.updated]) traffic.observe(store.get(id));
    if (change.reset) {
      resets += 1;
      graph.reset(url.state.topology, [...store.values()], receivedAt);
    } else {
      graph.apply(store, change);
    }
    refreshNodeLists();
    scheduleTopologies();
    const selected = url.state.node;
    if (selected) {
      if (change.reset || change.updated.includes(selected) || change.added.includes(selected)) {
        const node = store.get(selected);
        if (node) details.nodeUpdated(node);
      } else if ([...change.added, ...change.updated].some((id) => store.get(id)?.adjacency?.includes(selected))) {
        details.peerUpdated();
      }
      if (change.removed.includes(selected) && !store.get(selected)) details.nodeRemoved(selected);
    }
  },
});

// --- rendering of the chrome ----------------------------------------------------------------

function visibleNodes() {
  const all = [...store.values()];
  return filter ? all.filter(filter) : all;
}

function refreshNodeLists() {
  const nodes = visibleNodes();
  table.setNodes(nodes);
  const edges = graph.edgeCount();
  const filtered = filter ? ` of ${formatCount(store.size)}` : "";
  // A view past the app's cap holds its most connected nodes only: say so, with how many there are.
  const capped = store.total > store.size ? ` (the most connected of ${formatCount(store.total)})` : "";
  el.summary.textContent = store.ready
    ? `${formatCount(nodes.length)}${filtered} nodes${capped} \u00B7 ${formatCount(edges)} edges`
    : "";
  const empty = store.ready && nodes.length === 0;
  el.empty.hidden = !empty;
  if (empty) {
    const html = filter ? `No nodes match <strong>${escapeHtml(url.state.search)}</strong>` : emptyViewHtml();
    // Rewritten only when it changes: a button replaced under the mouse loses its click.
    if (el.empty.dataset.html !== html) {
      el.empty.innerHTML = html;
      el.empty.dataset.html = html;
    }
  }
  renderTopologies();
}

// An empty view says what it shows, what the options hide from it (with a button to show each), and
// how to get something on the map at all.
function emptyViewHtml() {
  const topology = topologies.find((t) => t.id === url.state.topology);
  const name = topology ? topology.name : url.state.topology;
  const hidden = optionNamesFor(url.state.topology).filter((option) => url.state.options[option] === "hide");
  const buttons = hidden
    .map((option) => `<button type="button" class="show-hidden" data-option="${option}" data-testid="empty-show-${option}">Show ${escapeHtml(OPTION_LABELS[option].hidden)}</button>`)
    .join("");
  const hiding = hidden.length
    ? `<p>Hidden by the options above: ${hidden.map((option) => escapeHtml(OPTION_LABELS[option].hidden)).join(", ")}.</p><p class="empty-actions">${buttons}</p>`
    : "";
  return `<p><strong>Nothing in ${escapeHtml(name)} yet.</strong></p>${hiding}<p>Nodes appear as probes report them: start a few containers that talk to each other (a web server and a client fetching from it) and their edges follow within seconds.</p>`;
}

// The current tab counts the view it holds, so it agrees with the map and the table after every push;
// the others come from the topology list (their default views), fetched on the same pushes.
function topologyCount(t) {
  return formatCount(t.id === url.state.topology && store.ready ? store.size : (t.stats?.node_count ?? ""));
}

function renderTopologies() {
  const current = url.state.topology;
  const buttons = [...el.topologies.querySelectorAll("[data-topology]")];
  if (buttons.length === topologies.length && buttons.every((b, i) => b.dataset.topology === topologies[i].id)) {
    // Same tabs: update them in place, so a click in progress is not lost to a rebuilt button.
    buttons.forEach((button, i) => {
      const active = topologies[i].id === current;
      button.classList.toggle("active", active);
      button.setAttribute("aria-pressed", String(active));
      const count = button.querySelector(".count");
      const text = topologyCount(topologies[i]);
      if (count.textContent !== text) count.textContent = text;
    });
    return;
  }
  el.topologies.innerHTML = topologies
    .map((t) => {
      const active = t.id === current;
      return `<button type="button" class="topology${active ? " active" : ""}" data-testid="topology-${escapeHtml(t.id)}" data-topology="${escapeHtml(t.id)}" aria-pressed="${active}"><span class="name">${escapeHtml(t.name)}</span><span class="count" data-testid="topology-count-${escapeHtml(t.id)}">${escapeHtml(topologyCount(t))}</span></button>`;
    })
    .join("");
}

// The topology list names the options that apply to it (strings or {id, defaultValue} objects);
// without that information every option is shown.
function optionNamesFor(topologyId) {
  const topology = topologies.find((t) => t.id === topologyId);
  const names = (topology?.options || [])
    .map((o) => (typeof o === "string" ? o : o && (o.id || o.name)))
    .filter((name) => name in OPTION_DEFAULTS);
  return names.length ? names : Object.keys(OPTION_DEFAULTS);
}

function renderOptions() {
  el.options.innerHTML = optionNamesFor(url.state.topology)
    .map((name) => {
      const value = url.state.options[name];
      const on = value === "show";
      return `<button type="button" class="toggle${on ? " on" : ""}" data-testid="option-${name}" data-option="${name}" data-state="${value}" aria-pressed="${on}" title="${escapeHtml(OPTION_LABELS[name].title)}"><span class="switch"></span>${escapeHtml(OPTION_LABELS[name].label)}</button>`;
    })
    .join("");
}

function renderLegend() {
  el.legend.innerHTML = Object.entries(KIND_STYLE)
    .map(([kind, s]) => `<span class="legend-item" data-kind="${kind}"><span class="swatch shape-${s.shape}" style="--c:${s.color}"></span>${escapeHtml(s.label)}</span>`)
    .join("");
}

function applyView(view) {
  for (const button of el.viewButtons) {
    const active = button.dataset.view === view;
    button.classList.toggle("active", active);
    button.setAttribute("aria-pressed", String(active));
  }
  el.graphView.hidden = view !== "graph";
  el.tableView.hidden = view !== "table";
  graph.setVisible(view === "graph");
  table.setVisible(view === "table");
}

function applySelection(state) {
  graph.select(state.node);
  table.setSelected(state.node);
  if (state.node) details.open(state.topology, state.node, store.get(state.node));
  else details.close();
  document.querySelector(".stage").classList.toggle("with-details", Boolean(state.node));
}

// --- state changes ------------------------------------------------------------------------------

function onState(state, prev) {
  const topologyChanged = !prev || state.topology !== prev.topology;
  const optionsChanged = !prev || optionsQuery(state.options) !== optionsQuery(prev.options);
  if (topologyChanged || optionsChanged) {
    if (topologyChanged) {
      store.clear();
      traffic.clear();
      graph.reset(state.topology, [], 0);
      refreshNodeLists();
    }
    if (state.topology) socket.open(state.topology, optionsQuery(state.options));
    renderTopologies();
    renderOptions();
  }
  if (!prev || state.view !== prev.view) applyView(state.view);
  if (!prev || state.search !== prev.search) {
    filter = compileSearch(state.search);
    if (el.search.value !== state.search) el.search.value = state.search;
    graph.setFilter(filter, store);
    refreshNodeLists();
  }
  if (!prev || state.sort.column !== prev.sort.column || state.sort.desc !== prev.sort.desc) table.setSort(state.sort);
  if (!prev || state.node !== prev.node || topologyChanged) applySelection(state);
}

let topologyTimer = 0;
let topologyFetching = false;
let topologyFetchedAt = -Infinity;

// Fetch the topology list soon: right away unless one was fetched under TOPOLOGY_MIN_INTERVAL_MS ago
// or one is on its way (then once it is back).
function scheduleTopologies() {
  if (topologyFetching) return;
  clearTimeout(topologyTimer);
  const wait = Math.max(0, topologyFetchedAt + TOPOLOGY_MIN_INTERVAL_MS - performance.now());
  topologyTimer = setTimeout(pollTopologies, wait);
}

async function pollTopologies() {
  clearTimeout(topologyTimer);
  topologyFetching = true;
  try {
    const list = await fetchTopologies();
    topologies = [...list].sort((a, b) => (Number(a.rank) || 0) - (Number(b.rank) || 0));
    refreshNodeLists(); // the tabs, and an empty view's text, which names the topology and its options
    renderOptions();
    if (!url.state.topology && topologies.length) url.update({ topology: topologies[0].id }, { push: false });
  } catch (err) {
    console.warn("scope: topology list unavailable", err);
  } finally {
    topologyFetching = false;
    topologyFetchedAt = performance.now();
    topologyTimer = setTimeout(pollTopologies, TOPOLOGY_REFRESH_MS);
  }
}

// --- user input ---------------------------------------------------------------------------------

el.topologies.addEventListener("click", (event) => {
  const button = event.target.closest("[data-topology]");
  if (button && button.dataset.topology !== url.state.topology) url.update({ topology: button.dataset.topology, node: "" });
});
function toggleOption(event) {
  const button = event.target.closest("[data-option]");
  if (!button) return;
  const name = button.dataset.option;
  url.update({ options: { [name]: url.state.options[name] === "show" ? "hide" : "show" } });
}
el.options.addEventListener("click", toggleOption);
el.empty.addEventListener("click", toggleOption);
for (const button of el.viewButtons) button.addEventListener("click", () => url.update({ view: button.dataset.view }));

let searchTimer = 0;
el.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  // Replace (not push) while typing so back/forward are not flooded with keystrokes.
  searchTimer = setTimeout(() => url.update({ search: el.search.value.trim() }, { push: false }), 120);
});
el.search.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    el.search.value = "";
    url.update({ search: "" }, { push: false });
    el.search.blur();
    event.stopPropagation();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && url.state.node) select("");
  if (event.key === "/" && document.activeElement !== el.search) {
    event.preventDefault();
    el.search.focus();
  }
});
$('[data-testid="zoom-in"]').addEventListener("click", () => graph.zoomIn());
$('[data-testid="zoom-out"]').addEventListener("click", () => graph.zoomOut());
$('[data-testid="zoom-fit"]').addEventListener("click", () => graph.fit());

// --- test and benchmark API ---------------------------------------------------------------------
// Read-only view of what the canvas shows, for browser tests (the graph has no DOM nodes to click)
// and for bench/ui_render.py.
window.scopeUI = Object.freeze({
  version: 1,
  nodeIds: () => visibleNodes().map((n) => n.id).sort(),
  nodePosition: (id) => graph.nodePosition(id),
  edgeInfo: (source, target) => graph.edgeInfo(source, target),
  selectNode: (id) => select(id),
  whenSettled: () => graph.whenSettled(),
  measureRedraw: () => graph.measureRedraw(),
  stats: () => ({
    topology: url.state.topology,
    view: url.state.view,
    connection: socket.status,
    resets,
    nodes: visibleNodes().length,
    totalNodes: store.size,
    edges: graph.edgeCount(),
    layoutRunning: graph.layout.running,
    lastLayoutMs: graph.timing.lastLayoutMs,
    lastDrawMs: graph.timing.lastDrawMs,
    resetToDrawMs: graph.timing.resetToDrawMs,
    resetToSettledMs: graph.timing.resetToSettledMs,
  }),
  // Time from the websocket reset message to the first complete draw of its nodes.
  get lastRenderMs() {
    return graph.timing.resetToDrawMs;
  },
});

renderLegend();
url.subscribe(onState);
onState(url.state, null);
pollTopologies();
