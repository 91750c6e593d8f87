// The gigaface viewer: one deep-zoom image (OpenSeadragon), its faces on a canvas overlay,
// the selected face and "Find me" in a sidebar. public.html reuses it with
// <body data-mode="public">: the anonymised image only, no token, boxes or search.

/* global OpenSeadragon */

import {
  ApiError, VIEWER_IMAGES, authHeaders, captureEvents, facePage, getCapture, getToken, listCaptures,
  publicCaptures, setToken, takeKeyFromURL, whoAmI,
} from "./api.js";
import { FaceOverlay } from "./overlay.js";
import { applyPalette, fillLegend } from "./palette.js";
import { FacePanel, FindPanel } from "./sidebar.js";
import { $, formatFixed, formatInt, plural, showMessage, sleep } from "./ui.js";

const FACE_PAGE = 10000;   // the service's largest page of faces
// After the event stream ends or breaks with the capture not yet viewable, the page looks
// again after RETRY_MS, twice as long each time nothing changed, up to RETRY_MAX_MS.
const RETRY_MS = 1000;
const RETRY_MAX_MS = 10000;

// Live state, also the hook for tests and the console. Its fields are replaced as the page
// moves on, so always read them through window.gigaface.
const state = {
  mode: document.body.dataset.mode,
  viewer: null,
  overlay: null,
  capture: null,
  faces: [],
  selected: null,
  matches: [],
  ready: false,
  imageToViewport: (x, y) => state.viewer.viewport.imageToViewportCoordinates(x, y),
};
window.gigaface = state;

function stageMessage(text, kind = "info") {
  showMessage($("stage-message"), text, kind);
}

// `headers`: what every tile request must carry (the token, or view's key); none for the public page.
function createViewer(headers) {
  const auth = Object.keys(headers).length > 0;
  return OpenSeadragon({
    element: $("viewer"),
    prefixUrl: VIEWER_IMAGES,
    // The 2D canvas drawer works everywhere, headless and GPU-less browsers included.
    drawer: "canvas",
    // Tiles need the token (or key) too, and an <img> cannot send headers.
    loadTilesWithAjax: auth,
    ajaxHeaders: headers,
    zoomInButton: "zoom-in",
    zoomOutButton: "zoom-out",
    homeButton: "zoom-home",
    showFullPageControl: false,
    showRotationControl: false,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    navigatorSizeRatio: 0.16,
    navigatorAutoFade: false,
    navigatorBackground: "#0b0f17",
    navigatorBorderColor: "#2a3344",
    navigatorDisplayRegionColor: "#38bdf8",
    // Crowd faces are small: allow zooming well past one screen pixel per image pixel.
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.6,
    animationTime: 0.8,
    // A click picks a face; zooming is the wheel, double-click and the buttons.
    gestureSettingsMouse: { clickToZoom: false },
    gestureSettingsTouch: { clickToZoom: false },
  });
}

// Resolves when the image is open, rejects with a readable message when it cannot be.
function openImage(viewer, url) {
  return new Promise((resolve, reject) => {
    const settle = () => {
      viewer.removeHandler("open", done);
      viewer.removeHandler("open-failed", failed);
    };
    const done = () => { settle(); resolve(); };
    const failed = (event) => {
      settle();
      reject(new Error(`Could not open the image (${event.message || "unknown error"})`));
    };
    viewer.addHandler("open", done);
    viewer.addHandler("open-failed", failed);
    // The headers again, per image: OpenSeadragon 5.0 sends the viewer's ajaxHeaders with
    // tiles but not with the .dzi descriptor request (it defaults the image's own to {}).
    viewer.open({ tileSource: url, ajaxHeaders: viewer.ajaxHeaders });
  });
}

function fillCaptureSelect(captures, selectedId, label) {
  const select = $("capture-select");
  select.replaceChildren(...captures.map((c) => {
    const option = document.createElement("option");
    option.value = c.id;
    option.textContent = label(c);
    option.selected = c.id === selectedId;
    return option;
  }));
  select.disabled = captures.length < 2;
}

function captureFromURL(captures, isDefault) {
  const wanted = Number(new URLSearchParams(location.search).get("capture"));
  if (wanted && captures.some((c) => c.id === wanted)) return wanted;
  // The latest capture that can be shown; creation time orders them, ids break ties.
  const usable = captures.filter(isDefault);
  const pool = usable.length ? usable : captures;
  pool.sort((a, b) => (a.created_at || 0) - (b.created_at || 0) || a.id - b.id);
  return pool.length ? pool[pool.length - 1].id : null;
}

function rememberCapture(id) {
  const url = new URL(location.href);
  url.searchParams.set("capture", id);
  history.replaceState(null, "", url);
}

// --- the library page ------------------------------------------------------------------

// Ask the service who we are; on 401 show the sign-in card and try again with its token.
// `gigaface view` takes no token: without its key (opened from another address) there is
// nothing to ask for, only where to find the right address.
async function signIn() {
  let problem = "";
  for (;;) {
    try {
      return await whoAmI();
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      if (err.scheme === "GigafaceKey") {
        throw new Error("Open this viewer from the address that gigaface view printed in its terminal: "
          + "it carries the key for this run.");
      }
      if (getToken()) problem = "That token was not accepted. Check it and try again.";
      setToken(null);
      setToken(await askForToken(problem));
    }
  }
}

function askForToken(problem) {
  const card = $("signin");
  const input = $("signin-token");
  const error = $("signin-error");
  card.hidden = false;
  error.hidden = !problem;
  error.textContent = problem;
  input.value = "";
  input.focus();
  return new Promise((resolve) => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      card.hidden = true;
      resolve(input.value.trim());
    }, { once: true });
  });
}

function showWhoAmI(me) {
  const role = $("role");
  role.hidden = false;
  role.textContent = me.mode === "local" ? `local · ${me.role}` : `${me.name} · ${me.role}`;
  role.title = me.mode === "local" ? "Local library, no sign-in needed" : `Signed in as ${me.name}`;
  role.dataset.role = me.role;
  const out = $("sign-out");
  out.hidden = me.mode !== "token";
  out.addEventListener("click", () => { setToken(null); location.reload(); });
}

function describeScan(cap) {
  const p = cap.progress || {};
  if (cap.state === "queued") return "Queued";
  const steps = p.total ? ` ${p.done}/${p.total}` : "";
  const faces = p.faces ? ` · ${formatInt(p.faces)} faces` : "";
  return `Scanning · ${cap.stage}${steps}${faces}`;
}

function showScan(cap) {
  const box = $("scan-progress");
  if (!cap) { box.hidden = true; return; }
  box.hidden = false;
  const p = cap.progress || {};
  $("scan-label").textContent = cap.state === "done" ? "Building zoomable image" : describeScan(cap);
  $("scan-bar").style.width = p.total ? `${Math.min(100, (100 * p.done) / p.total)}%` : "0%";
}

// Until an image is open, the navigator, legend and zoom buttons would float over nothing.
function showEmpty(empty) {
  document.querySelector(".stage").classList.toggle("is-empty", empty);
}

function showCount(text) {
  const el = $("face-count");
  el.hidden = !text;
  el.textContent = text || "";
}

function showTooltip(face, event) {
  const tip = $("tooltip");
  if (!face || !event) { tip.hidden = true; return; }
  const q = face.quality || {};
  const parts = [];
  if (q.size != null) parts.push(`${formatInt(q.size)} px`);
  if (q.sharpness != null) parts.push(`sharpness ${formatFixed(q.sharpness, 0)}`);
  if (q.frontalness != null) parts.push(`frontal ${formatFixed(q.frontalness, 2)}`);
  tip.innerHTML = "";
  const head = document.createElement("div");
  head.className = "tooltip-head";
  head.innerHTML = `<span>Face #${face.id}</span><b class="tooltip-score"></b>`;
  head.querySelector("b").textContent = `score ${formatFixed(face.score, 2)}`;
  const body = document.createElement("div");
  body.className = "tooltip-body";
  body.textContent = parts.join(" · ");
  tip.append(head, body);
  tip.hidden = false;
  // Beside the pointer, flipped to the other side near the stage's right and bottom edges.
  const stage = tip.parentElement.getBoundingClientRect();
  let x = event.clientX - stage.left + 14;
  let y = event.clientY - stage.top + 14;
  if (x + tip.offsetWidth > stage.width - 8) x -= tip.offsetWidth + 28;
  if (y + tip.offsetHeight > stage.height - 8) y -= tip.offsetHeight + 28;
  tip.style.transform = `translate(${x}px, ${y}px)`;
}

async function loadFaces(captureId, isCurrent) {
  const faces = [];
  for (;;) {
    const page = await facePage(captureId, faces.length, FACE_PAGE);
    if (!isCurrent()) return null;
    for (const f of page.items) faces.push(f);
    if (!page.items.length || faces.length >= page.total) return faces;
    showCount(`Loading faces ${formatInt(faces.length)} / ${formatInt(page.total)}`);
  }
}

// Faces are final and the image is tiled once the job reaches its last stage (export).
function viewable(c) {
  return Boolean(c.pyramid_url) && (c.state === "done" || (c.state === "running" && c.stage === "export"));
}

function captureLabel(c) {
  return viewable(c) ? c.name : `${c.name} (${c.state === "done" ? "preparing" : c.state})`;
}

// The capture once it can be shown or has failed; show(capture) for each state on the way.
// The progress comes from the service's event stream. The capture itself is asked for at
// the start and again only when a stream ends or breaks with the capture not viewable yet:
// the job is over but the pyramid is still missing, the server closed a long stream, the
// connection dropped, or the server has too many streams open (429).
async function untilViewable(id, signal, show) {
  const settled = (c) => viewable(c) || c.state === "failed";
  let delay = RETRY_MS;
  for (;;) {
    const asked = await getCapture(id, signal);
    if (settled(asked)) return asked;
    show(asked);
    let last = asked;
    try {
      for await (const cap of captureEvents(id, signal)) {
        if (settled(cap)) return cap;   // leaving the loop closes the stream
        show(cap);
        last = cap;
      }
    } catch (err) {
      // A revoked token or a superseded capture: stop. Anything else: look again below.
      if (signal.aborted || (err instanceof ApiError && err.status === 401)) throw err;
    }
    const moved = JSON.stringify(last) !== JSON.stringify(asked);
    delay = moved ? RETRY_MS : Math.min(2 * delay, RETRY_MAX_MS);
    await sleep(delay, signal);
  }
}

async function libraryPage() {
  const me = await signIn();
  showWhoAmI(me);
  const viewer = (state.viewer = createViewer(authHeaders()));
  fillLegend($("legend"));
  $("legend").hidden = false;

  // Aborted on every capture switch: the old capture's stream closes, its other async work
  // checks it and stops.
  let current = new AbortController();

  const flyTo = (box) => {
    const [x, y, w, h] = box;
    const side = Math.max(8 * Math.max(w, h), 160);   // a few faces of context around it
    const rect = viewer.viewport.imageToViewportRectangle(x + w / 2 - side / 2, y + h / 2 - side / 2, side, side);
    viewer.viewport.fitBounds(rect, false);
  };
  const facePanel = new FacePanel({ onZoom: (face) => flyTo(face.box) });
  const overlay = (state.overlay = new FaceOverlay(viewer, {
    onHover: showTooltip,
    onClick: (face) => select(face),
  }));
  const select = (face) => {
    state.selected = face ? face.id : null;
    overlay.setSelected(state.selected);
    facePanel.show(face);
  };
  const findPanel = new FindPanel({
    captureId: () => (state.capture ? state.capture.id : null),
    onResults: (matches) => { state.matches = matches; overlay.setMatches(matches); },
    onPick: (m) => {
      flyTo(m.box);
      // The face record has score and quality; a match alone lacks the score.
      select(overlay.faceById(m.face_id) || { id: m.face_id, box: m.box, score: null, quality: m.quality });
    },
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected != null) select(null);
  });

  const open = async (id) => {
    current.abort();
    const { signal } = (current = new AbortController());
    const isCurrent = () => !signal.aborted;
    state.ready = false;
    state.capture = null;
    state.faces = [];
    select(null);
    findPanel.reset();
    overlay.setFaces([]);
    viewer.close();
    showEmpty(true);
    findPanel.enable(false);
    showCount("");
    stageMessage("Loading…");

    // A capture still being scanned (or whose pyramid is being built) opens when ready.
    const option = $("capture-select").querySelector(`option[value="${id}"]`);
    const cap = await untilViewable(id, signal, (progress) => {
      showScan(progress);
      if (option) option.textContent = captureLabel(progress);
      stageMessage(progress.state === "done"
        ? "Building the zoomable image…"
        : "This capture is being scanned. It opens here when the scan is done.");
    });
    if (!isCurrent()) return;
    if (cap.state === "failed") {
      showScan(null);
      stageMessage(`This scan failed: ${cap.error || "unknown error"}`, "error");
      return;
    }
    showScan(null);
    state.capture = cap;
    if (option) option.textContent = captureLabel(cap);   // it may have said "(running)"
    showCount("Loading faces…");

    const [faces] = await Promise.all([
      loadFaces(id, isCurrent),
      // The URL names the pyramid's build: a rebuilt one (after an erasure) has new URLs.
      openImage(viewer, cap.pyramid_url),
    ]);
    if (!faces || !isCurrent()) return;
    stageMessage("");
    showEmpty(false);
    findPanel.enable(true);
    state.faces = faces;
    showCount(`${formatInt(faces.length)} ${plural(faces.length, "face", "faces")}`);
    // Ready once the overlay has drawn this capture's faces at least once.
    overlay.onDrawn = () => {
      if (!isCurrent()) return;
      overlay.onDrawn = null;
      state.ready = true;
    };
    overlay.setFaces(faces);
  };

  const captures = await listCaptures();
  if (!captures.length) {
    stageMessage("No captures yet. Scan an image with gigaface scan, then reload.");
    return;
  }
  const id = captureFromURL(captures, viewable);
  fillCaptureSelect(captures, id, captureLabel);
  $("capture-select").addEventListener("change", (event) => {
    rememberCapture(event.target.value);
    run(open(Number(event.target.value)));
  });
  await open(id);
}

// --- the public page -------------------------------------------------------------------

async function publicPage() {
  const captures = await publicCaptures();
  if (!captures.length) {
    stageMessage("No public images yet.");
    return;
  }
  const viewer = (state.viewer = createViewer({}));
  const id = captureFromURL(captures, () => true);
  fillCaptureSelect(captures, id, (c) => c.name);
  const open = async (captureId) => {
    state.ready = false;
    state.capture = captures.find((c) => c.id === captureId);
    showEmpty(true);
    stageMessage("Loading…");
    await openImage(viewer, state.capture.url);
    stageMessage("");
    showEmpty(false);
    state.ready = true;
  };
  $("capture-select").addEventListener("change", (event) => {
    rememberCapture(event.target.value);
    run(open(Number(event.target.value)));
  });
  await open(id);
}

// Any failure ends up as a message on the stage instead of a silent blank page.
function run(promise) {
  promise.catch((err) => {
    if (err.name === "AbortError") return;   // the work of a capture the page has left
    if (err instanceof ApiError && err.status === 401 && state.mode !== "public") {
      // The token was revoked while the page was open: back to the sign-in card.
      setToken(null);
      location.reload();
      return;
    }
    console.error(err);
    stageMessage(err.message || String(err), "error");
  });
}

applyPalette();
if (state.mode !== "public") takeKeyFromURL();
run(state.mode === "public" ? publicPage() : libraryPage());
