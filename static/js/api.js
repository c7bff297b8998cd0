// REST and websocket client for the app (contract: docs/design.md, "HTTP API").
// URLs are relative to the page, so the UI works behind a path prefix as well as at "/".

function apiUrl(path) {
  return new URL(path, window.location.href.split("#")[0]).toString();
}

// The session no longer holds (the token changed, the tenant was revoked): load the page again, which
// the app answers with its login page. The page itself only loaded with a valid session, so no loop.
function sessionEnded() {
  window.location.reload();
}

async function getJson(path) {
  const response = await fetch(apiUrl(path), { headers: { Accept: "application/json" } });
  if (response.status === 401) sessionEnded();
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch {
      // Not JSON: keep the status line.
    }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

export function fetchTopologies() {
  return getJson("api/topology");
}

export function fetchNodeDetails(topologyId, nodeId) {
  return getJson(`api/topology/${encodeURIComponent(topologyId)}/${encodeURIComponent(nodeId)}`);
}

// One websocket per (topology, options). Reconnects with exponential backoff plus jitter when the
// socket drops; each (re)connection starts with a `reset` message, so no state needs replaying.
export class TopologySocket {
  constructor({ onMessage, onStatus }) {
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.ws = null;
    this.target = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.status = "reconnecting";
  }

  // Open (or reopen) for a topology and its options query; a no-op if nothing changed.
  open(topologyId, query) {
    const target = `api/topology/${encodeURIComponent(topologyId)}/ws?${query}`;
    if (target === this.target && this.ws) return;
    this.target = target;
    this.attempt = 0;
    this._connect();
  }

  close() {
    this.target = null;
    this._teardown();
  }

  _teardown() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) {
      // Detach handlers first: messages from a socket we are leaving must not reach the views.
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      this.ws.close();
      this.ws = null;
    }
  }

  _connect() {
    this._teardown();
    if (!this.target) return;
    const url = apiUrl(this.target).replace(/^http/, "ws");
    const ws = new WebSocket(url);
    this.ws = ws;
    this._setStatus("reconnecting", "Connecting…");
    ws.onopen = () => {
      this.attempt = 0;
      this._setStatus("live", "Connected: updates are pushed as they happen");
    };
    ws.onmessage = (event) => {
      // Timestamp before parsing: the render benchmark counts from message arrival.
      const receivedAt = performance.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        console.warn("scope: dropping a websocket message that is not JSON", err);
        return;
      }
      this.onMessage(message, receivedAt);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      // 1008: the app closed it because the session's token no longer holds (a revoked tenant). A
      // refused websocket handshake shows the page nothing, so ask over HTTP, which reloads on a 401.
      if (event.code === 1008) getJson("api").catch(() => {});
      this._scheduleRetry();
    };
    ws.onerror = () => {
      // onclose follows and schedules the retry.
    };
  }

  _scheduleRetry() {
    const base = Math.min(10000, 250 * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    this._setStatus("reconnecting", `Connection lost; retrying in ${(delay / 1000).toFixed(1)} s (attempt ${this.attempt})`);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _setStatus(status, detail) {
    this.status = status;
    this.onStatus(status, detail);
  }
}

// Controls (docs/design.md, "Controls"): POST with a JSON body, so that another site's page cannot send
// one without a preflight the app refuses. Resolves to {value, error, pipe, removedNode}; throws with
// the app's error message (and .status) when it refuses.
export async function postControl(probeId, nodeId, controlId) {
  const path = ["api/control", probeId, nodeId, controlId].map((p, i) => (i ? encodeURIComponent(p) : p)).join("/");
  const response = await fetch(apiUrl(path), {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: "{}",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status line says enough.
  }
  if (!response.ok || body?.error) {
    const error = new Error(body?.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Whether the app can reach a probe's control channel now: {probeId, connected, hostId, reason}.
export function fetchControlChannel(probeId) {
  return getJson(`api/control/${encodeURIComponent(probeId)}`);
}

// The websocket URL of a pipe a control opened.
export function pipeUrl(pipeId) {
  return apiUrl(`api/pipe/${encodeURIComponent(pipeId)}`).replace(/^http/, "ws");
}
