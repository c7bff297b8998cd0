// Traffic on the edges, as rates. Each NodeSummary carries, per edge it starts (it is the client),
// `connections`, `bytes` and `packets` (client -> server and back) over the connections on the edge now, plus two
// counters the app only ever grows while the edge lasts: `opened` (connections first seen on it) and
// `bytes_seen`. Their growth over the last WINDOW_MS is the edge's rate: sums over the current
// connections cannot give one (a client connecting every second keeps about as many lingering
// connections, with about as many bytes, from one update to the next). The rate runs from the sample at
// the start of the window to the latest one; updates only come when something changed, so an edge that
// went quiet sends nothing, and its rate falls to 0 once its last growth has left the window.

const WINDOW_MS = 10_000;
// Samples closer than this make no rate: arrival times jitter by a good part of a short interval.
const MIN_SPAN_MS = 2_000;
// An edge seen once is quiet after this long without a change (the app reads open connections' byte
// counters every 5 s, and publishes at least as often while they grow).
const QUIET_AFTER_MS = 6_000;

export const edgeKey = (source, target) => `${source}\u2192${target}`;

function counters(edge, t) {
  const seen = edge.bytes_seen || [0, 0];
  return { t, opened: Number(edge.opened) || 0, out: Number(seen[0]) || 0, back: Number(seen[1]) || 0 };
}

function sameCounters(a, b) {
  return a.opened === b.opened && a.out === b.out && a.back === b.back;
}

function wentDown(a, b) {
  return b.opened < a.opened || b.out < a.out || b.back < a.back;
}

export class TrafficMeter {
  constructor(now = () => performance.now()) {
    this.now = now;
    this.edges = new Map(); // edge key -> {source, target, edge (latest JSON), samples: [{t, opened, out, back}]}
    this.bySource = new Map(); // node id -> Set of edge keys it starts
  }

  clear() {
    this.edges.clear();
    this.bySource.clear();
  }

  // A node's summary arrived (added or updated): sample the counters of the edges it starts.
  observe(node) {
    const t = this.now();
    const keys = new Set();
    const edges = node.edges || {};
    for (const target of node.adjacency || []) {
      const edge = edges[target] || { connections: 0 };
      const key = edgeKey(node.id, target);
      keys.add(key);
      const sample = counters(edge, t);
      const known = this.edges.get(key);
      // A counter that went down: the edge went and came back, so its history is another edge's.
      if (!known || wentDown(known.samples[known.samples.length - 1], sample)) {
        this.edges.set(key, { source: node.id, target, edge, samples: [sample] });
        continue;
      }
      known.edge = edge;
      const last = known.samples[known.samples.length - 1];
      if (!sameCounters(last, sample)) {
        // Quiet since `last`, long ago: the growth happened within the last window at most, not
        // spread over all that time.
        if (last.t < t - WINDOW_MS) known.samples.push({ ...last, t: t - WINDOW_MS });
        known.samples.push(sample);
      }
      this._prune(known, t);
    }
    this._dropOthers(node.id, keys);
    this.bySource.set(node.id, keys);
  }

  // A node left the view: forget the edges it started.
  forget(nodeId) {
    this._dropOthers(nodeId, new Set());
    this.bySource.delete(nodeId);
  }

  _dropOthers(nodeId, keep) {
    for (const key of this.bySource.get(nodeId) || []) if (!keep.has(key)) this.edges.delete(key);
  }

  // Keeps one sample at or before the window's start (the base of the rate) and everything after it.
  _prune(record, now) {
    const samples = record.samples;
    let drop = 0;
    while (drop + 1 < samples.length && samples[drop + 1].t <= now - WINDOW_MS) drop += 1;
    if (drop) samples.splice(0, drop);
  }

  // The edge's latest figures and rates: {connections, bytes: [out, back] | null, packets: [out, back] |
  // null, rate: {out, back, opened} per second | null while too new to tell}, or null for an edge the
  // meter does not know.
  traffic(source, target) {
    const record = this.edges.get(edgeKey(source, target));
    return record ? this._describe(record, this.now()) : null;
  }

  _describe(record, now) {
    this._prune(record, now);
    const { edge, samples } = record;
    const base = samples[0];
    const latest = samples[samples.length - 1];
    let rate = null;
    if (latest === base) {
      if (now - base.t >= QUIET_AFTER_MS) rate = { out: 0, back: 0, opened: 0 };
    } else if (latest.t - base.t >= MIN_SPAN_MS) {
      const perSecond = 1000 / (latest.t - base.t);
      rate = {
        out: (latest.out - base.out) * perSecond,
        back: (latest.back - base.back) * perSecond,
        opened: (latest.opened - base.opened) * perSecond,
      };
    }
    const bytes = Array.isArray(edge.bytes) ? edge.bytes : null;
    const packets = Array.isArray(edge.packets) ? edge.packets : null;
    return { connections: Number(edge.connections) || 0, bytes, packets, rate };
  }

  // Packets over the connections each node is an end of now, both ways, where counted.
  nodePackets() {
    const totals = new Map();
    for (const { source, target, edge } of this.edges.values()) {
      if (!Array.isArray(edge.packets)) continue;
      const both = (Number(edge.packets[0]) || 0) + (Number(edge.packets[1]) || 0);
      totals.set(source, (totals.get(source) || 0) + both);
      totals.set(target, (totals.get(target) || 0) + both);
    }
    return totals;
  }

  // Bytes per second through each node, both ways, over every edge it is an end of (where known).
  nodeRates() {
    const now = this.now();
    const totals = new Map();
    for (const record of this.edges.values()) {
      const { rate } = this._describe(record, now);
      if (!rate) continue;
      const both = rate.out + rate.back;
      totals.set(record.source, (totals.get(record.source) || 0) + both);
      totals.set(record.target, (totals.get(record.target) || 0) + both);
    }
    return totals;
  }
}
