// Search box semantics. Whitespace-separated terms, all must match (AND), case-insensitive:
//   web            -> substring of label_major, label_minor, rank, id or the image
//   image:busybox  -> substring of the metadata row whose id or label is "image"
//   host:foo, state:running, pid:42 ... the same for any metadata row
//   kind:container -> the node kind (host, container, image, process, pseudo)

function termMatcher(term) {
  const colon = term.indexOf(":");
  if (colon > 0 && colon < term.length - 1) {
    const key = term.slice(0, colon);
    const value = term.slice(colon + 1);
    return (node) => {
      if (key === "kind") return String(node.kind || "").toLowerCase().includes(value);
      if (key === "name") return String(node.label_major || "").toLowerCase().includes(value);
      return (node.metadata || []).some(
        (row) =>
          (String(row.id).toLowerCase() === key || String(row.label || "").toLowerCase() === key) &&
          String(row.value ?? "").toLowerCase().includes(value),
      );
    };
  }
  return (node) => {
    if (String(node.label_major || "").toLowerCase().includes(term)) return true;
    if (String(node.label_minor || "").toLowerCase().includes(term)) return true;
    if (String(node.rank || "").toLowerCase().includes(term)) return true;
    if (String(node.id || "").toLowerCase().includes(term)) return true;
    return (node.metadata || []).some((row) => row.id === "image" && String(row.value).toLowerCase().includes(term));
  };
}

// Returns a predicate, or null when the query is empty (so callers can skip filtering entirely).
export function compileSearch(query) {
  const terms = (query || "").trim().toLowerCase().split(/\s+/).filter(Boolean);
  if (terms.length === 0) return null;
  const matchers = terms.map(termMatcher);
  return (node) => matchers.every((m) => m(node));
}
