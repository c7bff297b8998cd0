// Runs ForceAtlas2 iterations in time slices and reports positions. Shared by the layout worker
// (layout-worker.js, the normal case) and the in-page fallback used when workers are unavailable.
import { forceAtlas2Iterate } from "../vendor/forceatlas2.js";

export const PPN = 10; // floats per node in FA2's node matrix: x, y, dx, dy, old dx, old dy, mass, convergence, size, fixed
const SLICE_MS = 40;

// `post(message, transfer)` receives {type: "progress", runId, xy, finished, remaining, ms}.
export function createRunner(post) {
  let run = null;

  function report(r, finished) {
    const n = r.nodes.length / PPN;
    const xy = new Float32Array(n * 2);
    for (let i = 0; i < n; i++) {
      xy[2 * i] = r.nodes[i * PPN];
      xy[2 * i + 1] = r.nodes[i * PPN + 1];
    }
    post({ type: "progress", runId: r.runId, xy, finished, remaining: r.remaining, ms: r.ms }, [xy.buffer]);
  }

  function step() {
    const r = run;
    if (!r) return;
    const start = performance.now();
    do {
      forceAtlas2Iterate(r.settings, r.nodes, r.edges);
      r.remaining -= 1;
    } while (r.remaining > 0 && performance.now() - start < SLICE_MS);
    const now = performance.now();
    r.ms += now - start;
    const finished = r.remaining <= 0;
    if (finished || now - r.lastReport >= r.reportEveryMs) {
      r.lastReport = now;
      report(r, finished);
    }
    if (finished) run = null;
    else setTimeout(step, 0); // yield so a newer run or a stop can arrive
  }

  return function onMessage(data) {
    if (data.type === "stop") {
      run = null;
    } else if (data.type === "run") {
      const first = !run;
      run = { ...data, ms: 0, lastReport: performance.now() };
      if (first) setTimeout(step, 0);
    }
  };
}
