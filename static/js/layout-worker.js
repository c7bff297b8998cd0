// Dedicated worker running ForceAtlas2 off the main thread, so a 5,000-node layout never blocks
// panning, zooming or websocket updates (see layout.js for the protocol).
import { createRunner } from "./fa2-runner.js";

const handle = createRunner((message, transfer) => self.postMessage(message, transfer));
self.onmessage = (event) => handle(event.data);
