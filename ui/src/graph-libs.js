// Entry point bundled by build.sh into static/vendor/graph-libs.js (one ES module, no CDN).
// Re-exports only what static/js/{graph,shapes}.js use, so the bundle stays small.
export { default as Graph } from "graphology";
export { default as Sigma } from "sigma";
export { NodeProgram, createEdgeArrowProgram } from "sigma/rendering";
export { floatColor } from "sigma/utils";
