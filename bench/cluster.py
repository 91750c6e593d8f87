"""Scans on a Ray cluster of this machine's cores: throughput on one and two nodes, Ray's
overhead against a local scan on the same cores, the driver's own rates (JPEG decode,
object store, conversion to a tiled TIFF, SQLite), and from those a projection of how many
workers one driver feeds.

    python -m bench --sections cluster                    # a 25-MP mosaic (74 s on 2 cores, measured)
    python -m bench --sections cluster --cluster-size 100

The clusters are bench.harness.RayCluster: nodes of one CPU each, started and stopped by
this run. No GPU was lent to the session that wrote this: GPU slots are projected from an
assumed rate, marked as such.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import RayCluster, run_cli
from bench.mosaic import build_mosaic
from gigaface.engine.detect import count_tiles, read_pass
from gigaface.engine.frames import Frame
from gigaface.engine.plan import plan_passes, settings_for
from gigaface.engine.source import probe

PROJECTED_MP = 500
CAPTURES_A_DAY = 1000
ASSUMED_GPU_TILES_PER_S = (100, 300, 1000)  # not measured here: no GPU was lent
BAND_ROWS = 640
IN_FLIGHT = 4  # bands travelling at once in the object store measurement
RAW_PER_FACE = 3  # assumed: one raw detection per pass whose size range holds the face


def run(work: Path, size: float = 25, log=print) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        from .data import MissingData

        raise MissingData("Ray is not installed: pip install 'gigaface[ray]'") from None
    mosaic = build_mosaic(work / f"mosaic-{size:g}mp", megapixels=size)
    log(f"mosaic {mosaic.width}x{mosaic.height}")
    # The mosaic's own TIFF has JPEG tiles; a lossless tiled copy is what a conversion of
    # the JPEG would give workers (the conversion is timed below).
    tiled = work / f"mosaic-{size:g}mp" / "mosaic-tiled.tif"
    convert_s = _convert(mosaic.jpeg, tiled)
    rows = [_scan("local scan, 2 cores", mosaic.jpeg, None, work, log)]
    with RayCluster([{"cpus": 1}]) as one:
        rows += [_scan("cluster: 1 node x 1 CPU, JPEG (bands shipped)", mosaic.jpeg, one.address, work, log),
                 _scan("cluster: 1 node x 1 CPU, tiled TIFF (read by workers)", tiled, one.address, work, log)]
    with RayCluster([{"cpus": 1}, {"cpus": 1}]) as two:
        rows += [_scan("cluster: 2 nodes x 1 CPU, JPEG (bands shipped)", mosaic.jpeg, two.address, work, log),
                 _scan("cluster: 2 nodes x 1 CPU, tiled TIFF (read by workers)", tiled, two.address, work, log)]
        store = _object_store(two.address, mosaic.width, log)
    driver = {"decode": _decode(mosaic.jpeg), "convert_s": round(convert_s, 2),
              "convert_mp_per_s": round(mosaic.width * mosaic.height / 1e6 / convert_s, 1),
              "tiled_mb": round(tiled.stat().st_size / 1e6, 1), "jpeg_mb": round(mosaic.jpeg.stat().st_size / 1e6, 1),
              "sqlite": _sqlite(work), "store": store}
    log(f"driver: {json.dumps(driver)}")
    tiled.unlink(missing_ok=True)
    return {"mosaic": {"size": f"{mosaic.width}x{mosaic.height}", "megapixels": round(mosaic.width * mosaic.height / 1e6, 1)},
            "rows": rows, "driver": driver, "projection": project(rows, driver, mosaic.width * mosaic.height)}


def _scan(name: str, image: Path, address: str | None, work: Path, log) -> dict:
    db = Path(tempfile.mkdtemp(dir=work, prefix="cluster-")) / "lib.db"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = run_cli("scan", image, "--db", db, "--json", "--quiet", *(["--cluster", address] if address else []),
                   timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr}")
    (s,) = json.loads(done.stdout)
    megapixels = s["width"] * s["height"] / 1e6
    row = {"name": name, "wall_s": round(wall, 1), "scan_s": s["seconds"], "detect_s": s["detect_seconds"],
           "describe_s": s["describe_seconds"], "tiles": s["tiles"], "faces": s["faces"], "embedded": s["embedded"],
           "mp_per_s": round(megapixels / max(s["seconds"], 1e-9), 2),
           "detect_mp_per_s": round(megapixels / max(s["detect_seconds"], 1e-9), 2),
           "slots": s.get("cluster", {}).get("workers", 0), "load": round(load, 2), "stored": s["stored"],
           "megapixels": round(megapixels, 1)}
    log(f"{name}: {row}")
    return row


def _convert(jpeg: Path, out: Path) -> float:
    """JPEG to a lossless tiled TIFF (what workers could read at random), timed."""
    import pyvips

    start = time.perf_counter()
    pyvips.Image.new_from_file(str(jpeg), access="sequential").tiffsave(
        str(out), tile=True, tile_width=512, tile_height=512, compression="none", bigtiff=True)
    return time.perf_counter() - start


def _decode(jpeg: Path) -> dict:
    """The driver decoding a JPEG's bands for shipping, one thread, for each pass of `balanced`."""
    settings = settings_for("balanced")
    info = probe(str(jpeg))
    out = []
    for p in plan_passes(info.width, info.height, settings):
        grid, units = read_pass(info, p, prefetch=False)
        start, nbytes = time.perf_counter(), 0
        for unit in units:
            nbytes += unit.band.pixels.nbytes
        seconds = time.perf_counter() - start
        out.append({"scale": p.scale, "upscale_tiles": p.upscale_tiles, "bytes": nbytes, "seconds": round(seconds, 3),
                    "mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 1),
                    "source_mp_per_s": round(info.width * info.height / 1e6 / max(seconds, 1e-9), 1)})
    return {"passes": out, "load": round(os.getloadavg()[0], 2)}


def _object_store(address: str, width: int, log) -> dict:
    """ray.put of bands of the mosaic's width from this driver, and their trip to an actor on
    this node and on the other one (the same machine: the other node's copy goes over this
    machine's own address, not a network)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        class Touch:  # defined here, so Ray ships it by value: workers need not import bench
            def size(self, band) -> int:
                return int(band.nbytes) + int(band[::4096].sum() * 0)

        here = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here)
        band = np.random.default_rng(0).integers(0, 255, (BAND_ROWS, width, 3), np.uint8)
        repeats = 20
        # A few bands in flight at a time, as the pool keeps them: more would fill the small
        # object store, and Ray would then allocate beside it (on disk, unless the fallback
        # directory is in RAM).
        start = time.perf_counter()
        for _ in range(repeats):
            ref = ray.put(band)
            del ref
        put_s = time.perf_counter() - start
        result = {"band_mb": round(band.nbytes / 1e6, 1), "put_mb_per_s": round(band.nbytes * repeats / 1e6 / put_s, 1)}
        for where, node in (("same_node", here), ("other_node", other)):
            actor = ray.remote(Touch).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            ray.get(actor.size.remote(band))  # started
            start = time.perf_counter()
            pending = []
            for _ in range(repeats):
                pending.append(actor.size.remote(ray.put(band)))
                if len(pending) >= IN_FLIGHT:
                    ray.get(pending.pop(0))
            ray.get(pending)
            seconds = time.perf_counter() - start
            result[f"{where}_mb_per_s"] = round(band.nbytes * repeats / 1e6 / seconds, 1)
            ray.kill(actor)
        result["load"] = round(os.getloadavg()[0], 2)
        log(f"object store: {result}")
        return result
    finally:
        ray.shutdown()


def _sqlite(work: Path) -> dict:
    """The driver's writes as a scan makes them: bands of detections, batches of described faces."""
    from gigaface.engine.detections import Detections
    from gigaface.engine.frames import Frame as F
    from gigaface.library.store import Library

    folder = Path(tempfile.mkdtemp(dir=work, prefix="sqlite-"))
    library = Library(str(folder / "lib.db"), create=True)
    frames = [F(str(folder / "x.jpg"), 0, 0, 100_000, 100_000)]
    capture = library.captures.create("k" * 64, str(folder / "x.jpg"), "image", 100_000, 100_000, frames,
                                      settings_for("balanced").to_dict())
    rng = np.random.default_rng(0)
    per_band, bands = 200, 100
    xy = rng.uniform(0, 90_000, (per_band, 2)).astype(np.float32)
    dets = Detections(np.hstack([xy, xy + 30]).astype(np.float32), rng.uniform(0.2, 1, per_band).astype(np.float32),
                      rng.uniform(0, 90_000, (per_band, 5, 2)).astype(np.float32))
    start = time.perf_counter()
    for band in range(bands):
        library.captures.finish_band(capture.id, 0, 0, band, dets)
    detect_s = time.perf_counter() - start
    frame_of, merged = library.captures.detections(capture.id)
    library.faces.replace(capture.id, frame_of[:2000], merged.select(np.arange(2000)), np.ones(2000, bool))
    pending = library.faces.undescribed(capture.id)
    crop = bytes(4000)
    start = time.perf_counter()
    for at in range(0, len(pending), 32):
        batch = pending[at : at + 32]
        library.faces.save_descriptions([(f.id, {"size": 30.0, "sharpness": 1.0, "frontalness": 1.0},
                                          rng.normal(size=128).astype(np.float32), crop) for f in batch])
    describe_s = time.perf_counter() - start
    library.close()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return {"detections_per_s": round(per_band * bands / detect_s), "bands_per_s": round(bands / detect_s, 1),
            "faces_per_s": round(len(pending) / describe_s), "load": round(os.getloadavg()[0], 2)}


def project(rows: list[dict], driver: dict, pixels: int) -> dict:
    """From the measured rates: the driver's seconds and the workers' seconds for one
    PROJECTED_MP capture, so how many workers one driver keeps busy, and for a day."""
    settings = settings_for("balanced")
    width = int(round((PROJECTED_MP * 1e6 * 2.5) ** 0.5))
    height = int(round(PROJECTED_MP * 1e6 / width))
    tiles = count_tiles([Frame("projected", 0, 0, width, height)], settings)
    one_slot = next(r for r in rows if r["name"].startswith("cluster: 1 node") and "TIFF" in r["name"])
    slot_tiles_per_s = one_slot["tiles"] / max(one_slot["detect_s"], 1e-9)
    slot_faces_per_s = one_slot["embedded"] / max(one_slot["describe_s"], 1e-9)
    scale = PROJECTED_MP * 1e6 / pixels  # the mosaic's crowd density, at 500 MP
    faces = one_slot["faces"] * scale
    # Raw detections are gone once merged; a stored face is seen by about RAW_PER_FACE passes.
    detections = one_slot["stored"] * scale * RAW_PER_FACE
    # What the driver decodes and ships for a JPEG: every pass's bands, at each pass's measured rate.
    decode_s = ship_mb = 0.0
    for p in driver["decode"]["passes"]:
        mb = p["bytes"] / 1e6 * scale
        decode_s += mb / max(p["mb_per_s"], 1e-9)
        ship_mb += mb
    native = next(p for p in driver["decode"]["passes"] if p["scale"] == 1.0 and not p["upscale_tiles"])
    describe_read_s = native["bytes"] / 1e6 * scale / max(native["mb_per_s"], 1e-9)  # the describe stage reads it once more
    store_s = ship_mb / max(driver["store"]["put_mb_per_s"], 1e-9)
    sqlite_s = detections / driver["sqlite"]["detections_per_s"] + faces / driver["sqlite"]["faces_per_s"]
    detect_work_s = tiles / slot_tiles_per_s
    describe_work_s = faces / max(slot_faces_per_s, 1e-9)
    jpeg_driver_s = decode_s + store_s + describe_read_s + sqlite_s
    tiff_driver_s = describe_read_s + sqlite_s  # workers read their own bands
    work_s = detect_work_s + describe_work_s
    day = 86_400
    return {
        "megapixels": PROJECTED_MP, "size": f"{width}x{height}", "tiles": tiles, "faces": round(faces),
        "detections": round(detections), "slot_tiles_per_s": round(slot_tiles_per_s, 2),
        "slot_faces_per_s": round(slot_faces_per_s, 1), "driver_decode_s": round(decode_s, 1),
        "driver_store_s": round(store_s, 1), "driver_describe_read_s": round(describe_read_s, 1),
        "driver_sqlite_s": round(sqlite_s, 1), "driver_jpeg_s": round(jpeg_driver_s, 1),
        "driver_tiff_s": round(tiff_driver_s, 1), "cpu_slot_s": round(work_s, 1),
        "cpu_slots_fed_jpeg": int(work_s / jpeg_driver_s), "cpu_slots_fed_tiff": int(work_s / tiff_driver_s),
        # A GPU slot detects at an assumed rate and describes as a CPU slot does (dlib's landmarks run on the CPU).
        "gpu": [{"tiles_per_s": r, "gpu_slot_detect_s": round(tiles / r, 1),
                 "gpus_fed_jpeg": round(tiles / r / jpeg_driver_s, 2), "gpus_fed_tiff": round(tiles / r / tiff_driver_s, 2)}
                for r in ASSUMED_GPU_TILES_PER_S],
        "day": {"captures": CAPTURES_A_DAY, "cpu_slots_needed": int(np.ceil(CAPTURES_A_DAY * work_s / day)),
                "drivers_needed_jpeg": int(np.ceil(CAPTURES_A_DAY * jpeg_driver_s / day)),
                "captures_per_driver_jpeg": int(day / jpeg_driver_s), "captures_per_driver_tiff": int(day / tiff_driver_s)},
    }


def markdown(section: dict) -> str:
    m, d, p = section["mosaic"], section["driver"], section["projection"]
    lines = [f"A {m['size']} ({m['megapixels']} MP) mosaic of WIDER crowds, `--preset balanced`, the real CLI. "
             "Nodes are `ray start` processes of one CPU each on this 2-core machine (bench.harness.RayCluster); "
             "the driver (the `gigaface scan --cluster` process) runs beside them, so a 1-node cluster uses the "
             "machine's second core for the driver's decoding. *wall* includes starting Python, joining the "
             "cluster and loading the models on every slot; *scan* is the capture's own time. Load is the "
             "1-minute load average when the row started (the machine is shared).\n",
             "| run | slots | wall s | scan s | detect s | describe s | MP/s (scan) | MP/s (detect) | faces | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        lines.append(f"| {r['name']} | {r['slots'] or '–'} | {r['wall_s']} | {r['scan_s']} | {r['detect_s']} | "
                     f"{r['describe_s']} | {r['mp_per_s']} | {r['detect_mp_per_s']} | {r['faces']:,} | {r['load']} |")
    local = section["rows"][0]
    two = [r for r in section["rows"] if r["name"].startswith("cluster: 2 nodes")]
    if two:
        best = min(two, key=lambda r: r["scan_s"])
        lines.append(f"\nRay's overhead on the same two cores: the best 2-node scan takes "
                     f"x{best['scan_s'] / max(local['scan_s'], 1e-9):.2f} the local scan's time "
                     f"(x{best['wall_s'] / max(local['wall_s'], 1e-9):.2f} wall, start-up included). On this "
                     "2-core machine a second node's slot shares the cores with the driver (which decodes, reads "
                     "face regions and commits) and Ray's own processes, so two nodes cannot beat one here; the "
                     "projection below uses the rate of one slot, measured with the driver on the other core.\n")
    for label in ("1 node", "2 nodes"):
        jpeg = next((r for r in section["rows"] if r["name"].startswith(f"cluster: {label}") and "JPEG" in r["name"]), None)
        tiff = next((r for r in section["rows"] if r["name"].startswith(f"cluster: {label}") and "TIFF" in r["name"]), None)
        if jpeg and tiff:
            lines.append(f"- {label}: the JPEG with its bands shipped by the driver, {jpeg['scan_s']} s; converted "
                         f"to a tiled TIFF first and read by the workers, {d['convert_s']} + {tiff['scan_s']} = "
                         f"{d['convert_s'] + tiff['scan_s']:.2f} s.")
    s = d["store"]
    lines += ["", "### The driver's rates (one core)\n",
              "| what | rate |", "|---|---|"]
    for q in d["decode"]["passes"]:
        kind = "2x pass, native rows" if q["upscale_tiles"] else f"pass at scale {q['scale']:g}"
        lines.append(f"| JPEG decode into bands, {kind} | {q['mb_per_s']:,} MB/s of RGB "
                     f"({q['source_mp_per_s']:,} source MP/s) |")
    lines += [f"| conversion JPEG -> lossless tiled TIFF | {d['convert_s']} s ({d['convert_mp_per_s']} MP/s; "
              f"{d['jpeg_mb']} MB -> {d['tiled_mb']} MB) |",
              f"| ray.put of a {s['band_mb']} MB band | {s['put_mb_per_s']:,} MB/s |",
              f"| band to an actor on the driver's node | {s['same_node_mb_per_s']:,} MB/s |",
              f"| band to an actor on the other node (same machine) | {s['other_node_mb_per_s']:,} MB/s |",
              f"| SQLite: detections committed by band (200 a band) | {d['sqlite']['detections_per_s']:,}/s |",
              f"| SQLite: faces described, committed by 32 (sealed embedding + crop) | {d['sqlite']['faces_per_s']:,}/s |",
              ""]
    lines += [f"### Projection: one driver, a {p['megapixels']}-MP capture ({p['size']}), and a day of "
              f"{section['projection']['day']['captures']:,}\n",
              f"At the mosaic's density: {p['tiles']:,} tiles, {p['faces']:,} listed faces, about {p['detections']:,} "
              f"raw detections ({RAW_PER_FACE} a stored face, assumed). One CPU slot (measured, 1-node TIFF run): {p['slot_tiles_per_s']} tiles/s, "
              f"{p['slot_faces_per_s']} faces described/s, so **{p['cpu_slot_s']:,} slot-seconds** a capture.\n",
              "| driver's seconds a capture | JPEG (bands shipped) | TIFF (workers read) |", "|---|---|---|",
              f"| decode bands | {p['driver_decode_s']} | 0 |",
              f"| put into the object store | {p['driver_store_s']} | 0 |",
              f"| read face regions (describe) | {p['driver_describe_read_s']} | {p['driver_describe_read_s']} |",
              f"| SQLite commits | {p['driver_sqlite_s']} | {p['driver_sqlite_s']} |",
              f"| **total** | **{p['driver_jpeg_s']}** | **{p['driver_tiff_s']}** |", "",
              f"So one driver keeps about **{p['cpu_slots_fed_jpeg']:,} CPU slots** busy on JPEG captures and "
              f"**{p['cpu_slots_fed_tiff']:,}** on tiled TIFFs, beyond which the driver's decoding (JPEG) or its "
              "reads for the describe stage and SQLite (TIFF) are the limit. A day of "
              f"{p['day']['captures']:,} such captures needs {p['day']['cpu_slots_needed']:,} CPU slots busy all day; "
              f"one driver gets through {p['day']['captures_per_driver_jpeg']:,} JPEG captures a day "
              f"({p['day']['captures_per_driver_tiff']:,} TIFF), so {p['day']['drivers_needed_jpeg']} driver(s) "
              "for JPEGs (more drivers are more `gigaface scan --cluster` processes: each capture has one "
              "writer, and several may share a library).\n",
              "GPU slots, **not measured (no GPU was lent to this session)**: at an assumed detection rate per GPU "
              "(detection only; the describe stage's slot-seconds come on top):\n",
              "| assumed tiles/s a GPU | GPU-seconds to detect a capture | GPUs one driver feeds (JPEG) | (TIFF) |",
              "|---|---|---|---|"]
    for g in p["gpu"]:
        lines.append(f"| {g['tiles_per_s']} | {g['gpu_slot_detect_s']} | {g['gpus_fed_jpeg']} | {g['gpus_fed_tiff']} |")
    return "\n".join(lines) + "\n"
