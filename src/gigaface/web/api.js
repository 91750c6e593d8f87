// Same-origin client for the gigaface service.
//
// Every request carries `Authorization: Bearer <token>` when a token is stored, and every
// error response is turned into an ApiError whose message a person can read: the service
// answers {"detail": "one-line message"} (or FastAPI's list of validation errors).

const TOKEN_KEY = "gigaface.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
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
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function request(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
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
