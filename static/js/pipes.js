// The window of a pipe a control opened: a terminal (exec, attach, host_exec) or a logs pane.
// One at a time, docked at the bottom of the stage and resizable; it says so plainly when the other
// end has gone ("Connection closed: the stream ended").
import { FitAddon, Terminal } from "../vendor/xterm.js";
import { pipeUrl } from "./api.js";
import { escapeHtml } from "./format.js";

const MAX_LOG_LINES = 10000; // older lines are dropped: a chatty container must not grow the page forever

export class PipeWindow {
  constructor(root) {
    this.root = root;
    this.pane = null;
    root.addEventListener("click", (event) => {
      const el = event.target.closest("[data-action]");
      if (!el) return;
      if (el.dataset.action === "pipe-close") this.close();
      else if (el.dataset.action === "logs-pause") this.pane?.togglePause();
    });
  }

  // Open the pipe `pipeId`: kind "tty" is a terminal, anything else a logs pane.
  open(pipeId, kind, title) {
    this.close();
    this.root.hidden = false;
    this.root.dataset.kind = kind;
    this.root.innerHTML = `
      <header class="pipe-head">
        <span class="pipe-title" data-testid="pipe-title" title="${escapeHtml(title)}">${escapeHtml(title)}</span>
        <span class="pipe-status" data-testid="pipe-status" data-state="connecting">connecting…</span>
        ${kind === "tty" ? "" : `
          <input type="search" class="logs-search" data-testid="logs-search" placeholder="Filter lines" spellcheck="false" aria-label="Filter log lines">
          <button type="button" data-action="logs-pause" data-testid="logs-pause" title="Pause following">Pause</button>`}
        <button type="button" class="close" data-action="pipe-close" data-testid="pipe-close" title="Close" aria-label="Close">&times;</button>
      </header>
      <div class="pipe-body" data-testid="${kind === "tty" ? "terminal" : "logs"}"></div>`;
    const body = this.root.querySelector(".pipe-body");
    const status = this.root.querySelector(".pipe-status");
    const setStatus = (state, text) => {
      status.dataset.state = state;
      status.textContent = text;
      this.root.dataset.state = state;
    };
    const socket = new WebSocket(pipeUrl(pipeId));
    socket.binaryType = "arraybuffer";
    this.pane = kind === "tty" ? new TerminalPane(body, socket) : new LogsPane(body, this.root);
    socket.onopen = () => {
      setStatus("open", "connected");
      this.pane.opened?.();
    };
    socket.onmessage = (event) => this.pane.receive(event.data);
    socket.onclose = (event) => {
      setStatus("closed", `Connection closed${event.reason ? `: ${event.reason}` : ""}`);
      this.pane?.closed?.();
    };
    this.socket = socket;
  }

  close() {
    if (this.socket) {
      this.socket.onclose = this.socket.onmessage = null;
      this.socket.close();
      this.socket = null;
    }
    this.pane?.dispose();
    this.pane = null;
    this.root.hidden = true;
    this.root.innerHTML = "";
  }
}

// xterm.js on the pipe's websocket: keystrokes go as binary frames, the size as {"resize": [cols, rows]}.
class TerminalPane {
  constructor(body, socket) {
    this.socket = socket;
    this.encoder = new TextEncoder();
    this.term = new Terminal({
      cursorBlink: true,
      fontFamily: getComputedStyle(document.documentElement).getPropertyValue("--mono") || "monospace",
      fontSize: 13,
      scrollback: 5000,
      theme: { background: "#0b1017", foreground: "#d5dde7" },
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(body);
    this.term.onData((data) => this._send(this.encoder.encode(data)));
    this.term.onResize(({ cols, rows }) => this._send(JSON.stringify({ resize: [cols, rows] })));
    // Refit whenever the window is resized (its corner, or the browser's): the shell learns the new size.
    this.observer = new ResizeObserver(() => this._fit());
    this.observer.observe(body);
    this._fit();
  }

  _fit() {
    try {
      this.fit.fit();
    } catch {
      // Not laid out yet (hidden): the observer calls again once it is.
    }
  }

  _send(data) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(data);
  }

  opened() {
    this._send(JSON.stringify({ resize: [this.term.cols, this.term.rows] }));
    this.term.focus();
  }

  receive(data) {
    this.term.write(typeof data === "string" ? data : new Uint8Array(data));
  }

  closed() {
    this.term.options.disableStdin = true;
    this.term.options.cursorBlink = false;
  }

  dispose() {
    this.observer.disconnect();
    this.term.dispose();
  }
}

// Logs: follows the end while not paused; the filter shows only the lines that contain its text.
class LogsPane {
  constructor(body, root) {
    this.body = body;
    this.root = root;
    this.decoder = new TextDecoder();
    this.lines = [];
    this.partial = "";
    this.paused = false;
    this.filter = "";
    this.pre = document.createElement("pre");
    this.pre.className = "logs-lines";
    body.appendChild(this.pre);
    this.search = root.querySelector(".logs-search");
    this.search.addEventListener("input", () => {
      this.filter = this.search.value.toLowerCase();
      this._render();
    });
  }

  receive(data) {
    const text = this.partial + (typeof data === "string" ? data : this.decoder.decode(data, { stream: true }));
    const parts = text.split("\n");
    this.partial = parts.pop();
    this.lines.push(...parts);
    if (this.lines.length > MAX_LOG_LINES) this.lines.splice(0, this.lines.length - MAX_LOG_LINES);
    if (!this.paused) this._render();
  }

  togglePause() {
    this.paused = !this.paused;
    const button = this.root.querySelector('[data-action="logs-pause"]');
    button.textContent = this.paused ? "Follow" : "Pause";
    button.title = this.paused ? "Show new lines again" : "Pause following";
    this.root.dataset.paused = String(this.paused);
    if (!this.paused) this._render();
  }

  _render() {
    const shown = [...this.lines, ...(this.partial ? [this.partial] : [])].filter(
      (line) => !this.filter || line.toLowerCase().includes(this.filter),
    );
    this.pre.textContent = shown.join("\n");
    if (!this.paused) this.body.scrollTop = this.body.scrollHeight;
  }

  dispose() {}
}
