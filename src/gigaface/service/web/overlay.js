// Face boxes drawn on ONE canvas laid over the OpenSeadragon viewer.
//
// A capture can hold tens of thousands of faces: one DOM node (or OSD overlay) per face
// would make every pan and zoom crawl. Instead the canvas is redrawn once per animation
// frame, only for the faces inside the visible part of the image, found through a grid
// index over image coordinates (the same index answers "which face is under the mouse").

/* global OpenSeadragon */

import { MARKS, SCORE_BANDS, scoreBand } from "./palette.js";

const MIN_BOX_PX = 3;       // below this on screen a box is drawn as a dot
const HOVER_SLOP_PX = 4;    // how near the pointer must be to a tiny face to hover it

// Buckets of faces by grid cell. A face is listed in every cell its box overlaps, so a
// rectangle query looks only at the cells it covers, and a point query at one cell.
export class FaceIndex {
  constructor(faces) {
    this.faces = faces;
    // A cell a few median faces wide holds a handful of faces in a dense crowd.
    const sizes = faces.map((f) => Math.max(f.box[2], f.box[3])).sort((a, b) => a - b);
    const median = sizes.length ? sizes[sizes.length >> 1] : 64;
    this.cell = Math.max(32, median * 4);
    this.cells = new Map();
    this.seen = new Uint32Array(faces.length);  // per-query stamps: report each face once
    this.stamp = 0;
    faces.forEach((f, i) => {
      const [x, y, w, h] = f.box;
      this.forCells(x, y, x + w, y + h, (key) => {
        let list = this.cells.get(key);
        if (!list) this.cells.set(key, (list = []));
        list.push(i);
      });
    });
  }

  forCells(x0, y0, x1, y1, visit) {
    const c = this.cell;
    for (let cy = Math.floor(y0 / c); cy <= Math.floor(y1 / c); cy++) {
      for (let cx = Math.floor(x0 / c); cx <= Math.floor(x1 / c); cx++) {
        visit(`${cx},${cy}`);   // string keys: the grid is sparse and unbounded
      }
    }
  }

  // Calls visit(face) once for each face whose box overlaps the rectangle.
  query(x0, y0, x1, y1, visit) {
    const cols = Math.floor(x1 / this.cell) - Math.floor(x0 / this.cell) + 1;
    const rows = Math.floor(y1 / this.cell) - Math.floor(y0 / this.cell) + 1;
    if (cols * rows > this.cells.size) {
      // Zoomed out: the rectangle covers more cells than exist, a plain scan is cheaper.
      for (const f of this.faces) {
        const [x, y, w, h] = f.box;
        if (x <= x1 && x + w >= x0 && y <= y1 && y + h >= y0) visit(f);
      }
      return;
    }
    const stamp = ++this.stamp;
    this.forCells(x0, y0, x1, y1, (key) => {
      for (const i of this.cells.get(key) || []) {
        if (this.seen[i] === stamp) continue;
        this.seen[i] = stamp;
        const [x, y, w, h] = this.faces[i].box;
        if (x <= x1 && x + w >= x0 && y <= y1 && y + h >= y0) visit(this.faces[i]);
      }
    });
  }

  // The face under (x, y), or within `slop` image pixels of it; the nearest centre wins.
  at(x, y, slop) {
    let best = null;
    let bestDist = Infinity;
    this.query(x - slop, y - slop, x + slop, y + slop, (f) => {
      const [fx, fy, w, h] = f.box;
      const d = Math.hypot(fx + w / 2 - x, fy + h / 2 - y);
      if (d < bestDist) {
        best = f;
        bestDist = d;
      }
    });
    return best;
  }
}

export class FaceOverlay {
  constructor(viewer, { onHover, onClick }) {
    this.viewer = viewer;
    this.onHover = onHover;
    this.onClick = onClick;
    this.faces = [];
    this.index = new FaceIndex([]);
    this.selected = null;      // face id
    this.hovered = null;       // face object
    this.matches = new Map();  // face id -> search match
    this.frame = 0;
    this.onDrawn = null;       // called after each redraw (the page uses it for `ready`)

    this.canvas = document.createElement("canvas");
    this.canvas.className = "face-overlay";
    this.canvas.dataset.drawnCount = "0";
    this.ctx = this.canvas.getContext("2d");
    // Inside OSD's canvas element: above the image, below OSD's own controls.
    viewer.canvas.appendChild(this.canvas);

    const redraw = () => this.schedule();
    for (const name of ["animation", "update-viewport", "resize", "open"]) {
      viewer.addHandler(name, redraw);
    }
    this.listen();
  }

  setFaces(faces) {
    this.faces = faces;
    this.index = new FaceIndex(faces);
    this.hovered = null;
    this.schedule();
  }

  setSelected(id) {
    this.selected = id;
    this.schedule();
  }

  setMatches(matches) {
    this.matches = new Map(matches.map((m) => [m.face_id, m]));
    this.schedule();
  }

  // Coalesce the many OSD events of one frame into one redraw.
  schedule() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.draw();
      });
    }
  }

  // Image pixels -> viewer element pixels is a scale and an offset (rotation is off), so
  // it is derived once per frame from OSD instead of converting every face.
  transform() {
    const vp = this.viewer.viewport;
    const item = this.viewer.world.getItemAt(0);
    const width = item ? item.getContentSize().x : 1;
    const o = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const e = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(width, 0));
    return { ox: o.x, oy: o.y, k: (e.x - o.x) / width };
  }

  draw() {
    const { canvas, ctx } = this;
    const cssW = this.viewer.canvas.clientWidth;
    const cssH = this.viewer.canvas.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    if (!this.viewer.world.getItemCount()) return;

    const { ox, oy, k } = this.transform();
    // The visible part of the image, in image pixels.
    const x0 = -ox / k, y0 = -oy / k, x1 = (cssW - ox) / k, y1 = (cssH - oy) / k;
    const view = { ox, oy, k, x0, y0, x1, y1 };

    // One path per colour, stroked once: thousands of rects cost one stroke call each colour.
    const boxes = new Map(SCORE_BANDS.map((band) => [band, new Path2D()]));
    const dots = new Map(SCORE_BANDS.map((band) => [band, []]));
    let drawn = 0;
    this.index.query(x0, y0, x1, y1, (f) => {
      if (this.matches.has(f.id) || f.id === this.selected) return;  // drawn on top, below
      const [x, y, w, h] = f.box;
      const band = scoreBand(f.score);
      const sx = ox + x * k, sy = oy + y * k, sw = w * k, sh = h * k;
      if (Math.max(sw, sh) >= MIN_BOX_PX) boxes.get(band).rect(sx, sy, sw, sh);
      else dots.get(band).push(sx + sw / 2, sy + sh / 2);
      drawn++;
    });
    ctx.lineWidth = k > 0.5 ? 1.5 : 1;
    for (const band of SCORE_BANDS) {
      ctx.strokeStyle = band.colour;
      ctx.stroke(boxes.get(band));
      ctx.fillStyle = band.colour;
      const d = dots.get(band);
      for (let i = 0; i < d.length; i += 2) ctx.fillRect(d[i] - 1, d[i + 1] - 1, 2, 2);
    }

    // Search results and the selection stay findable at any zoom: never smaller than a ring.
    for (const m of this.matches.values()) {
      drawn += this.mark(m.box, view, m.match ? MARKS.match : MARKS.weak,
        m.match ? 2.5 : 1.5, m.rank, !m.match);
    }
    const sel = this.selected != null && this.faceById(this.selected);
    if (sel) drawn += this.mark(sel.box, view, MARKS.selected, 2.5);
    if (this.hovered && this.hovered.id !== this.selected) {
      this.mark(this.hovered.box, view, MARKS.hovered, 1.5);
    }

    canvas.dataset.drawnCount = String(drawn);
    if (this.onDrawn) this.onDrawn(drawn);
  }

  // One emphasised box (at least `min` px) with a dark halo so it reads on any background.
  // Returns how many boxes it drew: 0 when the face is out of view.
  mark(box, view, colour, width, label = null, dashed = false) {
    const { ctx } = this;
    const { ox, oy, k } = view;
    const [x, y, w, h] = box;
    if (x > view.x1 || x + w < view.x0 || y > view.y1 || y + h < view.y0) return 0;
    const pad = 2;
    let sx = ox + x * k - pad, sy = oy + y * k - pad, sw = w * k + 2 * pad, sh = h * k + 2 * pad;
    const min = 12;
    if (sw < min) { sx -= (min - sw) / 2; sw = min; }
    if (sh < min) { sy -= (min - sh) / 2; sh = min; }
    ctx.save();
    ctx.setLineDash(dashed ? [4, 3] : []);
    ctx.lineWidth = width + 2;
    ctx.strokeStyle = "rgba(0,0,0,0.55)";
    ctx.strokeRect(sx, sy, sw, sh);
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.strokeRect(sx, sy, sw, sh);
    if (label != null) {
      // A rank tag above the box's top-left corner.
      const text = String(label);
      ctx.font = "600 11px system-ui, sans-serif";
      const tw = ctx.measureText(text).width + 8;
      ctx.setLineDash([]);
      ctx.fillStyle = colour;
      ctx.fillRect(sx - width / 2, sy - 16, Math.max(tw, 16), 16);
      ctx.fillStyle = "#0b0f17";
      ctx.textBaseline = "middle";
      ctx.fillText(text, sx - width / 2 + 4, sy - 8);
    }
    ctx.restore();
    return 1;
  }

  faceById(id) {
    if (!this.byId || this.byId.faces !== this.faces) {
      this.byId = { faces: this.faces, map: new Map(this.faces.map((f) => [f.id, f])) };
    }
    return this.byId.map.get(id) || null;
  }

  // The face at a point given in viewer element pixels, or null.
  faceAt(px, py) {
    if (!this.viewer.world.getItemCount()) return null;
    const { ox, oy, k } = this.transform();
    return this.index.at((px - ox) / k, (py - oy) / k, HOVER_SLOP_PX / k);
  }

  listen() {
    const el = this.viewer.canvas;
    // Hover: plain pointer events on OSD's canvas element (OSD lets them bubble).
    el.addEventListener("pointermove", (event) => {
      if (event.buttons) return this.hover(null, event);   // dragging: no tooltip
      const r = el.getBoundingClientRect();
      this.hover(this.faceAt(event.clientX - r.left, event.clientY - r.top), event);
    });
    el.addEventListener("pointerleave", (event) => this.hover(null, event));
    // OSD tells a click from a drag: `quick` is true only for a press-release without
    // much movement. Clicks no longer zoom (clickToZoom is off), so a click means "pick".
    this.viewer.addHandler("canvas-click", (event) => {
      if (!event.quick) return;
      this.onClick(this.faceAt(event.position.x, event.position.y));
    });
  }

  hover(face, event) {
    if (face !== this.hovered) {
      this.hovered = face;
      this.viewer.canvas.style.cursor = face ? "pointer" : "";
      this.schedule();
    }
    this.onHover(face, event);
  }
}
