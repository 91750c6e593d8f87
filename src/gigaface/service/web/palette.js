// Where the score bands start and the colours of the face boxes, in one table: the overlay
// draws with it, the legend is written from it, and the stylesheet's swatches and match
// styles read it as CSS variables. A cut-off or a colour changes here only.

// Highest band first: a face belongs to the first band whose `from` its score reaches.
export const SCORE_BANDS = Object.freeze([
  Object.freeze({ name: "high", from: 0.75, colour: "#38bdf8" }),
  Object.freeze({ name: "mid", from: 0.6, colour: "#a78bfa" }),
  Object.freeze({ name: "low", from: -Infinity, colour: "#fbbf24" }),
]);

// Search results (at or under the service's distance threshold, or over it) and emphasis.
export const MARKS = Object.freeze({
  match: "#22c55e",
  weak: "#9ca3af",
  selected: "#ffffff",
  hovered: "rgba(255,255,255,0.85)",
});

export function scoreBand(score) {
  return SCORE_BANDS.find((band) => score >= band.from) || SCORE_BANDS[SCORE_BANDS.length - 1];
}

// "score ≥ 0.75", "0.6–0.75", "< 0.6": each band's range, read off the table.
export function bandLabel(index) {
  const band = SCORE_BANDS[index];
  if (index === 0) return `score ≥ ${band.from}`;
  const upper = SCORE_BANDS[index - 1].from;
  return band.from === -Infinity ? `< ${upper}` : `${band.from}–${upper}`;
}

// --score-high, --score-mid, --score-low, --match, --weak for the stylesheet.
export function applyPalette(root = document.documentElement) {
  for (const band of SCORE_BANDS) root.style.setProperty(`--score-${band.name}`, band.colour);
  root.style.setProperty("--match", MARKS.match);
  root.style.setProperty("--weak", MARKS.weak);
}

export function fillLegend(el) {
  const entry = (swatchClass, text) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = `swatch ${swatchClass}`;
    span.append(swatch, text);
    return span;
  };
  el.replaceChildren(...SCORE_BANDS.map((band, i) => entry(`score-${band.name}`, bandLabel(i))),
    entry("is-match", "match"));
}
