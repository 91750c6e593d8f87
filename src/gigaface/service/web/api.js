// Same-origin client for the gigaface service, and the one place that knows its addresses:
// the other modules call the functions below, never fetch a path of their own.
//
// Every request carries `Authorization: Bearer <token>` when a token is stored, or, for
// `gigaface view`, `X-Gigaface-Key: <this run's key>`; every error response is turned into
// an ApiError whose message a person can read: the service answers {"detail": "one-line
// message"} (or FastAPI's list of validation errors).

// Every address the page asks for; `{name}` is filled in per call. The pyramids' addresses
// come from the server (a capture's pyramid_url, a public capture's url: they name the
// current build) and are listed so that this table is the whole story.
export const ROUTES = Object.freeze({
  me: "/api/me",
  captures: "/api/captures",
  capture: "/api/captures/{id}",
  events: "/api/captures/{id}/events",
  faces: "/api/captures/{id}/faces?offset={offset}&limit={limit}",
  search: "/api/captures/{id}/search?limit={limit}",
  crop: "/api/faces/{id}/crop.jpg",
  pyramid: "/api/captures/{id}/pyramid/{build}.dzi",
  pyramidTile: "/api/captures/{id}/pyramid/{build}_files/{level}/{tile}",
  publicCaptures: "/public/captures",
  publicPyramid: "/public/captures/{id}/{build}.dzi",
  publicTile: "/public/captures/{id}/{build}_files/{level}/{tile}",
  viewerImages: "/static/vendor/openseadragon/images/",
});

function route(name, params = {}) {
  return ROUTES[name].replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(params[key]));
}

export const VIEWER_IMAGES = ROUTES.viewerImages;

const TOKEN_KEY = "gigaface.token";
const RUN_KEY = "gigaface.key";
export const KEY_HEADER = "X-Gigaface-Key";

export class ApiError extends Error {
  constructor(status, message, scheme = "") {
    super(message);
    this.status = status;
    this.scheme = scheme;   // of WWW-Authenticate: "Bearer" (a token) or "GigafaceKey" (view's key)
  }
}

// `gigaface view` opens http://127.0.0.1:PORT/#key=...: a fragment reaches no server and
// no Referer. Keep the key for this tab and take it out of the address bar, so that it is
// not bookmarked, shared or shown.
export function takeKeyFromURL() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (!key) return;
  sessionStorage.setItem(RUN_KEY, key);
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

export function getKey() {
  return sessionStorage.getItem(RUN_KEY) || null;
}

// sessionStorage: the token lives as long as the tab, and is not shared with other tabs.
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || null;
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders() {
  const headers = {};
  const token = getToken();
  const key = getKey();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (key) headers[KEY_HEADER] = key;
  return headers;
}

export async function request(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    const scheme = (response.headers.get("WWW-Authenticate") || "").split(" ")[0];
    throw new ApiError(response.status, await errorMessage(response), scheme);
  }
  return response;
}

export async function getJSON(path, options = {}) {
  return (await request(path, options)).json();
}

async function errorMessage(response) {
  const fallback = `${response.status} ${response.statusText || "error"}`.trim();
  try {
    const body = await response.json();
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    }
  } catch {
    // Not JSON (a proxy's HTML page, an empty body): the status line is all we have.
  }
  return fallback;
}

// Face crops need the auth header, so an <img src> cannot fetch them directly: fetch once,
// keep a blob URL per face for the life of the page (crops are a few KB each).
const crops = new Map();

export function cropURL(faceId) {
  if (!crops.has(faceId)) {
    const url = request(route("crop", { id: faceId }))
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    // A failed fetch must not stay cached: the next call tries again.
    url.catch(() => crops.delete(faceId));
    crops.set(faceId, url);
  }
  return crops.get(faceId);
}

// --- the service's endpoints ---------------------------------------------------------------

export const whoAmI = () => getJSON(route("me"));
export const listCaptures = () => getJSON(route("captures"));
export const getCapture = (id, signal) => getJSON(route("capture", { id }), { signal });
export const facePage = (id, offset, limit) => getJSON(route("faces", { id, offset, limit }));

// `photos`: File objects, sent as multipart form fields named "photos".
export async function searchPhotos(id, photos, limit) {
  const body = new FormData();
  for (const file of photos) body.append("photos", file, file.name);
  return (await request(route("search", { id, limit }), { method: "POST", body })).json();
}

// Anonymous on purpose: plain fetch, never the stored token or key.
export async function publicCaptures() {
  const response = await fetch(route("publicCaptures"));
  if (!response.ok) throw new Error(`Could not list the images (${response.status})`);
  return response.json();
}

// The capture after each change, as the service's event stream sends it, until the stream
// ends (the server closes it when the job is done or failed, or the capture was deleted).
// Read with fetch, not EventSource: EventSource cannot send the token or key header.
// Aborting `signal` closes the stream; leaving the loop early closes it too.
export async function* captureEvents(id, signal) {
  const response = await request(route("events", { id }), {
    signal,
    headers: { Accept: "text/event-stream" },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Events end with a blank line; the last piece may be half an event: keep it for later.
      buffer += value.replace(/\r\n?/g, "\n");
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const parsed = parseEvent(event);
        if (parsed.type === "deleted") return;
        if (parsed.type === "message" && parsed.data) yield JSON.parse(parsed.data);
      }
    }
  } finally {
    reader.cancel().catch(() => {});   // the server sees the client go and frees its slot
  }
}

// One event's lines: "event: NAME", "data: ..." (several join with newlines), ": comment".
function parseEvent(text) {
  let type = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;   // ": still here" keeps idle streams open
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  return { type, data: data.join("\n") };
}
