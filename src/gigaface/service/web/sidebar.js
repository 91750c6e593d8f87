// The right sidebar: the selected face's details, and "Find me" (search by photos).

import { cropURL, searchPhotos } from "./api.js";
import { $, formatFixed, formatInt, plural, showMessage } from "./ui.js";

// Shows one face: its crop enlarged, id, score, quality and position.
export class FacePanel {
  constructor({ onZoom }) {
    this.face = null;
    $("face-zoom").addEventListener("click", () => this.face && onZoom(this.face));
  }

  async show(face) {
    this.face = face;
    $("face-empty").hidden = !!face;
    $("face-detail").hidden = !face;
    if (!face) return;
    const q = face.quality || {};
    const [x, y, w, h] = face.box;
    $("face-id").textContent = `#${face.id}`;
    $("face-score").textContent = formatFixed(face.score, 2);
    $("face-size").textContent = `${formatInt(q.size == null ? Math.max(w, h) : q.size)} px`;
    $("face-sharpness").textContent = formatFixed(q.sharpness, 0);
    $("face-frontalness").textContent = formatFixed(q.frontalness, 2);
    $("face-position").textContent = `${formatInt(x + w / 2)}, ${formatInt(y + h / 2)}`;
    const img = $("face-crop");
    img.removeAttribute("src");   // no stale face while the new crop loads
    img.alt = `Face #${face.id}`;
    if (face.erased) {   // the person asked to be forgotten: the library keeps no crop
      img.alt = "Erased on request: no crop is kept";
      return;
    }
    try {
      const url = await cropURL(face.id);
      if (this.face === face) img.src = url;   // another face may have been picked meanwhile
    } catch (err) {
      img.alt = `Crop unavailable: ${err.message}`;
    }
  }
}

// "Find me": reference photos -> the service's search -> a ranked strip of crops.
export class FindPanel {
  constructor({ captureId, onResults, onPick }) {
    this.captureId = captureId;   // a function: the capture currently shown
    this.onResults = onResults;
    this.onPick = onPick;
    this.input = $("find-photos");
    this.button = $("find-search");
    this.enabled = false;
    this.input.addEventListener("change", () => this.filesChanged());
    $("find-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.acceptDrops($("find-drop"));
  }

  acceptDrops(zone) {
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (this.enabled && event.dataTransfer.files.length) {
        this.input.files = event.dataTransfer.files;
        this.filesChanged();
      }
    });
  }

  // Off while no capture is open: a search during a scan would rank half its faces.
  enable(on) {
    this.enabled = on;
    this.input.disabled = !on;
    $("find-panel").classList.toggle("is-disabled", !on);
    this.filesChanged();
  }

  filesChanged() {
    const files = [...this.input.files];
    $("find-files").textContent = files.length
      ? files.map((f) => f.name).join(", ")
      : "or drop them here";
    $("find-drop").classList.toggle("has-files", files.length > 0);
    this.button.disabled = files.length === 0 || !this.enabled;
  }

  status(text, kind = "info") {
    showMessage($("find-status"), text, kind);
  }

  reset() {
    $("find-results").replaceChildren();
    this.status("");
    this.onResults([]);
  }

  async search() {
    const files = [...this.input.files];
    const id = this.captureId();
    if (!files.length || id == null) return;
    this.button.disabled = true;
    this.button.textContent = "Searching…";
    $("find-results").replaceChildren();
    this.status(files.length > 1 ? `Comparing ${files.length} photos with every face…` : "Comparing with every face…");
    try {
      this.render(await searchPhotos(id, files, 20));
    } catch (err) {
      this.status(err.message, "error");
      this.onResults([]);
    } finally {
      this.button.textContent = "Search";
      this.filesChanged();
    }
  }

  render(result) {
    const matches = result.matches || [];
    const strong = matches.filter((m) => m.match).length;
    const refs = (result.references || []).length;
    const threshold = result.threshold == null ? "" : ` · threshold ${Number(result.threshold).toFixed(2)}`;
    if (!matches.length) this.status("No faces to compare in this capture.", "info");
    else {
      const what = strong ? `${strong} ${plural(strong, "match", "matches")}` : "No match";
      this.status(`${what} from ${refs} ${plural(refs, "photo", "photos")}${threshold}`, strong ? "ok" : "info");
    }
    $("find-results").replaceChildren(...matches.map((m) => this.item(m)));
    this.onResults(matches);
  }

  item(m) {
    const li = document.createElement("li");
    li.className = `match ${m.match ? "is-match" : "is-weak"}`;
    li.dataset.faceId = m.face_id;
    li.dataset.rank = m.rank;
    li.dataset.match = String(m.match);
    const button = document.createElement("button");
    button.type = "button";
    button.title = `Face #${m.face_id}: distance ${m.distance.toFixed(3)}${m.match ? " (match)" : ""}`;
    button.addEventListener("click", () => {
      document.querySelectorAll("#find-results .match.active").forEach((el) => el.classList.remove("active"));
      li.classList.add("active");
      this.onPick(m);
    });
    const img = document.createElement("img");
    img.alt = `Face #${m.face_id}`;
    img.loading = "lazy";
    cropURL(m.face_id).then((url) => { img.src = url; }, () => {});
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = m.rank;
    const dist = document.createElement("span");
    dist.className = "distance";
    dist.innerHTML = "<small>dist</small> ";
    dist.append(m.distance.toFixed(2));
    button.append(img, rank, dist);
    if (m.match) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "match";
      button.append(badge);
    }
    li.append(button);
    return li;
  }
}
