"""Load: concurrent searches and face listings against a real `gigaface serve` while a scan
holds the CPU.

    python -m bench --sections load               # the default: a 100 MP stadium, 8 clients, 90 s
    python -m bench --sections load --size 40 --load-clients 4 --load-seconds 30
    python -m bench --sections load --load-faces 1000000   # searches over 10^6 faces beforehand
    python -m bench.load --size 40 --seconds 30   # the same without writing results

A fresh library gets an admin and a viewer token and a real server (the `gigaface serve`
command, in a subprocess) on a free port of 127.0.0.1. A small stadium is scanned first
through the API, so there are faces to list and a person to search for; then a big one is
added, and while its job runs (detect, describe, pyramid, export: a niced process of its
own) N client threads send searches with a reference photo, pages of faces with filters
and capture polls, and a monitor polls /api/health and the scan's progress. Every answer is
checked (status, and content against what the same request returned before the load), so
an error is a failed request, a transport error or a wrong answer.

Everything is bounded: only 127.0.0.1 is ever addressed, the load stops after `seconds` or
`max_requests`, whichever comes first, each request has a timeout, and waiting for the
scan to finish has a deadline. `drive` is also what tests/test_load.py runs, shorter.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.harness import LOOPBACK, JobNotDone, Server, make_token, wait_for
from gigaface.library.store import Library
from gigaface.process import peak_rss_mb
from gigaface.search_index import EXACT_UP_TO

STAGES = ("queued", "detect", "merge", "describe", "pyramid", "export", "done")
# The big stadium is sparsely seated: a full one has ~220 faces per MP, which would take the
# describe stage tens of minutes on 2 cores; this keeps the whole job a few minutes long at
# 100 MP while every stage (detect, describe, pyramid, export) still holds the CPU. Under
# 20 MP the seats fill up again (the demo needs people in its middle rows): ~300 faces.
BIG_OCCUPANCY = 0.06


def big_occupancy(megapixels: float) -> float:
    return min(0.88, BIG_OCCUPANCY * max(1.0, 20 / megapixels))
SMALL_MP = 1.5          # the capture that is listed and searched: ~300 faces
# Two kinds of client, alternating: someone using "Find me" (searches, one after another)
# and someone browsing the faces (pages with filters, and polls of the scan's progress).
# Each kind in its own client, so that slow searches do not throttle the browsing; the
# monitor polls health on its own. Request kinds by weight:
ROLES = ((("faces", 4), ("capture", 1)),   # even clients: browsing
         (("search", 1),))                  # odd clients: searching
FACE_FILTERS = ({}, {"min_size": 24}, {"min_sharpness": 100}, {"min_score": 0.6},
                {"max_size": 30, "min_frontalness": 0.5})
PAGE_LIMITS = (20, 100, 1000)


def loopback_only(url: str) -> str:
    """The load may only ever target this machine's loopback address."""
    if urlsplit(url).hostname != LOOPBACK:
        raise ValueError(f"{url}: load is only sent to {LOOPBACK}")
    return url


# --- what to expect ------------------------------------------------------------------------
@dataclass
class Target:
    """The capture the clients read, what each request must answer, and the scan to watch."""

    url: str
    token: str                      # a viewer token: everything the clients do is viewer's
    capture: int                    # scanned: its faces are listed and searched
    photo: bytes                    # a reference photo (JPEG) for the searches
    scan: int | None = None         # the capture whose job runs during the load
    totals: dict[str, int] = field(default_factory=dict)   # faces per filter
    top_face: int | None = None     # the search's first match
    # Where searches go: the listed capture by default; with a library of many faces
    # beforehand, /api/search over every capture but the one being scanned.
    search_path: str = ""
    search_params: dict = field(default_factory=lambda: {"top": 20})
    # More photos of the person, the searches taking them in turn: the server keeps its
    # last 32 rankings for paging, so one photo sent again and again (or 64 picked at
    # random: half of them hits) would measure that cache, not the ranking.
    variants: list[bytes] = field(default_factory=list)
    turn: itertools.count = field(default_factory=itertools.count)

    def search_photo(self) -> bytes:
        return self.variants[next(self.turn) % len(self.variants)] if self.variants else self.photo

    def __post_init__(self) -> None:
        self.search_path = self.search_path or f"/api/captures/{self.capture}/search"


def _filter_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def prepare(url: str, token: str, capture: int, photo: bytes, scan: int | None = None,
            timeout: float = 120, search_path: str = "", search_params: dict | None = None) -> Target:
    """Ask each kind of request once, before the load, for the answers to check it against."""
    target = Target(loopback_only(url), token, capture, photo, scan, search_path=search_path,
                    search_params=search_params or {"top": 20})
    with httpx.Client(base_url=url, headers=_auth(token), timeout=timeout) as client:
        for params in FACE_FILTERS:
            r = client.get(f"/api/captures/{capture}/faces", params={**params, "limit": 1})
            r.raise_for_status()
            target.totals[_filter_key(params)] = r.json()["total"]
        r = client.post(target.search_path, params=target.search_params,
                        files={"photos": ("reference.jpg", photo, "image/jpeg")})
        r.raise_for_status()
        matches = r.json()["matches"]
        target.top_face = matches[0]["face_id"] if matches else None
    return target


def photo_variants(photo: bytes, count: int = 64) -> list[bytes]:
    """The photo cropped a few pixels differently and scaled by up to 6%: the same person,
    each a query of its own (more of them than the server keeps rankings for)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    out = []
    for i in range(count):
        dx, dy, scale = 2 * (i % 4), 2 * (i // 4 % 4), 0.94 + 0.03 * (i // 16)
        crop = image[dy:h - (6 - dx) // 2, dx:w - (6 - dy) // 2]
        crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    return out


def wait_for_index(target: Target, want: str, timeout: float = 600) -> str:
    """Search now and then until the server's index ranks as `want` (its IVF built)."""
    deadline = time.perf_counter() + timeout
    with httpx.Client(base_url=target.url, headers=_auth(target.token), timeout=120) as client:
        while True:
            r = client.post(target.search_path, params=target.search_params,
                            files={"photos": ("reference.jpg", target.photo, "image/jpeg")})
            r.raise_for_status()
            method = server_timing(r).get("method", "")
            if method == want or time.perf_counter() > deadline:
                return method
            time.sleep(2)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the load --------------------------------------------------------------------------------
@dataclass
class Sample:
    endpoint: str
    at: float           # s since the load started
    seconds: float
    error: str | None
    rank_ms: float | None = None    # a search's ranking alone, from its Server-Timing header...
    index_ms: float | None = None   # ...and the index's part of it
    method: str | None = None       # exact or ivf


class _Recorder:
    def __init__(self, max_requests: int):
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self.sent = 0
        self.max_requests = max_requests

    def claim(self) -> bool:
        """One more request, if the count allows it."""
        with self.lock:
            if self.sent >= self.max_requests:
                return False
            self.sent += 1
            return True

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def _timed(client: httpx.Client, endpoint: str, start: float, check, method: str, path: str, **kw) -> Sample:
    t0 = time.perf_counter()
    error = None
    try:
        r = client.request(method, path, **kw)
        if not 200 <= r.status_code < 300:
            error = f"HTTP {r.status_code}: {r.text[:200]}"
        else:
            error = check(r.json())
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    except ValueError as exc:  # not JSON
        error = f"bad body: {exc}"[:200]
    t1 = time.perf_counter()
    timing = server_timing(r) if error is None else {}
    return Sample(endpoint, t0 - start, t1 - t0, error, timing.get("rank"), timing.get("index"),
                  timing.get("method"))


def server_timing(response: httpx.Response) -> dict:
    """A search's Server-Timing header as {name: ms}, and `method`: how the index ranked."""
    found: dict = {}
    for part in response.headers.get("server-timing", "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            dur, _, desc = rest.partition(";desc=")
            found[name] = float(dur)
            if desc:
                found["method"] = desc.strip('"')
    return found


def _client(target: Target, index: int, rec: _Recorder, start: float, deadline: float,
            think: float, timeout: float, seed: int, roles) -> None:
    rng = random.Random(seed * 1000 + index)
    names, weights = zip(*roles[index % len(roles)])
    with httpx.Client(base_url=target.url, headers=_auth(target.token), timeout=timeout) as client:
        while time.perf_counter() < deadline and rec.claim():
            kind = rng.choices(names, weights)[0]
            if kind == "search":
                sample = _timed(client, "search", start, lambda body: _check_search(target, body), "POST",
                                target.search_path, params=target.search_params,
                                files={"photos": ("reference.jpg", target.search_photo(), "image/jpeg")})
            elif kind == "faces":
                filters = rng.choice(FACE_FILTERS)
                total = target.totals[_filter_key(filters)]
                limit = rng.choice(PAGE_LIMITS)
                offset = rng.randrange(0, max(total, 1))
                sample = _timed(client, "faces", start,
                                lambda body, total=total, offset=offset, limit=limit:
                                _check_page(body, total, offset, limit), "GET",
                                f"/api/captures/{target.capture}/faces",
                                params={**filters, "offset": offset, "limit": limit})
            else:
                capture = target.scan if target.scan is not None else target.capture
                sample = _timed(client, "capture", start,
                                lambda body, capture=capture: None if body.get("id") == capture
                                else f"wrong capture: {body.get('id')}", "GET", f"/api/captures/{capture}")
            rec.add(sample)
            if think > 0:
                time.sleep(min(rng.expovariate(1 / think), 5 * think, max(0.0, deadline - time.perf_counter())))


def _check_search(target: Target, body: dict) -> str | None:
    if not body["references"] or body["references"][0]["faces_in_photo"] < 1:
        return "search: no face found in the reference photo"
    top = body["matches"][0]["face_id"] if body["matches"] else None
    if top != target.top_face:
        return f"search: first match {top}, before the load {target.top_face}"
    return None


def _check_page(body: dict, total: int, offset: int, limit: int) -> str | None:
    if body["total"] != total:
        return f"faces: total {body['total']}, before the load {total}"
    if len(body["items"]) != max(0, min(limit, total - offset)):
        return f"faces: {len(body['items'])} items at offset {offset} limit {limit} of {total}"
    return None


def _monitor(target: Target, rec: _Recorder, start: float, stop: threading.Event,
             every: float, timeout: float, progress: list[dict]) -> None:
    """Health every `every` seconds and the scan's progress every other time: not counted
    against max_requests, so that the server is watched for the whole load."""
    with httpx.Client(base_url=target.url, headers=_auth(target.token), timeout=timeout) as client:
        tick = 0
        while not stop.is_set():
            rec.add(_timed(client, "health", start, lambda body: None if body.get("status") == "ok"
                           else f"health: {body}", "GET", "/api/health"))
            if target.scan is not None and tick % 2 == 0:
                try:
                    job = client.get(f"/api/captures/{target.scan}").json()
                    progress.append({"at": round(time.perf_counter() - start, 2), **_progress(job)})
                except (httpx.HTTPError, ValueError, KeyError):
                    pass  # the clients' capture polls count errors; this only keeps the timeline
            tick += 1
            stop.wait(every)


def _progress(capture: dict) -> dict:
    p = capture["progress"]
    return {"state": capture["state"], "stage": capture["stage"], "done": p["done"], "total": p["total"],
            "faces": p["faces"]}


def _ahead(after: dict, before: dict) -> bool:
    """Whether the job moved on between two progress records."""
    def key(p):
        stage = STAGES.index(p["stage"]) if p["stage"] in STAGES else -1
        return (p["state"] == "done", stage, p["done"])
    return key(after) > key(before)


def drive(target: Target, clients: int = 8, seconds: float = 60, max_requests: int = 20_000,
          think: float = 0.0, timeout: float = 60, health_every: float = 0.5, seed: int = 0,
          roles=ROLES) -> dict:
    """Run the load; return its statistics per endpoint and the scan's progress.

    Stops after `seconds` or `max_requests` requests from the clients; a request started
    before then may take up to `timeout` more."""
    loopback_only(target.url)
    rec = _Recorder(max_requests)
    progress: list[dict] = []
    stop = threading.Event()
    start = time.perf_counter()
    deadline = start + seconds
    monitor = threading.Thread(target=_monitor, args=(target, rec, start, stop, health_every, timeout, progress),
                               name="load-monitor", daemon=True)
    monitor.start()
    threads = [threading.Thread(target=_client, args=(target, i, rec, start, deadline, think, timeout, seed, roles),
                                name=f"load-client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + timeout + 30)
    elapsed = time.perf_counter() - start
    stop.set()
    monitor.join(timeout=timeout + 5)
    hung = sum(t.is_alive() for t in threads) + monitor.is_alive()
    result = summarise(rec.samples, elapsed)
    result.update(clients=clients, seconds=round(elapsed, 1), max_requests=max_requests, think_s=think,
                  timeout_s=timeout, hung_threads=hung, requests_claimed=rec.sent)
    slowest = sorted(rec.samples, key=lambda s: -s.seconds)[:8]
    result["slowest"] = [{"endpoint": s.endpoint, "at": round(s.at, 2), "ms": round(s.seconds * 1000, 1),
                          "error": s.error} for s in slowest]
    result["health_max_gap_s"] = _max_gap([s for s in rec.samples if s.endpoint == "health"], elapsed)
    if progress:
        result["scan_progress"] = {"first": progress[0], "last": progress[-1],
                                   "moved": _ahead(progress[-1], progress[0]),
                                   "timeline": progress[:: max(1, len(progress) // 40)]}
    return result


def _max_gap(health: list[Sample], elapsed: float) -> float:
    """The longest time the server went without a successful health answer during the load."""
    answered = sorted(s.at + s.seconds for s in health if s.error is None)
    edges = [0.0, *answered, elapsed]
    return round(max(b - a for a, b in zip(edges, edges[1:])), 2)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def summarise(samples: list[Sample], elapsed: float) -> dict:
    by: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by[s.endpoint].append(s)
    endpoints = {name: _stats(group, elapsed) for name, group in sorted(by.items())}
    clients = [s for s in samples if s.endpoint != "health"]
    return {"endpoints": endpoints, "all_clients": _stats(clients, elapsed),
            "errors": sum(e["errors"] for e in endpoints.values()),
            "requests": len(samples)}


def _stats(group: list[Sample], elapsed: float) -> dict:
    ms = sorted(s.seconds * 1000 for s in group)
    errors = [s.error for s in group if s.error is not None]
    samples = list(dict.fromkeys(errors))[:3]
    stats = {"count": len(group), "errors": len(errors), "error_samples": samples,
             "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1),
             "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(ms[-1], 1) if ms else math.nan,
             "per_s": round(len(group) / elapsed, 2) if elapsed > 0 else math.nan}
    for part in ("rank", "index"):   # a search's ranking alone, without reading and embedding its photo
        ms = sorted(getattr(s, f"{part}_ms") for s in group if getattr(s, f"{part}_ms") is not None)
        if ms:
            stats.update({f"{part}_p50_ms": round(percentile(ms, 50), 1), f"{part}_p99_ms": round(percentile(ms, 99), 1),
                          f"{part}_max_ms": round(ms[-1], 1)})
    methods = [s.method for s in group if s.method]
    if methods:
        stats["methods"] = {m: methods.count(m) for m in sorted(set(methods))}
    return stats


def outcome(api: httpx.Client, capture: int, timeout: float, every: float = 0.5) -> dict:
    """The capture once its job is done or failed; its last answer if the time runs out."""
    try:
        return wait_for(api, capture, timeout, every)
    except JobNotDone as late:
        return late.capture


# --- the benchmark section -----------------------------------------------------------------
def stadium(work: Path, megapixels: float, occupancy: float):
    """A demo stadium, built once per size into `work` and reused."""
    from gigaface.demo.scene import DemoScene, build_stadium

    folder = work / f"stadium-{megapixels:g}mp-{occupancy:g}"
    truth = folder / "stadium_truth.json"
    if truth.exists():
        t = json.loads(truth.read_text())
        return DemoScene(folder / "stadium.jpg", folder / "stadium_reference.jpg", truth, t["width"], t["height"],
                         len(t["faces"]), tuple(t["target"]))
    return build_stadium(folder, megapixels=megapixels, occupancy=occupancy)


def run(work: Path, size: float = 100, clients: int = 8, seconds: float = 90, max_requests: int = 50_000,
        think: float = 0.0, baseline: float = 10, finish_timeout: float = 1800, faces: int = 0, log=print) -> dict:
    """`faces`: start from bench/search.py's synthetic library of that many faces (its
    searches then rank them all, with the listed capture's, while the big one is scanned)."""
    work.mkdir(parents=True, exist_ok=True)
    load_average = {"start": os.getloadavg()}   # anything else running on the machine shows here
    t0 = time.perf_counter()
    small = stadium(work, SMALL_MP, 0.88)
    big = stadium(work, size, big_occupancy(size))
    log(f"stadiums: {small.width}x{small.height} ({small.faces} faces), {big.width}x{big.height} "
        f"({big.faces} faces), {time.perf_counter() - t0:.0f} s")
    photo = small.reference.read_bytes()
    with tempfile.TemporaryDirectory(dir=work, prefix="load-library-") as folder:
        db = Path(folder) / "library.db"
        if faces:
            from bench import search

            made = search.library(work, faces)["db"]
            shutil.copy(made, db)
            shutil.copy(f"{made}.key", f"{db}.key")
            before_ids = [c.id for c in Library(str(db)).captures.all()]
        admin, viewer = make_token(db, "admin"), make_token(db, "viewer")
        with Server(db, "--host", LOOPBACK, "--data-dir", work) as server, httpx.Client(base_url=server.url, headers=_auth(admin), timeout=120) as api:
            t = time.perf_counter()
            listed = api.post("/api/captures", json={"path": str(small.panorama)})
            listed.raise_for_status()
            listed = outcome(api, listed.json()["id"], finish_timeout)
            if listed["state"] != "done":
                raise RuntimeError(f"the small scan did not finish: {listed}")
            log(f"small capture: {listed['faces']} faces in {time.perf_counter() - t:.0f} s")
            many = {} if not faces else {"search_path": "/api/search",
                                         "search_params": {"capture": [*before_ids, listed["id"]], "limit": 20}}
            target = prepare(server.url, viewer, listed["id"], photo, **many)
            if faces:   # a warm server: the first search loaded the library; its IVF builds in a thread
                target.variants = photo_variants(photo)
                warmed = time.perf_counter()
                index_ready = wait_for_index(target, want="ivf" if faces > EXACT_UP_TO else "exact")
                log(f"index: {index_ready} {time.perf_counter() - warmed:.0f} s after the first search")
            quiet = None
            if baseline > 0:  # one client of each kind with nothing else running, for scale
                quiet = drive(target, clients=2, seconds=baseline, max_requests=max_requests, seed=1)
                log(f"baseline: {summary_line(quiet)}")
            scan_started = time.perf_counter()
            added = api.post("/api/captures", json={"path": str(big.panorama)})
            added.raise_for_status()
            target.scan = added.json()["id"]
            # Load from the moment the job has the CPU: its process is started and detecting.
            while time.perf_counter() - scan_started < 120:
                p = _progress(api.get(f"/api/captures/{target.scan}").json())
                if p["state"] != "queued" and (p["total"] > 0 or p["stage"] != "detect"):
                    break
                time.sleep(0.2)
            before = _progress(api.get(f"/api/captures/{target.scan}").json())
            load_average["load_start"] = os.getloadavg()
            loaded = drive(target, clients=clients, seconds=seconds, max_requests=max_requests, think=think)
            after = _progress(api.get(f"/api/captures/{target.scan}").json())
            load_average["load_end"] = os.getloadavg()
            log(f"load: {summary_line(loaded)}")
            log(f"scan before the load {before}, after {after}")
            done = outcome(api, target.scan, finish_timeout, every=2)
            scan_s = time.perf_counter() - scan_started
            log(f"scan {done['state']}: {done['faces']} faces, {scan_s:.0f} s from adding it")
            server_rss = peak_rss_mb(server.process.pid)
        server_log = server.output()
    problems = [l for l in server_log.splitlines() if "error" in l.lower() or "traceback" in l.lower()]
    config = {"size_mp": size, "clients": clients, "seconds": seconds, "max_requests": max_requests,
              "think_s": think, "roles": [dict(r) for r in ROLES], "health_every_s": 0.5,
              "library_faces": faces, "search": target.search_path, "server_rss_mb": round(server_rss)}
    images = {"listed": image_row(small.width, small.height, faces=listed["faces"]),
              "scanned": image_row(big.width, big.height, planted=big.faces, occupancy=round(big_occupancy(size), 3))}
    return section(config, images, quiet, loaded, before, after, done, scan_s, load_average, problems)


def image_row(width: int, height: int, **counts) -> dict:
    """How the results name an image: its size, megapixels and what is in it."""
    return {"size": f"{width}x{height}", "megapixels": round(width * height / 1e6, 1), **counts}


def section(config: dict, images: dict, baseline: dict | None, loaded: dict, before: dict, after: dict,
            finished: dict, scan_seconds: float, load_average: dict | None = None, problems=()) -> dict:
    """The load section's results, as bench/results/load.json keeps them and the report reads them."""
    return {"config": config, "images": images, "baseline": baseline, "load": loaded,
            "scan": {"before": before, "after": after, "moved": _ahead(after, before), "state": finished["state"],
                     "faces": finished["faces"], "error": finished["error"], "seconds": round(scan_seconds, 1)},
            "cores": os.cpu_count(),
            "load_average": {k: [round(x, 2) for x in v] for k, v in (load_average or {}).items()},
            "server_log_problems": list(problems)[:10]}


def summary_line(r: dict) -> str:
    parts = [f"{name} n={e['count']} err={e['errors']} p50={e['p50_ms']} p99={e['p99_ms']} ms"
             for name, e in r["endpoints"].items()]
    return f"{r['seconds']} s, {r['errors']} errors; " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=100, help="the scanned stadium, megapixels")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--think", type=float, default=0.0, help="mean pause between a client's requests, s")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--faces", type=int, default=0,
                        help="start from the search benchmark's synthetic library of this many faces")
    args = parser.parse_args(argv)
    result = run(args.work, args.size, args.clients, args.seconds, args.max_requests, args.think, faces=args.faces)
    print(json.dumps(result, indent=1, default=float))
    return 0 if result["load"]["errors"] == 0 and result["scan"]["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
