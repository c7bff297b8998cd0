// Packs a laid-out graph's connected components side by side. ForceAtlas2 lays out a whole view at
// once, and groups with no edge between them only repel each other: on a big map they drift to the
// edges of the picture (or far beyond), the zoom needed to show them all shrinks everything, and the
// map reads as a few specks. Here each component keeps its own layout and is only moved: the tallest
// first, in rows (shelves) about as wide as the screen is proportioned, with single nodes in a grid.

// Median spacing of nodes in the multi-node components (graph units): the gap between components and
// the cell of a lone node's grid are made of it, so packing looks the same at any layout scale.
function typicalSpacing(boxes) {
  const spacings = boxes
    .filter((b) => b.ids.length > 1)
    .map((b) => Math.sqrt(Math.max(b.w * b.h, 1) / b.ids.length))
    .sort((a, b) => a - b);
  return spacings.length ? spacings[Math.floor(spacings.length / 2)] : 10;
}

function components(graph) {
  const seen = new Set();
  const found = [];
  graph.forEachNode((start) => {
    if (seen.has(start)) return;
    seen.add(start);
    const ids = [start];
    for (let i = 0; i < ids.length; i++) {
      graph.forEachNeighbor(ids[i], (other) => {
        if (!seen.has(other)) {
          seen.add(other);
          ids.push(other);
        }
      });
    }
    found.push(ids);
  });
  return found;
}

function box(graph, ids) {
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  let first = ids[0];
  for (const id of ids) {
    const a = graph.getNodeAttributes(id);
    minX = Math.min(minX, a.x);
    maxX = Math.max(maxX, a.x);
    minY = Math.min(minY, a.y);
    maxY = Math.max(maxY, a.y);
    if (id < first) first = id;
  }
  return { ids, minX, minY, w: maxX - minX, h: maxY - minY, first, grid: false };
}

// Moves every component (no node moves within one); `aspect` is the screen's width / height.
export function packComponents(graph, aspect) {
  if (graph.order < 2) return;
  const all = components(graph);
  if (all.length < 2) return;
  const boxes = all.filter((ids) => ids.length > 1).map((ids) => box(graph, ids));
  const unit = typicalSpacing(boxes);
  const gap = unit * 2;
  const lone = all.filter((ids) => ids.length === 1).map((ids) => ids[0]);
  const tallest = Math.max(0, ...boxes.map((b) => b.h));
  let grid = null;
  if (lone.length) {
    // One block for all single nodes, in a grid as proportioned as the screen but no taller than the
    // tallest group, so it goes beside that group rather than above it.
    lone.sort();
    const cell = unit * 1.6;
    const fit = boxes.length ? Math.floor(tallest / cell) + 1 : Infinity;
    const rows = Math.max(1, Math.min(Math.ceil(Math.sqrt(lone.length / aspect)), fit));
    const columns = Math.ceil(lone.length / rows);
    grid = { ids: lone, minX: 0, minY: 0, w: (columns - 1) * cell, h: (rows - 1) * cell, first: "", grid: { columns, cell } };
    boxes.push(grid);
  }
  boxes.sort((a, b) => b.h - a.h || b.ids.length - a.ids.length || (a.first < b.first ? -1 : 1));
  if (grid && boxes[0] !== grid) boxes.splice(1, 0, ...boxes.splice(boxes.indexOf(grid), 1));
  const area = boxes.reduce((sum, b) => sum + (b.w + gap) * (b.h + gap), 0);
  // The first row holds the tallest group and the grid of single nodes at least.
  const firstRow = grid && boxes[0] !== grid ? boxes[0].w + gap + grid.w : 0;
  const rowWidth = Math.max(Math.sqrt(area * aspect), firstRow, ...boxes.map((b) => b.w));
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  let width = 0;
  for (const b of boxes) {
    if (x > 0 && x + b.w > rowWidth) {
      x = 0;
      y += rowHeight + gap;
      rowHeight = 0;
    }
    b.x = x;
    b.y = y;
    x += b.w + gap;
    width = Math.max(width, x - gap);
    rowHeight = Math.max(rowHeight, b.h);
  }
  const height = y + rowHeight;
  const target = new Map();
  for (const b of boxes) {
    const left = b.x - width / 2;
    const top = b.y - height / 2;
    if (b.grid) {
      const { columns, cell } = b.grid;
      b.ids.forEach((id, i) => target.set(id, { x: left + (i % columns) * cell, y: top + Math.floor(i / columns) * cell }));
    } else {
      for (const id of b.ids) {
        const a = graph.getNodeAttributes(id);
        target.set(id, { x: left + (a.x - b.minX), y: top + (a.y - b.minY) });
      }
    }
  }
  graph.updateEachNodeAttributes(
    (id, attrs) => {
      const p = target.get(id);
      attrs.x = p.x;
      attrs.y = p.y;
      return attrs;
    },
    { attributes: ["x", "y"] },
  );
}
