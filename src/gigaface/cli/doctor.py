"""`gigaface doctor`: what this machine runs the models on, and why."""
from __future__ import annotations

import json
import os

import typer

from gigaface.cli.console import out
from gigaface.cli.options import use_runtime


def doctor(
    runtime: str = typer.Option(None, "--runtime", help="Check this runtime instead of auto: onnxruntime or openvino."),
    precision: str = typer.Option(None, "--precision", help="Check this precision: f32 or bf16."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Show the inference runtimes installed, what --runtime auto picks here, and the models' files."""
    from gigaface import __version__
    from gigaface.engine import describe
    from gigaface.engine.detector import model_path
    from gigaface.engine.runtime import describe_machine

    chosen = use_runtime(runtime, precision)
    info = {"gigaface": __version__, **describe_machine(), "chosen": chosen.to_dict(),
            "models": {"detector": model_path(),
                       "descriptor": describe.model_file("dlib_face_recognition_resnet_model_v1.dat"),
                       "landmarks": describe.model_file("shape_predictor_5_face_landmarks.dat")}}
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"gigaface {info['gigaface']}")
    out.print(f"onnxruntime {info['onnxruntime']}: {', '.join(info['onnxruntime_providers'])}")
    out.print(f"openvino {info['openvino'] or 'not installed'}"
              + (f": {info.get('cpu', 'CPU')}, bfloat16 {'yes' if info['cpu_bf16'] else 'no'}" if info["openvino"] else ""))
    out.print(f"cores: {os.cpu_count()}")
    out.print(f"runtime: {chosen} (auto picks {info['auto']})")
    for name, path in info["models"].items():
        out.print(f"{name} model: {path}")
