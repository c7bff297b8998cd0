// Formatting shared by the table and the details panel.

export function escapeHtml(value) {
  return String(value ?? "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatBytes(bytes) {
  let value = Number(bytes);
  if (!Number.isFinite(value)) return "";
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

// Bytes per second, e.g. "1.2 MiB/s"; "0 B/s" for a quiet edge.
export function formatRate(bytesPerSecond) {
  const text = formatBytes(bytesPerSecond);
  return text ? `${text}/s` : "";
}

// A packet count, e.g. "7,412 pkts".
export function formatPackets(packets) {
  const value = Number(packets);
  return Number.isFinite(value) ? `${Math.round(value).toLocaleString("en")} pkt${value === 1 ? "" : "s"}` : "";
}

export function formatMetric(metric) {
  if (!metric || metric.value === undefined || metric.value === null) return "";
  const value = Number(metric.value);
  switch (metric.format) {
    case "percent":
      return `${value.toFixed(value >= 10 ? 0 : 1)}%`;
    case "filesize":
      return formatBytes(value);
    case "integer":
      return String(Math.round(value));
    default:
      return Number.isInteger(value) ? String(value) : value.toFixed(2);
  }
}

export function formatCount(n) {
  return Number(n || 0).toLocaleString("en-US");
}
