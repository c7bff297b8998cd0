// Table view of the same nodes: sorted on any column, rebuilt at most once per frame when
// something changed, and only while visible. Columns read a node and its traffic: the bytes per second
// through it (TrafficMeter.nodeRates), which move with time (the table is rebuilt every
// TRAFFIC_REFRESH_MS too), and the packets over its connections now (TrafficMeter.nodePackets).
import { escapeHtml, formatMetric, formatPackets, formatRate } from "./format.js";
import { metaValue, metric } from "./store.js";
import { styleFor } from "./shapes.js";

const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

export const COLUMNS = [
  { id: "name", label: "Name", type: "text", value: (n) => n.label_major || n.id },
  { id: "image", label: "Image", type: "text", value: (n) => metaValue(n, "image") },
  { id: "host", label: "Host", type: "text", value: (n) => metaValue(n, "host") },
  { id: "state", label: "State", type: "text", value: (n) => metaValue(n, "state") },
  { id: "cpu", label: "CPU", type: "number", value: (n) => metric(n, "cpu")?.value ?? null },
  { id: "memory", label: "Memory", type: "number", value: (n) => metric(n, "memory")?.value ?? null },
  { id: "traffic", label: "Traffic", type: "number", value: (n, traffic) => traffic.rates.get(n.id) ?? null },
  { id: "packets", label: "Packets", type: "number", value: (n, traffic) => traffic.packets.get(n.id) ?? null },
];

const TRAFFIC_REFRESH_MS = 2000;

function compare(column, desc, traffic) {
  const sign = desc ? -1 : 1;
  return (a, b) => {
    const va = column.value(a, traffic);
    const vb = column.value(b, traffic);
    // Empty cells always sink to the bottom, whichever the direction.
    const ea = va === null || va === "";
    const eb = vb === null || vb === "";
    if (ea || eb) return ea === eb ? collator.compare(a.label_major || "", b.label_major || "") : ea ? 1 : -1;
    const c = column.type === "number" ? va - vb : collator.compare(String(va), String(vb));
    return c !== 0 ? sign * c : collator.compare(a.id, b.id);
  };
}

const ROW_HEIGHT = 33; // px, fixed in style.css: rows are windowed by arithmetic, not measured
const OVERSCAN = 30; // rows rendered beyond each edge of the viewport

// Only the rows in (and near) the viewport exist in the DOM; padding on the tbody stands in for
// the rest. That keeps sorting, searching and websocket updates cheap with 5,000 nodes.
export class TableView {
  constructor(table, { traffic, onSelect, onSort }) {
    this.table = table;
    this.traffic = traffic;
    this.rates = new Map();
    this.packets = new Map();
    this.scroller = table.parentElement;
    this.onSelect = onSelect;
    this.onSort = onSort;
    this.sort = { column: "name", desc: false };
    this.selected = "";
    this.visible = false;
    this.dirty = true;
    this.frame = 0;
    this.nodes = [];
    this.sorted = [];
    this.window = [-1, -1];
    this.head = table.querySelector("thead tr");
    this.body = table.querySelector("tbody");
    this._renderHead();
    this.head.addEventListener("click", (event) => {
      const th = event.target.closest("th[data-column]");
      if (!th) return;
      const column = th.dataset.column;
      // Numbers sort biggest first on the first click: the busiest are what one looks for.
      const type = COLUMNS.find((c) => c.id === column)?.type;
      const desc = this.sort.column === column ? !this.sort.desc : type === "number";
      this.onSort({ column, desc });
    });
    this.body.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-node-id]");
      if (row) this.onSelect(row.dataset.nodeId);
    });
    this.scroller.addEventListener("scroll", () => this._schedule(), { passive: true });
    window.addEventListener("resize", () => this._schedule());
    setInterval(() => this._refreshTraffic(), TRAFFIC_REFRESH_MS);
  }

  // Rebuilt only when a shown figure changed: a row replaced under the mouse would lose its click.
  _refreshTraffic() {
    if (!this.visible) return;
    const changed = (now, before, format) =>
      now.size !== before.size || [...now.keys()].some((id) => format(now.get(id)) !== (before.has(id) ? format(before.get(id)) : ""));
    if (changed(this.traffic.nodeRates(), this.rates, formatRate) || changed(this.traffic.nodePackets(), this.packets, formatPackets)) {
      this.invalidate();
    }
  }

  _renderHead() {
    this.head.innerHTML = COLUMNS.map((c) => {
      const active = this.sort.column === c.id;
      const aria = active ? (this.sort.desc ? "descending" : "ascending") : "none";
      const arrow = active ? (this.sort.desc ? "\u25BE" : "\u25B4") : "";
      return `<th data-testid="th-${c.id}" data-column="${c.id}" class="${c.type}${active ? " sorted" : ""}" aria-sort="${aria}" scope="col">${escapeHtml(c.label)}<span class="sort-arrow">${arrow}</span></th>`;
    }).join("");
  }

  setSort(sort) {
    const column = COLUMNS.some((c) => c.id === sort.column) ? sort.column : "name";
    this.sort = { column, desc: Boolean(sort.desc) };
    this._renderHead();
    this.invalidate();
  }

  setNodes(nodes) {
    this.nodes = nodes;
    this.invalidate();
  }

  setSelected(id) {
    this.selected = id || "";
    for (const row of this.body.querySelectorAll("tr.selected")) row.classList.remove("selected");
    if (!this.selected) return;
    const row = this.body.querySelector(`tr[data-node-id="${CSS.escape(this.selected)}"]`);
    if (row) row.classList.add("selected");
    else {
      this.revealSelected = true; // scrolled into view on the next render
      this._schedule();
    }
  }

  setVisible(visible) {
    this.visible = visible;
    if (visible) this.invalidate();
  }

  invalidate() {
    this.dirty = true;
    this._schedule();
  }

  _schedule() {
    if (this.visible && !this.frame) this.frame = requestAnimationFrame(() => this._render());
  }

  _render() {
    this.frame = 0;
    if (!this.visible) return;
    if (this.dirty) {
      const column = COLUMNS.find((c) => c.id === this.sort.column) || COLUMNS[0];
      this.rates = this.traffic.nodeRates();
      this.packets = this.traffic.nodePackets();
      this.sorted = [...this.nodes].sort(compare(column, this.sort.desc, { rates: this.rates, packets: this.packets }));
      this.dirty = false;
      this.window = [-1, -1];
    }
    if (this.revealSelected) {
      this.revealSelected = false;
      const index = this.sorted.findIndex((n) => n.id === this.selected);
      if (index >= 0) this._scrollToRow(index);
    }
    // (A selected row already in the DOM was marked by setSelected; new rows get it from _row.)
    const total = this.sorted.length;
    const headHeight = this.head.offsetHeight;
    const top = Math.max(0, this.scroller.scrollTop - headHeight);
    const start = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const end = Math.min(total, Math.ceil((top + this.scroller.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    if (start === this.window[0] && end === this.window[1]) return;
    this.window = [start, end];
    const html = [];
    for (let i = start; i < end; i++) html.push(this._row(this.sorted[i]));
    this.body.style.paddingTop = `${start * ROW_HEIGHT}px`;
    this.body.style.paddingBottom = `${(total - end) * ROW_HEIGHT}px`;
    this.body.innerHTML = html.join("");
  }

  _scrollToRow(index) {
    const headHeight = this.head.offsetHeight;
    const rowTop = headHeight + index * ROW_HEIGHT;
    const viewTop = this.scroller.scrollTop + headHeight;
    const viewBottom = this.scroller.scrollTop + this.scroller.clientHeight;
    if (rowTop < viewTop || rowTop + ROW_HEIGHT > viewBottom) {
      this.scroller.scrollTop = Math.max(0, rowTop - headHeight - this.scroller.clientHeight / 3);
    }
  }

  _row(n) {
    const style = styleFor(n);
    const state = metaValue(n, "state");
    const sel = n.id === this.selected ? " selected" : "";
    return (
      `<tr data-testid="node-row" data-node-id="${escapeHtml(n.id)}" class="${sel}">` +
      `<td class="name"><div class="cell-name"><span class="swatch shape-${style.type}" style="--c:${style.color}"></span>` +
      `<span class="major">${escapeHtml(n.label_major || n.id)}</span>` +
      `<span class="minor">${escapeHtml(n.label_minor || "")}</span></div></td>` +
      `<td>${escapeHtml(metaValue(n, "image"))}</td>` +
      `<td>${escapeHtml(metaValue(n, "host"))}</td>` +
      `<td>${state ? `<span class="state state-${escapeHtml(state)}">${escapeHtml(state)}</span>` : ""}</td>` +
      `<td class="number">${escapeHtml(formatMetric(metric(n, "cpu")))}</td>` +
      `<td class="number">${escapeHtml(formatMetric(metric(n, "memory")))}</td>` +
      `<td class="number" data-testid="cell-traffic">${escapeHtml(this.rates.has(n.id) ? formatRate(this.rates.get(n.id)) : "")}</td>` +
      `<td class="number" data-testid="cell-packets">${escapeHtml(this.packets.has(n.id) ? formatPackets(this.packets.get(n.id)) : "")}</td>` +
      `</tr>`
    );
  }
}
