// Incremental ForceAtlas2 layout, computed in a web worker so thousands of nodes never block the
// page; positions stream back a few times a second and the graph visibly settles.
//
// Stability rules:
//  - a full layout (first reset of a topology) moves every node;
//  - afterwards only new nodes move: existing ones are marked fixed in FA2's matrix, so what the
//    user has been looking at never jumps. New nodes start next to their neighbours (graph.js).
//
// Protocol: main -> worker {type: "run", runId, nodes, edges, settings, remaining, reportEveryMs}
// (a newer run replaces the current one) or {type: "stop"}; worker -> main {type: "progress",
// runId, xy, finished, remaining, ms}. Structural graph changes during a run restart it from the
// current positions with the iterations that were left.
import { forceAtlas2Matrices } from "../vendor/forceatlas2.js";
import { PPN, createRunner } from "./fa2-runner.js";

const unitWeight = () => 1;

function settingsFor(order) {
  return {
    linLogMode: false,
    outboundAttractionDistribution: false,
    adjustSizes: false,
    edgeWeightInfluence: 1,
    scalingRatio: 8,
    strongGravityMode: true,
    // Small maps: pull separate groups together, or a handful of nodes spreads over the whole screen.
    gravity: order <= 200 ? 0.6 : 0.08,
    slowDown: 1 + Math.log(Math.max(order, 1)),
    barnesHutOptimize: order > 300,
    // Coarser Barnes-Hut for big views: ~3x faster per iteration, no visible difference at that scale.
    barnesHutTheta: order > 2000 ? 1.2 : 0.8,
  };
}

// Iterations for a layout from scratch. The seed placement (GraphView._seedPositions) is already
// close, so big views need few; each iteration costs O(n log n) with Barnes-Hut.
function fullIterations(order) {
  if (order <= 200) return 300;
  if (order <= 1000) return 150;
  if (order <= 3000) return 90;
  return 60;
}

// How often positions come back (each one costs a redraw). Incremental runs move few nodes.
function reportEveryMs(full, order) {
  if (!full) return 80;
  return order > 2000 ? 400 : 200;
}

function createEngine(onMessage) {
  try {
    const worker = new Worker(new URL("./layout-worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (event) => onMessage(event.data);
    worker.onerror = (event) => console.error("scope: layout worker failed", event.message);
    return { post: (message, transfer) => worker.postMessage(message, transfer), inWorker: true };
  } catch (err) {
    console.warn("scope: no module workers here; running the layout on the page", err);
    const handle = createRunner((message) => onMessage(message));
    return { post: (message) => handle(message), inWorker: false };
  }
}

export class IncrementalLayout {
  constructor(graph, { onPositions, onSettled }) {
    this.graph = graph;
    this.onPositions = onPositions; // (full: whether every node moves in this layout) after each batch of positions
    this.onSettled = onSettled; // (ms of FA2 compute for the run) once positions are final
    this.engine = createEngine((message) => this._onProgress(message));
    this.runId = 0;
    this.remaining = 0;
    this.isFull = false;
    this.free = null; // ids FA2 may move; null = all
    this.ids = []; // node id for each matrix row of the current run
    this.stale = false;
    this.runMs = 0;
    this.msBefore = 0; // FA2 time of earlier (restarted) runs within the same layout
    const invalidate = () => {
      if (this.remaining > 0) this.stale = true;
    };
    for (const event of ["nodeAdded", "nodeDropped", "edgeAdded", "edgeDropped"]) graph.on(event, invalidate);
  }

  get running() {
    return this.remaining > 0;
  }

  // Layout from scratch: every node free.
  full() {
    this.free = null;
    this.isFull = true;
    this.msBefore = 0;
    this._run(fullIterations(this.graph.order));
  }

  // Place `newIds` (already positioned near their neighbours) while everything else stays put.
  settleNew(newIds) {
    if (newIds.length === 0) return;
    if (this.running && this.isFull) {
      this.stale = true; // new nodes join the running full layout at its next report
      return;
    }
    if (this.running && this.free) for (const id of newIds) this.free.add(id);
    else {
      this.free = new Set(newIds);
      this.msBefore = 0;
    }
    this.isFull = false;
    this._run(Math.max(this.remaining, 80));
  }

  stop() {
    this.remaining = 0;
    this.stale = false;
    this.runId += 1;
    this.engine.post({ type: "stop" });
  }

  _run(iterations) {
    const order = this.graph.order;
    if (order === 0) {
      this.remaining = 0;
      return;
    }
    const { nodes, edges } = forceAtlas2Matrices(this.graph, unitWeight);
    const ids = new Array(order);
    let i = 0;
    const free = this.free;
    this.graph.forEachNode((node) => {
      ids[i] = node;
      nodes[i * PPN + 9] = free && !free.has(node) ? 1 : 0; // FA2's "fixed" flag
      i += 1;
    });
    this.ids = ids;
    this.stale = false;
    this.remaining = iterations;
    this.runId += 1;
    this.engine.post(
      {
        type: "run",
        runId: this.runId,
        nodes,
        edges,
        settings: settingsFor(order),
        remaining: iterations,
        reportEveryMs: reportEveryMs(this.isFull, order),
      },
      [nodes.buffer, edges.buffer],
    );
  }

  _onProgress(message) {
    if (message.runId !== this.runId) return; // from a run that was replaced or stopped
    const { xy } = message;
    const index = new Map();
    for (let i = 0; i < this.ids.length; i++) index.set(this.ids[i], i);
    // One batched update -> one sigma refresh.
    this.graph.updateEachNodeAttributes((node, attrs) => {
      const i = index.get(node);
      if (i !== undefined) {
        attrs.x = xy[2 * i];
        attrs.y = xy[2 * i + 1];
      }
      return attrs;
    });
    this.onPositions(this.isFull);
    this.runMs = this.msBefore + message.ms;
    if (message.finished) {
      this.remaining = 0;
      if (this.stale) {
        // Nodes arrived during the last slice: give them (only them) a short run.
        this.stale = false;
        this.msBefore = this.runMs;
        this._run(40);
        return;
      }
      this.onSettled(this.runMs);
      return;
    }
    this.remaining = message.remaining;
    if (this.stale) {
      this.msBefore = this.runMs;
      this._run(this.remaining);
    }
  }
}
