// Entry point bundled by build.sh into static/vendor/forceatlas2.js: ForceAtlas2's building blocks
// (matrix builder + one iteration), used by static/js/layout.js and its worker. Kept separate from
// graph-libs.js so the worker does not load sigma (which needs WebGL globals a worker lacks).
export { default as forceAtlas2Iterate } from "graphology-layout-forceatlas2/iterate.js";
export { graphToByteArrays as forceAtlas2Matrices } from "graphology-layout-forceatlas2/helpers.js";
