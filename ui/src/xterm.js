// Entry point bundled by build.sh into static/vendor/xterm.js (the terminal of exec, attach and host_exec pipes).
export { Terminal } from "@xterm/xterm";
export { FitAddon } from "@xterm/addon-fit";
