// The current view's NodeSummary objects, kept up to date from websocket messages.
// Views read from here; the store tells them what changed so they can update incrementally.

export class NodeStore {
  constructor() {
    this.nodes = new Map();
    this.ready = false; // true once the first reset of the current socket arrived
    this.total = 0; // nodes in the view before the app's cap kept the most connected (>= size)
  }

  clear() {
    this.nodes.clear();
    this.ready = false;
  }

  // Applies {reset?, add, update, remove}; returns the ids touched, by kind of change.
  apply(message) {
    const change = { reset: Boolean(message.reset), added: [], updated: [], removed: [] };
    if (typeof message.total === "number") this.total = message.total;
    if (change.reset) {
      const previous = this.nodes;
      this.nodes = new Map();
      for (const node of message.add || []) this.nodes.set(node.id, node);
      for (const id of previous.keys()) if (!this.nodes.has(id)) change.removed.push(id);
      change.added = [...this.nodes.keys()];
      this.ready = true;
      return change;
    }
    if (!this.ready) return null; // deltas before the reset of this socket are meaningless
    for (const node of message.add || []) {
      (this.nodes.has(node.id) ? change.updated : change.added).push(node.id);
      this.nodes.set(node.id, node);
    }
    for (const node of message.update || []) {
      (this.nodes.has(node.id) ? change.updated : change.added).push(node.id);
      this.nodes.set(node.id, node);
    }
    for (const id of message.remove || []) {
      if (this.nodes.delete(id)) change.removed.push(id);
    }
    return change;
  }

  get(id) {
    return this.nodes.get(id);
  }

  get size() {
    return this.nodes.size;
  }

  values() {
    return this.nodes.values();
  }
}

// Helpers shared by the table, search and details panel.
export function metaValue(node, id) {
  const row = (node.metadata || []).find((m) => m.id === id);
  return row ? row.value : "";
}

export function metric(node, id) {
  return (node.metrics || []).find((m) => m.id === id) || null;
}
