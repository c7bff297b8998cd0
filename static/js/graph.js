// Graph view: graphology holds the nodes/edges, sigma draws them with WebGL (labels on a canvas
// layer), IncrementalLayout positions them. Adjacency is client -> server, drawn as arrows.
import { Graph, Sigma, createEdgeArrowProgram } from "../vendor/graph-libs.js";
import { escapeHtml, formatBytes, formatPackets, formatRate } from "./format.js";
import { IncrementalLayout } from "./layout.js";
import { packComponents } from "./pack.js";
import { SHAPE_PROGRAMS, styleFor } from "./shapes.js";
import { edgeKey } from "./traffic.js";

// Up to this many nodes every label is drawn; beyond, sigma's label grid picks which to show.
const SMALL_MAP = 150;

const COLORS = {
  edge: "#7288aa", // a quiet edge: visible on the dark background, below the nodes' colours
  edgeBusy: [92, 200, 255], // the busiest edges blend towards this (rgb)
  edgeHighlight: "#c4ddff",
  dimNode: "#273241",
  label: "#d5dde7",
  labelMinor: "#8a98ab",
  halo: "#111821",
  hoverBox: "#1b2533",
  ring: "#ffffff",
  edgeLabel: "#5cc8ff",
};
const FONT = "Inter, 'Segoe UI', system-ui, -apple-system, sans-serif";

// Labels go under the node, centred, with a halo so they stay legible over edges.
function drawLabel(ctx, data, settings) {
  if (!data.label) return;
  const size = settings.labelSize;
  const y = data.y + data.size + size + 1;
  ctx.textAlign = "center";
  ctx.lineJoin = "round";
  ctx.font = `500 ${size}px ${FONT}`;
  ctx.lineWidth = 3;
  ctx.strokeStyle = COLORS.halo;
  ctx.strokeText(data.label, data.x, y);
  ctx.fillStyle = COLORS.label;
  ctx.fillText(data.label, data.x, y);
  if (data.minor && settings.showMinorLabels) {
    ctx.font = `400 ${size - 2}px ${FONT}`;
    ctx.strokeText(data.minor, data.x, y + size);
    ctx.fillStyle = COLORS.labelMinor;
    ctx.fillText(data.minor, data.x, y + size);
  }
  ctx.textAlign = "left";
}

// Hovered and selected nodes: a ring around the node and a boxed two-line label.
function drawHover(ctx, data, settings) {
  const size = settings.labelSize;
  ctx.beginPath();
  ctx.arc(data.x, data.y, data.size + 4, 0, Math.PI * 2);
  ctx.lineWidth = 2;
  ctx.strokeStyle = COLORS.ring;
  ctx.stroke();
  if (!data.label) return;
  ctx.font = `600 ${size}px ${FONT}`;
  const majorWidth = ctx.measureText(data.label).width;
  ctx.font = `400 ${size - 2}px ${FONT}`;
  const minorWidth = data.minor ? ctx.measureText(data.minor).width : 0;
  const width = Math.max(majorWidth, minorWidth) + 14;
  const height = data.minor ? size * 2 + 8 : size + 8;
  const top = data.y + data.size + 3; // covers the plain label drawn underneath
  ctx.fillStyle = COLORS.hoverBox;
  ctx.strokeStyle = "#3a4a60";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.roundRect(data.x - width / 2, top, width, height, 5);
  ctx.fill();
  ctx.stroke();
  ctx.textAlign = "center";
  ctx.fillStyle = "#ffffff";
  ctx.font = `600 ${size}px ${FONT}`;
  ctx.fillText(data.label, data.x, top + size + 2);
  if (data.minor) {
    ctx.fillStyle = COLORS.labelMinor;
    ctx.font = `400 ${size - 2}px ${FONT}`;
    ctx.fillText(data.minor, data.x, top + size * 2 + 3);
  }
  ctx.textAlign = "left";
}

// The traffic label of an edge of the hovered node: a small box at the edge's middle, level whatever the
// edge's angle (sigma's own label follows the line, and on a short edge it is cut to nothing).
function drawEdgeLabel(ctx, edge, source, target, settings) {
  if (!edge.label) return;
  const size = settings.edgeLabelSize;
  const x = (source.x + target.x) / 2;
  const y = (source.y + target.y) / 2;
  ctx.font = `500 ${size}px ${FONT}`;
  const width = ctx.measureText(edge.label).width + 10;
  const height = size + 6;
  ctx.fillStyle = COLORS.hoverBox;
  ctx.strokeStyle = "#3a4a60";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.roundRect(x - width / 2, y - height / 2, width, height, 4);
  ctx.fill();
  ctx.stroke();
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillStyle = COLORS.edgeLabel;
  ctx.fillText(edge.label, x, y + 0.5);
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
}

// What the label of an edge says: its rate each way once known, else its connections.
function edgeLabelText(traffic) {
  const rate = traffic?.rate;
  if (traffic?.bytes && rate) return `→ ${formatRate(rate.out)} · ← ${formatRate(rate.back)}`;
  const connections = traffic?.connections ?? 0;
  return `${connections} connection${connections === 1 ? "" : "s"}`;
}

// Edge size by traffic, both ways together: log scale from a quiet edge's to the busiest's at ~100 MiB/s,
// so a busy edge stands out at the default zoom without drowning the map in thick lines. (Sigma draws an
// edge of size s about s / 2 px thick at the default zoom: a quiet one is ~1.2 px, the busiest ~3.2 px;
// big maps scale them down with their nodes, see _updateScale. Arrow heads grow with the line: at 4 px
// the busiest edges' heads covered their neighbours and the labels of a busy hub.)
const EDGE_MIN = 2.5;
const EDGE_MAX = 6.5;
const TRAFFIC_REFRESH_MS = 1000; // rates move with time even when no update arrives
const HOVER_EDGE_PX = 6; // how close (px) the mouse must be to an edge to hover it

function busyness(bytesPerSecond) {
  return Math.min(1, Math.log10(1 + Math.max(0, bytesPerSecond) / 1024) / 5);
}

function edgeLook(traffic) {
  const rate = traffic?.rate;
  const busy = rate ? busyness(rate.out + rate.back) : 0;
  // Quantised, so an unchanged look is recognised and costs no redraw.
  const size = Math.round((EDGE_MIN + (EDGE_MAX - EDGE_MIN) * busy) * 4) / 4;
  const base = [0x72, 0x88, 0xaa];
  const rgb = base.map((c, i) => Math.round(c + (COLORS.edgeBusy[i] - c) * Math.min(1, busy * 1.6)));
  return { size, color: `rgb(${rgb.join(",")})` };
}

// The hover label of an edge: what flows each way now, and what its connections carried.
function edgeLabelHtml(sourceLabel, targetLabel, traffic) {
  const rows = [`<div class="edge-ends">${escapeHtml(sourceLabel)} → ${escapeHtml(targetLabel)}</div>`];
  const rate = traffic?.rate;
  if (traffic?.bytes) {
    const out = rate ? formatRate(rate.out) : "…";
    const back = rate ? formatRate(rate.back) : "…";
    rows.push(`<div class="edge-rate" data-testid="edge-rate">→ ${out} · ← ${back}</div>`);
  } else {
    rows.push(`<div class="edge-rate none" data-testid="edge-rate">no byte counts (conntrack accounting off)</div>`);
  }
  const connections = traffic?.connections ?? 0;
  const opened = rate ? ` · ${rate.opened.toFixed(rate.opened >= 10 ? 0 : 1)} opened/s` : "";
  rows.push(`<div class="edge-minor">${connections} connection${connections === 1 ? "" : "s"}${opened}</div>`);
  if (traffic?.bytes) {
    rows.push(
      `<div class="edge-minor" data-testid="edge-bytes">carried ${formatBytes(traffic.bytes[0])} → · ${formatBytes(traffic.bytes[1])} ←</div>`,
    );
  }
  if (traffic?.packets) {
    rows.push(
      `<div class="edge-minor" data-testid="edge-packets">${formatPackets(traffic.packets[0])} → · ${formatPackets(traffic.packets[1])} ←</div>`,
    );
  }
  return rows.join("");
}

function distanceToSegment(p, a, b) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const length2 = dx * dx + dy * dy;
  const t = length2 ? Math.max(0, Math.min(1, ((p.x - a.x) * dx + (p.y - a.y) * dy) / length2)) : 0;
  return Math.hypot(p.x - (a.x + t * dx), p.y - (a.y + t * dy));
}

// Deterministic jitter from the id, so the same data always lays out the same way.
function hash(id) {
  let h = 2166136261;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619);
  return (h >>> 0) / 4294967296;
}

export class GraphView {
  constructor(container, { onSelect, traffic }) {
    this.container = container;
    this.onSelect = onSelect;
    this.traffic = traffic; // TrafficMeter: the edges' rates
    this.hoveredEdge = ""; // edge key under the mouse
    this.tooltip = document.createElement("div");
    this.tooltip.className = "edge-tooltip";
    this.tooltip.dataset.testid = "edge-tooltip";
    this.tooltip.hidden = true;
    container.appendChild(this.tooltip);
    this.graph = new Graph({ type: "directed", multi: false, allowSelfLoops: false });
    this.positions = new Map(); // topology id -> Map(node id -> {x, y}); survives reconnects
    this.topology = "";
    this.pendingEdges = new Map(); // missing target -> Set(source): edges waiting for their node
    this.filter = null;
    this.selected = "";
    this.hovered = "";
    this.hoverSet = null;
    this.visible = true;
    this.timing = { lastDrawMs: 0, lastLayoutMs: 0, resetToDrawMs: 0, resetToSettledMs: 0 };
    this.resetAt = 0; // performance.now() when the reset message arrived; 0 once its first draw is done
    this.settledPendingDraw = false;
    this.settledWaiters = [];
    this.sizeScale = 1;
    this.edgeScale = 1;

    this.sigma = new Sigma(this.graph, container, {
      allowInvalidContainer: true, // the container is hidden while the table view is shown
      nodeProgramClasses: SHAPE_PROGRAMS,
      edgeProgramClasses: {
        // Heads long and wide enough to read the direction of a quiet edge at the default zoom, and no
        // wider than a node on a busy one.
        arrow: createEdgeArrowProgram({ lengthToThicknessRatio: 4, widenessToThicknessRatio: 3 }),
      },
      defaultNodeType: "circle",
      defaultEdgeType: "arrow",
      enableCameraRotation: false,
      minCameraRatio: 0.02,
      maxCameraRatio: 8,
      labelFont: FONT,
      labelSize: 12,
      labelColor: { color: COLORS.label },
      labelDensity: 0.5,
      labelGridCellSize: 140,
      labelRenderedSizeThreshold: 5.5,
      showMinorLabels: true, // our own setting, read by drawLabel; see _updateLabelDetail
      defaultDrawNodeLabel: drawLabel,
      defaultDrawNodeHover: drawHover,
      // Only the hovered node's edges have a label (see _edgeReducer).
      renderEdgeLabels: true,
      defaultDrawEdgeLabel: drawEdgeLabel,
      edgeLabelSize: 11,
      minEdgeThickness: EDGE_MIN,
      stagePadding: 100, // room for the labels (centred under the node) of the outermost nodes
      zIndex: true,
      nodeReducer: (node, data) => this._nodeReducer(node, data),
      edgeReducer: (edge, data) => this._edgeReducer(edge, data),
    });

    this.layout = new IncrementalLayout(this.graph, {
      // Separate groups are packed side by side after each step of a full layout (FA2 alone lets them
      // drift apart); later runs only place new nodes, so what the user looks at stays put.
      onPositions: (full) => {
        if (full) packComponents(this.graph, this._aspect());
      },
      onSettled: (ms) => {
        this.timing.lastLayoutMs = ms;
        this.settledPendingDraw = true;
        this._savePositions();
        this.sigma.refresh();
      },
    });

    this._bindEvents();
    setInterval(() => this._refreshTraffic(), TRAFFIC_REFRESH_MS);
  }

  _aspect() {
    const { width, height } = this.container.getBoundingClientRect();
    return width > 0 && height > 0 ? width / height : 1.6;
  }

  // Rates change with time: restyle the edges whose look changed, once a second, while shown.
  _refreshTraffic() {
    if (!this.visible || this.graph.size === 0) return;
    // Edge by edge, only those whose look changed: each update schedules a refresh of that edge, indexed
    // afresh. (updateEachEdgeAttributes with size/color hints makes sigma repaint every edge without
    // indexing, which throws for an edge added since the last refresh.)
    this.graph.forEachEdge((edge, attrs, source, target) => {
      const look = edgeLook(this.traffic.traffic(source, target));
      if (look.size !== attrs.size || look.color !== attrs.color) this.graph.mergeEdgeAttributes(edge, look);
    });
    if (this.hoveredEdge) this._showEdgeTooltip(this.hoveredEdge, null);
  }

  _edgeAttrs(source, target) {
    return edgeLook(this.traffic.traffic(source, target));
  }

  // The edge within HOVER_EDGE_PX of a viewport point, nearest first; "" if none.
  _edgeAt(point) {
    const cache = new Map();
    const at = (id) => {
      let p = cache.get(id);
      if (p === undefined) {
        const data = this.sigma.getNodeDisplayData(id);
        p = data && !data.hidden ? this.sigma.framedGraphToViewport(data) : null;
        cache.set(id, p);
      }
      return p;
    };
    let best = "";
    let bestDistance = HOVER_EDGE_PX;
    this.graph.forEachEdge((edge, attrs, source, target, sa, ta) => {
      if (sa.hidden || ta.hidden) return;
      const a = at(source);
      const b = at(target);
      if (!a || !b) return;
      const d = distanceToSegment(point, a, b);
      if (d <= bestDistance) {
        bestDistance = d;
        best = edge;
      }
    });
    return best;
  }

  _hoverEdge(edge, point) {
    if (edge === this.hoveredEdge) {
      if (edge) this._showEdgeTooltip(edge, point);
      return;
    }
    this.hoveredEdge = edge;
    if (edge) this._showEdgeTooltip(edge, point);
    else this.tooltip.hidden = true;
    this.container.style.cursor = edge ? "help" : "";
    this.sigma.refresh({ skipIndexation: true });
  }

  _showEdgeTooltip(edge, point) {
    if (!this.graph.hasEdge(edge)) {
      this._hoverEdge("", null);
      return;
    }
    const [source, target] = this.graph.extremities(edge);
    const label = (id) => this.graph.getNodeAttribute(id, "label");
    this.tooltip.innerHTML = edgeLabelHtml(label(source), label(target), this.traffic.traffic(source, target));
    this.tooltip.dataset.edge = edge;
    this.tooltip.hidden = false;
    if (point) {
      this.tooltip.style.left = `${point.x + 14}px`;
      this.tooltip.style.top = `${point.y + 14}px`;
    }
  }

  _bindEvents() {
    let renderStart = 0;
    this.sigma.on("beforeRender", () => {
      renderStart = performance.now();
    });
    this.sigma.on("afterRender", () => {
      const now = performance.now();
      this.timing.lastDrawMs = now - renderStart;
      if (this.resetAt && this.graph.order > 0) {
        this.timing.resetToDrawMs = now - this.resetAt;
        this.resetAt = 0;
      }
      if (this.settledPendingDraw && !this.layout.running) {
        if (this._growFrame()) return; // redrawn in the larger frame first; that draw counts as settled
        this.settledPendingDraw = false;
        if (this.resetToSettleFrom) {
          this.timing.resetToSettledMs = now - this.resetToSettleFrom;
          this.resetToSettleFrom = 0;
        }
        // Freeze the frame once a full layout settled: later additions must not rescale the view.
        if (!this.sigma.getCustomBBox()) this.sigma.setCustomBBox(this.sigma.getBBox());
        const waiters = this.settledWaiters;
        this.settledWaiters = [];
        for (const resolve of waiters) resolve();
      }
    });
    this.sigma.on("clickNode", ({ node }) => this.onSelect(node));
    // Edges are hovered by distance, not by sigma's pixel-exact picking: a 2 px line is hard to hit.
    let pending = null;
    this.sigma.on("moveBody", ({ event }) => {
      if (this.hovered) return;
      const first = pending === null;
      pending = { x: event.x, y: event.y };
      if (!first) return;
      requestAnimationFrame(() => {
        const point = pending;
        pending = null;
        if (!this.hovered) this._hoverEdge(this._edgeAt(point), point);
      });
    });
    this.sigma.on("leaveStage", () => this._hoverEdge("", null));
    this.sigma.getCamera().on("updated", () => this._updateLabelDetail());
    this.sigma.on("enterNode", ({ node }) => {
      this._hoverEdge("", null);
      this.hovered = node;
      this.hoverSet = new Set(this.graph.neighbors(node));
      this.hoverSet.add(node);
      this.container.style.cursor = "pointer";
      this.sigma.refresh({ skipIndexation: true });
    });
    this.sigma.on("leaveNode", () => {
      this.hovered = "";
      this.hoverSet = null;
      this.container.style.cursor = "";
      this.sigma.refresh({ skipIndexation: true });
    });
  }

  // The frame is frozen after a full layout, but a node laid out beyond it (new isolated nodes start
  // on a ring just outside the picture) must not stay off-screen: widen the frame just enough.
  _growFrame() {
    const frame = this.sigma.getCustomBBox();
    const extent = this.sigma.getBBox();
    if (!frame || this.graph.order === 0) return false;
    const x = [Math.min(frame.x[0], extent.x[0]), Math.max(frame.x[1], extent.x[1])];
    const y = [Math.min(frame.y[0], extent.y[0]), Math.max(frame.y[1], extent.y[1])];
    if (x[0] === frame.x[0] && x[1] === frame.x[1] && y[0] === frame.y[0] && y[1] === frame.y[1]) return false;
    this.sigma.setCustomBBox({ x, y });
    this.sigma.scheduleRefresh(); // the normalisation to the frame is only recomputed by a refresh
    return true;
  }

  _nodeReducer(node, data) {
    const out = { ...data, size: data.size * this.sizeScale };
    // A small map has room for every label: sigma's label grid would otherwise hide one of two
    // neighbours, which reads as an anonymous node. Culling is for the big maps.
    if (this.graph.order <= SMALL_MAP) out.forceLabel = true;
    if (this.hoverSet && !this.hoverSet.has(node)) {
      out.color = COLORS.dimNode;
      out.label = "";
      out.zIndex = 0;
    } else if (this.hoverSet) {
      out.zIndex = 2;
      out.forceLabel = true;
    }
    if (node === this.selected) {
      out.highlighted = true;
      out.zIndex = 3;
    }
    return out;
  }

  _edgeReducer(edge, data) {
    const size = Math.max(EDGE_MIN * 0.8, data.size * this.edgeScale);
    if (edge === this.hoveredEdge) return { ...data, color: COLORS.edgeHighlight, size: size + 1, zIndex: 2 };
    const out = { ...data, size };
    if (!this.hovered && !this.selected) return out;
    const focus = this.hovered || this.selected;
    const [source, target] = this.graph.extremities(edge);
    if (source === focus || target === focus) {
      out.color = COLORS.edgeHighlight;
      out.size = Math.max(size, EDGE_MIN);
      out.zIndex = 1;
      if (focus === this.hovered) {
        out.label = edgeLabelText(this.traffic.traffic(source, target));
        out.forceLabel = true;
      }
    } else if (this.hovered) {
      out.hidden = true;
    }
    return out;
  }

  // Second label lines (label_minor) only where there is room: small views, or zoomed in.
  _updateLabelDetail() {
    const show = this.graph.order <= 300 || this.sigma.getCamera().ratio < 0.4;
    if (show !== this.sigma.getSetting("showMinorLabels")) this.sigma.setSetting("showMinorLabels", show);
  }

  // Smaller shapes in big views so they do not merge into a carpet; larger in small ones.
  _updateScale() {
    const order = this.graph.order;
    this.sizeScale = order < 60 ? 1.4 : order < 400 ? 1.15 : order < 2000 ? 0.9 : 0.75;
    // Busy edges (and their heads) would cover a dense map; a quiet edge stays ~1 px whatever the size.
    this.edgeScale = order < 60 ? 1 : order < 400 ? 0.8 : 0.6;
    this._updateLabelDetail();
  }

  // --- data ---------------------------------------------------------------------------------

  _attrs(node) {
    const style = styleFor(node);
    return {
      label: node.label_major || node.id,
      minor: node.label_minor || "",
      kind: node.kind,
      size: style.size,
      color: style.color,
      type: style.type,
      hidden: this.filter ? !this.filter(node) : false,
    };
  }

  // Replaces the whole view (websocket reset). Nodes seen before in this topology keep their
  // positions, so a reconnect does not reshuffle the picture.
  reset(topology, nodes, receivedAt) {
    this.layout.stop();
    this.topology = topology;
    if (!this.positions.has(topology)) this.positions.set(topology, new Map());
    const known = this.positions.get(topology);
    this.graph.clear();
    this.pendingEdges.clear();
    this.hovered = "";
    this.hoverSet = null;
    this.hoveredEdge = "";
    this.tooltip.hidden = true;
    const placed = [];
    const unplaced = [];
    // Sigma needs coordinates on insertion: unknown nodes start on a disc sized for the node
    // count (deterministic from the id), then are placed properly below.
    const radius = 12 * Math.sqrt(nodes.length + 1);
    for (const node of nodes) {
      const attrs = this._attrs(node);
      const pos = known.get(node.id);
      if (pos) {
        attrs.x = pos.x;
        attrs.y = pos.y;
        placed.push(node.id);
      } else {
        const angle = hash(node.id) * Math.PI * 2;
        const r = radius * Math.sqrt(hash(`${node.id}#r`));
        attrs.x = Math.cos(angle) * r;
        attrs.y = Math.sin(angle) * r;
        unplaced.push(node.id);
      }
      this.graph.addNode(node.id, attrs);
    }
    for (const node of nodes) this._syncEdges(node);

    // Timings only for a real view: the empty reset on a topology switch is not a measurement.
    this.resetAt = nodes.length ? receivedAt || performance.now() : 0;
    this.resetToSettleFrom = this.resetAt;
    if (placed.length < unplaced.length) {
      // Mostly new: lay out everything from scratch, from a seed that is already close.
      this._seedPositions();
      this.sigma.setCustomBBox(null);
      this.sigma.getCamera().setState({ x: 0.5, y: 0.5, ratio: 1, angle: 0 });
      this.layout.full();
    } else {
      this._placeNearNeighbours(unplaced);
      this.layout.settleNew(unplaced);
      if (unplaced.length === 0 && nodes.length) this.settledPendingDraw = true;
    }
    this._updateScale();
    this.sigma.refresh();
  }

  // Applies an incremental change from the store.
  apply(store, change) {
    for (const id of change.removed) {
      if (this.graph.hasNode(id)) this.graph.dropNode(id);
      this.pendingEdges.delete(id);
      if (id === this.hovered) {
        this.hovered = "";
        this.hoverSet = null;
      }
    }
    for (const id of change.added) {
      const node = store.get(id);
      if (!node || this.graph.hasNode(id)) continue;
      // Provisional coordinates (sigma needs some); _placeNearNeighbours sets the real ones.
      this.graph.addNode(id, { ...this._attrs(node), x: 0, y: 0 });
    }
    for (const id of change.updated) {
      const node = store.get(id);
      if (node && this.graph.hasNode(id)) this.graph.mergeNodeAttributes(id, this._attrs(node));
    }
    for (const id of [...change.added, ...change.updated]) {
      const node = store.get(id);
      if (node) this._syncEdges(node);
    }
    if (change.added.length || change.removed.length) this._updateScale();
    const fresh = change.added.filter((id) => this.graph.hasNode(id));
    if (fresh.length) {
      this._placeNearNeighbours(fresh);
      this.layout.settleNew(fresh);
    }
  }

  _syncEdges(node) {
    const source = node.id;
    const wanted = new Set((node.adjacency || []).filter((t) => t !== source));
    for (const edge of this.graph.outEdges(source)) {
      const target = this.graph.target(edge);
      if (!wanted.has(target)) this.graph.dropEdge(edge);
      else {
        wanted.delete(target);
        this.graph.mergeEdgeAttributes(edge, this._edgeAttrs(source, target));
      }
    }
    for (const target of wanted) {
      if (this.graph.hasNode(target)) {
        this.graph.addDirectedEdgeWithKey(edgeKey(source, target), source, target, this._edgeAttrs(source, target));
      } else {
        if (!this.pendingEdges.has(target)) this.pendingEdges.set(target, new Set());
        this.pendingEdges.get(target).add(source);
      }
    }
    // Edges from earlier nodes that were waiting for this one.
    const waiting = this.pendingEdges.get(source);
    if (waiting) {
      this.pendingEdges.delete(source);
      for (const from of waiting) {
        if (this.graph.hasNode(from) && !this.graph.hasEdge(from, source)) {
          this.graph.addDirectedEdgeWithKey(edgeKey(from, source), from, source, this._edgeAttrs(from, source));
        }
      }
    }
  }

  // A starting point for a full layout that FA2 only has to polish: the best-connected nodes
  // (servers) take slots on a sunflower spiral, then each other node lands in a ring around the
  // already-placed neighbours it talks to; nodes with no placed neighbour take the next slot.
  _seedPositions() {
    const spacing = 10;
    const ids = this.graph.nodes();
    const degree = new Map(ids.map((id) => [id, this.graph.degree(id)]));
    ids.sort((a, b) => degree.get(b) - degree.get(a) || (a < b ? -1 : 1));
    const pos = new Map();
    let slot = 0;
    const golden = Math.PI * (3 - Math.sqrt(5));
    for (const id of ids) {
      let sx = 0;
      let sy = 0;
      let n = 0;
      let spread = 0;
      for (const other of this.graph.neighbors(id)) {
        const p = pos.get(other);
        if (!p) continue;
        sx += p.x;
        sy += p.y;
        n += 1;
        spread = Math.max(spread, degree.get(other));
      }
      const angle = hash(id) * Math.PI * 2;
      if (n > 0) {
        const r = spacing * (0.5 + hash(`${id}#r`)) * Math.sqrt(1 + spread / 6);
        pos.set(id, { x: sx / n + Math.cos(angle) * r, y: sy / n + Math.sin(angle) * r });
      } else {
        // Leave room around hubs for their clients: slots are spaced by the hub's degree.
        slot += 1 + Math.sqrt(degree.get(id));
        const r = spacing * 1.6 * Math.sqrt(slot);
        pos.set(id, { x: Math.cos(slot * golden) * r, y: Math.sin(slot * golden) * r });
      }
    }
    this.graph.updateEachNodeAttributes((id, attrs) => {
      const p = pos.get(id);
      attrs.x = p.x;
      attrs.y = p.y;
      return attrs;
    });
  }

  // New nodes start at the centroid of their already-placed neighbours (plus a little jitter);
  // isolated ones go on a ring just outside the current picture.
  _placeNearNeighbours(ids) {
    if (ids.length === 0) return;
    const fresh = new Set(ids);
    let minX = Infinity;
    let maxX = -Infinity;
    let minY = Infinity;
    let maxY = -Infinity;
    this.graph.forEachNode((node, a) => {
      if (fresh.has(node)) return;
      minX = Math.min(minX, a.x);
      maxX = Math.max(maxX, a.x);
      minY = Math.min(minY, a.y);
      maxY = Math.max(maxY, a.y);
    });
    const hasBox = Number.isFinite(minX);
    const cx = hasBox ? (minX + maxX) / 2 : 0;
    const cy = hasBox ? (minY + maxY) / 2 : 0;
    const span = hasBox ? Math.max(maxX - minX, maxY - minY, 20) : 100;
    for (const id of ids) {
      let sx = 0;
      let sy = 0;
      let n = 0;
      for (const other of this.graph.neighbors(id)) {
        if (fresh.has(other)) continue;
        const a = this.graph.getNodeAttributes(other);
        sx += a.x;
        sy += a.y;
        n += 1;
      }
      const angle = hash(id) * Math.PI * 2;
      let x;
      let y;
      if (n > 0) {
        const jitter = span * 0.03;
        x = sx / n + Math.cos(angle) * jitter;
        y = sy / n + Math.sin(angle) * jitter;
      } else {
        const r = (span / 2) * (1.05 + 0.15 * hash(`${id}#r`));
        x = cx + Math.cos(angle) * r;
        y = cy + Math.sin(angle) * r;
      }
      this.graph.mergeNodeAttributes(id, { x, y });
    }
  }

  _savePositions() {
    const known = this.positions.get(this.topology);
    if (!known) return;
    this.graph.forEachNode((node, a) => known.set(node, { x: a.x, y: a.y }));
  }

  setFilter(filter, store) {
    this.filter = filter;
    this.graph.updateEachNodeAttributes(
      (id, attrs) => {
        const node = store.get(id);
        attrs.hidden = filter && node ? !filter(node) : false;
        return attrs;
      },
      // No attribute hint: hiding nodes changes sigma's label grid, so it must re-index.
    );
  }

  select(id) {
    this.selected = id || "";
    this.sigma.refresh({ skipIndexation: true });
  }

  setVisible(visible) {
    this.visible = visible;
    if (visible) {
      this.sigma.resize();
      this.sigma.refresh();
    }
  }

  // --- camera -------------------------------------------------------------------------------

  zoomIn() {
    this.sigma.getCamera().animatedZoom({ duration: 200 });
  }

  zoomOut() {
    this.sigma.getCamera().animatedUnzoom({ duration: 200 });
  }

  fit() {
    this.sigma.setCustomBBox(null);
    this.sigma.refresh();
    this.sigma.setCustomBBox(this.sigma.getBBox());
    this.sigma.getCamera().animatedReset({ duration: 250 });
  }

  // --- test/bench API -----------------------------------------------------------------------

  visibleNodeIds() {
    return this.graph.filterNodes((_, a) => !a.hidden);
  }

  // Client (page) coordinates of a node's centre, or null if it is not drawn right now.
  nodePosition(id) {
    if (!this.visible || !this.graph.hasNode(id) || this.graph.getNodeAttribute(id, "hidden")) return null;
    const data = this.sigma.getNodeDisplayData(id);
    if (!data) return null;
    const p = this.sigma.framedGraphToViewport(data);
    const rect = this.container.getBoundingClientRect();
    return { x: rect.left + p.x, y: rect.top + p.y };
  }

  // An edge as drawn: its thickness (px at zoom 1), colour, the page coordinates of its midpoint (for
  // hovering it), its traffic and the label drawn on it now ("" unless an end is hovered); null if it is
  // not drawn.
  edgeInfo(source, target) {
    const key = edgeKey(source, target);
    if (!this.graph.hasEdge(key)) return null;
    const a = this.nodePosition(source);
    const b = this.nodePosition(target);
    if (!a || !b) return null;
    const attrs = this.graph.getEdgeAttributes(key);
    return {
      size: attrs.size,
      color: attrs.color,
      from: a,
      to: b,
      midpoint: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 },
      traffic: this.traffic.traffic(source, target),
      label: this.sigma.getEdgeDisplayData(key)?.label || "",
    };
  }

  edgeCount() {
    let count = 0;
    this.graph.forEachEdge((edge, attrs, source, target, sa, ta) => {
      if (!sa.hidden && !ta.hidden) count += 1;
    });
    return count;
  }

  // One full redraw: `jsMs` is sigma's synchronous refresh (reprocess + WebGL calls), `frameMs`
  // runs until the browser presented the frame (on GPU-less machines rasterisation dominates).
  async measureRedraw() {
    const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
    await frame();
    const start = performance.now();
    this.sigma.refresh();
    const jsMs = performance.now() - start;
    await frame();
    await frame();
    return { jsMs, frameMs: performance.now() - start };
  }

  // Resolves once the current layout has finished and been drawn.
  whenSettled() {
    if (!this.layout.running && !this.settledPendingDraw && !this.resetAt) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }
}
