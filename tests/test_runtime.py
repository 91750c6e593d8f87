"""The runtime layer: which backend runs the two models, chosen explicitly, by the
environment or by `auto`; a missing backend is a clear error; the whole scan gives the same
faces on every CPU runtime installed here; the GPU path runs everything but the provider."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from bench.harness import run_cli
from gigaface.engine import runtime
from gigaface.engine.detector import CenterFace
from gigaface.engine.runtime import Runtime, choose
from gigaface.errors import GigafaceError
from gigaface.library.store import Library
from tests.helpers import crowd, write_image

ORT = Runtime("onnxruntime", "cpu", "f32")
needs_openvino = pytest.mark.skipif(not runtime.openvino_available(), reason="OpenVINO is not installed here")


@pytest.fixture
def no_environment(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)


@pytest.fixture
def without_openvino(monkeypatch):
    """This process as if OpenVINO were not installed (an ARM board without its wheel)."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    for cached in (runtime.openvino_available, runtime.cpu_has_bf16, runtime._openvino_core):
        cached.cache_clear()
    yield
    for cached in (runtime.openvino_available, runtime.cpu_has_bf16, runtime._openvino_core):
        cached.cache_clear()


def test_an_explicit_runtime_is_what_runs(no_environment):
    assert choose("onnxruntime") == ORT
    assert choose("ONNXRuntime ", "f32") == ORT


@needs_openvino
def test_openvino_computes_in_f32_unless_bf16_is_asked_for(no_environment):
    """bf16 boxes cost recognition of 24-px faces (bench/report.md), so only on request, and
    only on a CPU that has it; the descriptor stays f32 either way."""
    assert choose("openvino") == Runtime("openvino", "cpu", "f32")
    if runtime.cpu_has_bf16():
        asked = choose("openvino", "bf16")
        assert asked.precision == "bf16" and asked.for_templates().precision == "f32"
    else:
        with pytest.raises(GigafaceError, match="no bfloat16"):
            choose("openvino", "bf16")


def test_the_environment_chooses_when_no_option_does(monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "onnxruntime")
    assert choose() == ORT
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tensorflow")
    with pytest.raises(GigafaceError, match="unknown runtime 'tensorflow'"):
        choose()
    assert choose("onnxruntime") == ORT  # an option outranks the environment


def test_bad_choices_are_one_clear_error(no_environment):
    with pytest.raises(GigafaceError, match="unknown precision"):
        choose("auto", "fp8")
    with pytest.raises(GigafaceError, match="openvino runtime only"):
        choose("onnxruntime", "bf16")


def test_auto_prefers_cuda_then_openvino(no_environment, monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    assert choose() == Runtime("onnxruntime", "cuda", "f32")
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert choose().backend == ("openvino" if runtime.openvino_available() else "onnxruntime")


def test_a_missing_backend_is_a_clear_error(no_environment, without_openvino):
    with pytest.raises(GigafaceError, match="openvino runtime is not installed"):
        choose("openvino")
    assert choose() == ORT  # auto falls back to what is there


def test_the_gpu_path_runs_all_but_the_provider(tmp_path):
    """With CUDA, two lanes share one session and take batches of tiles; here onnxruntime
    falls back to its CPU provider, so everything else of that path runs and must give the
    CPU path's detections."""
    image = crowd(1400, 700, [(200, 200, 60), (700, 350, 40), (1200, 500, 90)], seed=3)
    tiles = np.stack([image[:640, :640], image[60:700, 700:1340], image[:640, 300:940]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDAExecutionProvider is not in available provider names"
        gpu = CenterFace(runtime=Runtime("onnxruntime", "cuda", "f32"))
    assert gpu.batch > 1 and len(gpu.streams) == 2
    cpu = CenterFace(runtime=ORT)
    for a, b in zip(gpu.detect(tiles), cpu.detect(tiles)):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)


def _faces(db) -> tuple[np.ndarray, np.ndarray]:
    library = Library(str(db))
    faces = library.faces.all(1)
    ids, vectors = library.faces.embeddings([1])
    order = np.argsort(ids)
    return np.array([f.box for f in sorted(faces, key=lambda f: f.id)]), vectors[order]


@needs_openvino
def test_every_cpu_runtime_scans_the_same_faces(tmp_path):
    """The whole pipeline, once per installed CPU runtime: the same faces, boxes within a
    pixel, templates within the runtime's precision; the summary says which one ran."""
    image = write_image(tmp_path / "crowd.jpg", crowd(1600, 900, [(150 + 260 * i, 250 + 300 * (i % 2), 40 + 12 * i)
                                                                     for i in range(6)], seed=5))
    results = {}
    asked = [("onnxruntime", "f32"), ("openvino", "f32")] + ([("openvino", "bf16")] if runtime.cpu_has_bf16() else [])
    for name, precision in asked:
        db = tmp_path / f"{name}-{precision}.db"
        done = run_cli("scan", image, "--db", db, "--json", "--runtime", name, "--precision", precision)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)[0]
        assert summary["runtime"] == choose(name, precision).to_dict()
        results[(name, precision)] = _faces(db)
    boxes, vectors = results[("onnxruntime", "f32")]
    assert len(boxes) == 6 and len(vectors) == 6
    for (name, precision), (b, v) in results.items():
        assert b.shape == boxes.shape and np.abs(b - boxes).max() < 1.0, (name, precision)
        # f32 graphs agree to rounding, and the library stores templates in float16 (~1e-4 a
        # vector). In bf16 a box moves by a fraction of a pixel, and the landmark search
        # starts from the rounded box: a template moves up to ~0.1, far inside the 0.6
        # between two photos of one person (bench/report.md: identity).
        tolerance = 2e-3 if choose(name, precision).precision == "f32" else 0.15
        assert np.linalg.norm(v - vectors, axis=1).max() < tolerance, (name, precision)


def test_doctor_and_version_say_what_runs(monkeypatch):
    done = run_cli("doctor", "--json", "--runtime", "onnxruntime")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["chosen"] == ORT.to_dict() and "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert info["auto"] == str(choose())
    version = run_cli("--version")
    assert version.returncode == 0 and str(choose()) in version.stdout
    bad = run_cli("scan", "x.jpg", "--db", "x.db", "--runtime", "tensorflow")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "gigaface: error: unknown runtime 'tensorflow'; choose one of auto, onnxruntime, openvino")


@needs_openvino
def test_openvino_reports_nothing_to_anyone(tmp_path):
    """OpenVINO's model converter starts its telemetry (a client id under ~/intel, usage sent
    to a third party); gigaface hands it graphs without the converter."""
    code = ("from gigaface.engine.runtime import choose; from gigaface.engine.detector import CenterFace;"
            "from gigaface.engine.embedder import Descriptor; import numpy as np;"
            "r = choose('openvino'); CenterFace(runtime=r).detect(np.zeros((1, 640, 640, 3), np.uint8));"
            "Descriptor(r).embed(np.zeros((1, 150, 150, 3), np.uint8))")
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "intel").exists()
