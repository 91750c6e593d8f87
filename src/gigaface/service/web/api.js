// Same-origin client for the gigaface service.
//
// Every request carries `Authorization: Bearer <token>` when a token is stored, or, for
// `gigaface view`, `X-Gigaface-Key: <this run's key>`; every error response is turned into
// an ApiError whose message a person can read: the service answers {"detail": "one-line
// message"} (or FastAPI's list of validation errors).

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

export async function getJSON(path) {
  return (await request(path)).json();
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
    const url = request(`/api/faces/${faceId}/crop.jpg`)
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    // A failed fetch must not stay cached: the next call tries again.
    url.catch(() => crops.delete(faceId));
    crops.set(faceId, url);
  }
  return crops.get(faceId);
}
