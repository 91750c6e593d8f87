// Small helpers that the page's modules share: element lookup, messages, number formats.

export const $ = (id) => document.getElementById(id);

// Resolves after `ms`, or as soon as `signal` aborts (the caller then checks it and stops).
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// A message line: hidden while empty; data-kind ("info", "ok", "error") picks its look in CSS.
export function showMessage(el, text, kind = "info") {
  el.hidden = !text;
  el.textContent = text || "";
  el.dataset.kind = kind;
}

export const formatInt = (v) => Math.round(v).toLocaleString("en");
export const formatFixed = (v, digits) => (v == null ? "–" : Number(v).toFixed(digits));
export const plural = (n, one, many) => (n === 1 ? one : many);
