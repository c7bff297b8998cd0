// Details panel: shows the NodeSummary at once (from the websocket store), then the full
// NodeDetails from REST (connections, children, controls), and refetches when the node updates.
import { uPlot } from "../vendor/uplot.js";
import { fetchControlChannel, fetchNodeDetails, postControl } from "./api.js";
import { escapeHtml, formatBytes, formatMetric, formatPackets, formatRate } from "./format.js";
import { KIND_STYLE, styleFor } from "./shapes.js";

const REFRESH_MIN_MS = 1000; // at most one REST refetch per second while the node keeps updating
const TRAFFIC_REFRESH_MS = 2000; // the connections' rates move with time, updates or not
// How often an open panel with controls asks whether their probe can be reached: heartbeats come and go
// without the node changing, so the node's updates alone would not tell.
const CHANNEL_CHECK_MS = 2000;

// Icons of the controls (the `icon` of each), 16 px line drawings in the UI's own style.
const CONTROL_ICONS = {
  stop: '<rect x="5" y="5" width="14" height="14" rx="1.5"/>',
  start: '<path d="M7 4.5v15l12-7.5z"/>',
  unpause: '<path d="M7 4.5v15l12-7.5z"/>',
  pause: '<path d="M7 5v14M17 5v14"/>',
  restart: '<path d="M19 12a7 7 0 1 1-2.05-4.95M19 4v4.5h-4.5"/>',
  remove: '<path d="M4 7h16M9 7V4.5h6V7M6.5 7l1 13h9l1-13"/>',
  terminal: '<rect x="3" y="4.5" width="18" height="15" rx="2"/><path d="M7 10l3 2.5L7 15M12.5 15h4.5"/>',
  attach: '<path d="M10 14l4-4M8.5 11.5l-2 2a3.2 3.2 0 0 0 4.5 4.5l2-2M15.5 12.5l2-2A3.2 3.2 0 0 0 13 6l-2 2"/>',
  logs: '<path d="M5 6h14M5 10h14M5 14h10M5 18h7"/>',
};

function controlIcon(name) {
  const paths = CONTROL_ICONS[name] || '<circle cx="12" cy="12" r="6"/>';
  return `<svg viewBox="0 0 24 24" width="15" height="15" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${paths}</svg>`;
}

function sparkline(target, m, color) {
  const samples = (m.samples || []).filter((s) => Number.isFinite(s.date) && Number.isFinite(s.value));
  if (samples.length < 2) return null;
  samples.sort((a, b) => a.date - b.date);
  const xs = samples.map((s) => s.date);
  const ys = samples.map((s) => s.value);
  // Scale to the data, not to m.max: a sparkline is for the trend (the value is printed above).
  const maxY = Math.max(...ys) * 1.15 || 1;
  return new uPlot(
    {
      width: target.clientWidth || 300,
      height: 40,
      pxAlign: false,
      cursor: { show: false },
      legend: { show: false },
      select: { show: false },
      scales: { x: { time: false }, y: { range: [0, maxY] } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: color, width: 1.5, fill: `${color}33`, points: { show: false } }],
    },
    [xs, ys],
    target,
  );
}

export class DetailsPanel {
  constructor(root, { traffic, onNavigate, onSelect, onClose, onPipe }) {
    this.root = root;
    this.traffic = traffic; // TrafficMeter, for the connections' rates
    this.onNavigate = onNavigate; // (topologyId, nodeId) for parents and children
    this.onSelect = onSelect; // (nodeId) within the current topology, for connections
    this.onClose = onClose;
    this.onPipe = onPipe; // (pipeId, kind "tty" | "log", title) when a control opened a pipe
    this.pending = new Set(); // ids of the controls in flight: their buttons are disabled
    this.controlError = "";
    this.channel = null; // {connected, reason} of the controls' probe, once asked
    this.channelTimer = 0;
    this.topology = "";
    this.nodeId = "";
    this.summary = null;
    this.details = null;
    this.error = "";
    this.gone = false;
    this.plots = [];
    this.fetchSeq = 0;
    this.lastFetch = 0;
    this.refetchTimer = 0;
    root.addEventListener("click", (event) => this._click(event));
    this.shownRates = "";
    setInterval(() => {
      // Redrawn only when a rate as shown changed: a link replaced under the mouse loses its click.
      if (this.details && this._rateText() !== this.shownRates) this._render();
    }, TRAFFIC_REFRESH_MS);
  }

  // The rates of the listed connections as the cells show them.
  _rateText() {
    const conns = this.details?.connections || {};
    return ["in", "out"]
      .flatMap((dir) => (conns[dir] || []).map((c) => this._trafficCells(dir, c)))
      .join("");
  }

  get isOpen() {
    return Boolean(this.nodeId);
  }

  open(topology, nodeId, summary) {
    const same = this.topology === topology && this.nodeId === nodeId;
    this.topology = topology;
    this.nodeId = nodeId;
    this.summary = summary || (same ? this.summary : null);
    if (!same) {
      this.details = null;
      this.error = "";
      this.controlError = "";
      this.pending.clear();
      this.channel = null;
      clearTimeout(this.channelTimer);
      this.channelTimer = 0;
    }
    this.gone = false;
    this.root.hidden = false;
    this.root.dataset.nodeId = nodeId;
    this._render();
    this._fetch();
  }

  close() {
    if (!this.nodeId) return;
    this.nodeId = "";
    this.summary = null;
    this.details = null;
    this.channel = null;
    clearTimeout(this.refetchTimer);
    clearTimeout(this.channelTimer);
    this.channelTimer = 0;
    this._destroyPlots();
    this.root.hidden = true;
    delete this.root.dataset.nodeId;
    this.root.innerHTML = "";
  }

  // Websocket told us the node changed: show the new summary now, refetch details soon.
  nodeUpdated(summary) {
    if (!this.nodeId || summary.id !== this.nodeId) return;
    this.summary = summary;
    this.gone = false;
    this._render();
    const wait = Math.max(0, REFRESH_MIN_MS - (performance.now() - this.lastFetch));
    clearTimeout(this.refetchTimer);
    this.refetchTimer = setTimeout(() => this._fetch(), wait);
  }

  // A node with an edge to this one changed (its traffic, most often): the inbound rows' bytes come from
  // the details, so fetch them again soon.
  peerUpdated() {
    if (!this.nodeId || !this.details) return;
    const wait = Math.max(0, REFRESH_MIN_MS - (performance.now() - this.lastFetch));
    clearTimeout(this.refetchTimer);
    this.refetchTimer = setTimeout(() => this._fetch(), wait);
  }

  nodeRemoved(id) {
    if (id !== this.nodeId) return;
    this.gone = true;
    this._render();
  }

  async _fetch() {
    const seq = ++this.fetchSeq;
    const { topology, nodeId } = this;
    this.lastFetch = performance.now();
    try {
      const body = await fetchNodeDetails(topology, nodeId);
      if (seq !== this.fetchSeq || nodeId !== this.nodeId) return;
      this.details = body.node;
      this.error = "";
      if (!this.channelTimer) this._checkChannel();
    } catch (err) {
      if (seq !== this.fetchSeq || nodeId !== this.nodeId) return;
      this.error = err.status === 404 ? "This node is not in the current report." : `Could not load details: ${err.message}`;
    }
    this._render();
  }

  // Asks whether the probe behind the controls can be reached, now and every CHANNEL_CHECK_MS while the
  // panel shows controls; re-renders when the answer changes.
  async _checkChannel() {
    clearTimeout(this.channelTimer);
    this.channelTimer = 0;
    const { nodeId } = this;
    const probeId = (this.details?.controls || [])[0]?.probeId;
    if (!nodeId || !probeId) return;
    this.channelTimer = setTimeout(() => this._checkChannel(), CHANNEL_CHECK_MS);
    let channel;
    try {
      channel = await fetchControlChannel(probeId);
    } catch {
      return; // the app itself is away: the connection status says so
    }
    if (nodeId !== this.nodeId) return;
    const changed = !this.channel || this.channel.connected !== channel.connected || this.channel.reason !== channel.reason;
    this.channel = channel;
    if (changed) this._render();
  }

  _click(event) {
    const el = event.target.closest("[data-action]");
    if (!el) return;
    event.preventDefault();
    const { action } = el.dataset;
    if (action === "close") this.onClose();
    else if (action === "navigate") this.onNavigate(el.dataset.topology, el.dataset.nodeId);
    else if (action === "select") this.onSelect(el.dataset.nodeId);
    else if (action === "control") this._control(el.dataset.controlId);
  }

  async _control(controlId) {
    const control = (this.details?.controls || []).find((c) => c.id === controlId);
    if (!control || this.pending.has(controlId)) return;
    if (control.confirm && !window.confirm(control.confirm)) return;
    const { nodeId } = this;
    const title = `${control.human}: ${this.details?.label_major || nodeId}`;
    this.pending.add(controlId);
    this.controlError = "";
    this._render();
    try {
      const result = await postControl(control.probeId, control.nodeId, control.id);
      if (result.pipe && this.onPipe) this.onPipe(result.pipe, control.pipe || "log", title);
    } catch (err) {
      if (nodeId === this.nodeId) this.controlError = `${control.human} failed: ${err.message}`;
    } finally {
      this.pending.delete(controlId);
    }
    if (nodeId !== this.nodeId) return;
    this._render();
    this._fetch(); // the node's state, and so its controls, changed
  }

  // Sent and received from this node's side: an inbound connection's client -> server bytes are what it
  // received. Each cell: the bytes on the connections now, their packets, and the rate under it once known.
  _trafficCells(dir, c) {
    const out = dir === "out";
    const edge = out ? this.traffic.traffic(this.nodeId, c.id) : this.traffic.traffic(c.id, this.nodeId);
    const rate = edge?.rate;
    const cell = (bytes, packets, perSecond, testid) => {
      const total = Array.isArray(c.bytes) ? formatBytes(bytes) : "–";
      const count = Array.isArray(c.packets) ? `<span class="packets" data-testid="${testid}-packets">${escapeHtml(formatPackets(packets))}</span>` : "";
      const speed = rate && Array.isArray(c.bytes) ? `<span class="rate">${escapeHtml(formatRate(perSecond))}</span>` : "";
      return `<td class="number" data-testid="${testid}">${escapeHtml(total)}${count}${speed}</td>`;
    };
    const [toServer, toClient] = Array.isArray(c.bytes) ? c.bytes : [0, 0];
    const [packetsToServer, packetsToClient] = Array.isArray(c.packets) ? c.packets : [0, 0];
    return (
      cell(out ? toServer : toClient, out ? packetsToServer : packetsToClient, rate ? (out ? rate.out : rate.back) : 0, "connection-sent") +
      cell(out ? toClient : toServer, out ? packetsToClient : packetsToServer, rate ? (out ? rate.back : rate.out) : 0, "connection-received")
    );
  }

  _destroyPlots() {
    for (const plot of this.plots) plot.destroy();
    this.plots = [];
  }

  _render() {
    if (!this.nodeId) return;
    const node = this.details || this.summary || { id: this.nodeId };
    const style = styleFor(node);
    const kind = node.pseudo ? "pseudo" : node.kind;
    const kindLabel = KIND_STYLE[kind]?.label || kind || "";
    const parts = [];
    parts.push(`
      <header class="details-head" style="--c:${style.color}">
        <span class="swatch big shape-${style.type}" style="--c:${style.color}"></span>
        <div class="titles">
          <h2 data-testid="details-title" title="${escapeHtml(node.label_major || node.id)}">${escapeHtml(node.label_major || node.id)}</h2>
          <div class="subtitle" data-testid="details-subtitle">${escapeHtml(node.label_minor || "")}${kindLabel ? ` <span class="kind">${escapeHtml(kindLabel)}</span>` : ""}</div>
        </div>
        <button type="button" class="close" data-action="close" data-testid="details-close" title="Close (Esc)" aria-label="Close">&times;</button>
      </header>`);
    if (this.gone) parts.push(`<div class="notice" data-testid="details-gone">This node has left the view; showing its last known state.</div>`);
    if (this.error) parts.push(`<div class="notice error" data-testid="details-error">${escapeHtml(this.error)}</div>`);

    const controls = this.details?.controls || [];
    const unreachable = this.channel && !this.channel.connected ? this.channel.reason || "The probe cannot be reached right now." : "";
    if (controls.length) {
      parts.push(`<div class="controls${unreachable ? " unreachable" : ""}" data-testid="details-controls">${controls
        .map((c) => {
          const busy = this.pending.has(c.id);
          const title = unreachable ? `${c.human}: unavailable. ${unreachable}` : `${c.human}${busy ? " (in progress)" : ""}`;
          return `<button type="button" class="control${busy ? " pending" : ""}" data-action="control" data-testid="details-control-${escapeHtml(c.id)}" data-control-id="${escapeHtml(c.id)}" data-probe-id="${escapeHtml(c.probeId)}" data-node-id="${escapeHtml(c.nodeId)}" title="${escapeHtml(title)}" aria-label="${escapeHtml(c.human)}"${busy || unreachable ? " disabled" : ""}>${controlIcon(c.icon)}<span>${escapeHtml(c.human)}</span></button>`;
        })
        .join("")}</div>`);
      if (unreachable) parts.push(`<div class="notice" data-testid="details-controls-unreachable">${escapeHtml(unreachable)}</div>`);
    }
    if (this.controlError) parts.push(`<div class="notice error" data-testid="details-control-error">${escapeHtml(this.controlError)}</div>`);

    const metrics = node.metrics || [];
    if (metrics.length) {
      parts.push(`<section><h3>Metrics</h3>${metrics
        .map((m) => `<div class="metric" data-testid="details-metric-${escapeHtml(m.id)}"><div class="metric-head"><span>${escapeHtml(m.label || m.id)}</span><span class="value">${escapeHtml(formatMetric(m))}</span></div><div class="spark" data-metric="${escapeHtml(m.id)}"></div></div>`)
        .join("")}</section>`);
    }

    const meta = node.metadata || [];
    if (meta.length) {
      parts.push(`<section><h3>Info</h3><table class="meta">${meta
        .map((row) => `<tr data-testid="details-meta-${escapeHtml(row.id)}"><th>${escapeHtml(row.label || row.id)}</th><td title="${escapeHtml(row.value)}">${escapeHtml(row.value)}</td></tr>`)
        .join("")}</table></section>`);
    }

    const parents = node.parents || [];
    if (parents.length) {
      parts.push(`<section><h3>Parents</h3><div class="parents">${parents
        .map((p) => `<a href="#" class="chip" data-action="navigate" data-testid="details-parent" data-topology="${escapeHtml(p.topologyId)}" data-node-id="${escapeHtml(p.id)}">${escapeHtml(p.label)}</a>`)
        .join("")}</div></section>`);
    }

    if (this.details) {
      const conns = this.details.connections || {};
      for (const [dir, title] of [["in", "Inbound"], ["out", "Outbound"]]) {
        const list = conns[dir] || [];
        parts.push(`<section data-testid="details-connections-${dir}"><h3>${title} <span class="count">${list.length}</span></h3>${
          list.length
            ? `<table class="conns"><tr><th>${dir === "in" ? "From" : "To"}</th><th>Port</th><th>#</th><th class="number" title="Bytes this node sent over these connections, and per second">Sent</th><th class="number" title="Bytes this node received over these connections, and per second">Received</th></tr>${list
                .map((c) => `<tr data-testid="details-connection" data-node-id="${escapeHtml(c.id)}"><td><a href="#" data-action="select" data-node-id="${escapeHtml(c.id)}">${escapeHtml(c.label || c.id)}</a></td><td>${escapeHtml(c.port ?? "")}</td><td>${escapeHtml(c.count ?? "")}</td>${this._trafficCells(dir, c)}</tr>`)
                .join("")}</table>`
            : `<div class="none">None</div>`
        }</section>`);
      }
      for (const group of this.details.children || []) {
        const nodes = group.nodes || [];
        parts.push(`<section data-testid="details-children-${escapeHtml(group.topologyId)}"><h3>${escapeHtml(group.label)} <span class="count">${nodes.length}</span></h3>${
          nodes.length
            ? `<ul class="children">${nodes
                .map((c) => `<li><a href="#" data-action="navigate" data-topology="${escapeHtml(group.topologyId)}" data-node-id="${escapeHtml(c.id)}">${escapeHtml(c.label || c.id)}</a>${(c.metadata || []).map((m) => `<span class="minor">${escapeHtml(m.label || m.id)} ${escapeHtml(m.value)}</span>`).join("")}</li>`)
                .join("")}</ul>`
            : `<div class="none">None</div>`
        }</section>`);
      }
    } else if (!this.error) {
      parts.push(`<div class="loading">Loading details…</div>`);
    }

    // Keep the scroll position across refreshes: the panel re-renders on every update.
    const scroll = this.root.scrollTop;
    this._destroyPlots();
    this.root.innerHTML = parts.join("");
    this.root.scrollTop = scroll;
    this.shownRates = this._rateText();
    for (const m of metrics) {
      const target = this.root.querySelector(`.spark[data-metric="${CSS.escape(String(m.id))}"]`);
      const color = m.id === "memory" ? "#a98bf5" : "#4ea1f3";
      const plot = target && sparkline(target, m, color);
      if (plot) this.plots.push(plot);
      else if (target) target.remove(); // fewer than two samples: no trend to draw
    }
  }
}
