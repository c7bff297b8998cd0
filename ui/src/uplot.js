// Entry point bundled by build.sh into static/vendor/uplot.js (sparklines in the details panel).
export { default as uPlot } from "uplot";
