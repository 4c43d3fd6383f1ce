"""``spinegrade serve``: grade studies over HTTP (an upload page and a JSON API).

The model is loaded once: by default from the workspace's DVC outputs (models/,
localizers/, data/compare-backbones/choice.json, data/ingest/labels.csv: what `make repro`
made), or with ``--model models:/spinegrade-study@champion`` from the MLflow registry (the
store MLFLOW_TRACKING_URI names, else the workspace's). It grades on params.yaml's
``engine.device`` and ``engine.precision``, so the same service uses a GPU where there is
one.

Safe defaults: it binds 127.0.0.1. Binding any other address needs a token (``--token``,
or SPINEGRADE_TOKEN, which keeps it out of the process list: every route but /health then
needs ``Authorization: Bearer <token>``; the upload page takes it once as
``/?token=...``) or an explicit ``--insecure``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from spinegrade.core.entry import run, setup_logging
from spinegrade.core.errors import ConfigError
from spinegrade.inference.files import BundleFiles

EPILOG = """\
examples:
  spinegrade serve                                   # http://127.0.0.1:8000/
  spinegrade serve --model models:/spinegrade-study@champion --port 9000
  SPINEGRADE_TOKEN=$(openssl rand -hex 16) spinegrade serve --host 0.0.0.0
  curl -F study=@study.zip http://127.0.0.1:8000/v1/grade"""

WORKSPACE = "workspace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=WORKSPACE,
        help="'workspace' (the DVC outputs here, default) or an MLflow model URI, e.g. "
        "models:/spinegrade-study@champion",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="engine (and, for the workspace model, train-per-condition and crop-rois) from here",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        default=os.environ.get("SPINEGRADE_TOKEN"),
        help="bearer token every route but /health requires (default $SPINEGRADE_TOKEN)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without a token (anyone who reaches it may use it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes unpacking and routing uploads while the model grades, one study at "
        "a time (default: the cores / engine.threads, at least 1)",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=4,
        help="requests that may wait beyond --workers (503 beyond)",
    )
    parser.add_argument(
        "--max-upload-mb", type=int, default=512, help="largest upload (413 beyond), MB"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a non-loopback address without a token or --insecure.

    Raises:
        ConfigError: saying what to add.
    """
    if _loopback(host) or token or insecure:
        return
    raise ConfigError(
        f"--host {host} is reachable from other machines: give a token (--token or "
        "SPINEGRADE_TOKEN) or, to serve without one, --insecure"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_of(params_path: str | Path):
    """params.yaml's engine section (the defaults when there is no params file)."""
    from spinegrade.core.config.base import load_sections
    from spinegrade.core.config.engine import EngineConfig

    if Path(params_path).is_file():
        return load_sections(params_path, EngineConfig).engine
    return EngineConfig()


def loader(model: str, params_path: str | Path, engine):
    """A function that loads the study grader (run once, in the background)."""

    def load():
        from spinegrade.core.runtime import set_threads

        set_threads(engine.threads)
        if model == WORKSPACE:
            return workspace_model(params_path, engine)
        return registry_model(model, engine)

    return load


def workspace_model(params_path: str | Path, engine):
    """The study grader from the workspace's DVC outputs."""
    from spinegrade.core.config.base import load_sections
    from spinegrade.core.config.crop_rois import CropConfig
    from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
    from spinegrade.inference.predict import load_bundle
    from spinegrade.tracking.study_model import StudyModel

    loaded = load_sections(params_path, TrainPerConditionConfig, CropConfig)
    sections = SimpleNamespace(  # the loaded sections are frozen: the engine goes beside them
        train_per_condition=loaded.train_per_condition, crop_rois=loaded.crop_rois, engine=engine
    )
    model = StudyModel(engine)
    model.bundle = load_bundle(BundleFiles.workspace(), sections)
    return model


def registry_model(uri: str, engine):
    """The study grader logged as an MLflow model (``models:/...``, ``runs:/...``, a path),
    run on ``engine``."""
    import mlflow

    from spinegrade.tracking.store import setup

    if uri.startswith("models:/"):
        setup(None)  # the workspace's store unless MLFLOW_TRACKING_URI names one
    wrapped = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    wrapped.use_engine(engine)
    return wrapped


def serve(args: argparse.Namespace) -> None:
    """Run the service until Ctrl-C."""
    import uvicorn

    from spinegrade.data.upload import UploadLimits
    from spinegrade.service.app import ServiceSettings, create_app

    check_bind(args.host, args.token, args.insecure)
    if args.workers < 0 or args.queue < 0 or args.max_upload_mb < 1:
        raise ConfigError("--workers and --queue must be >= 0 and --max-upload-mb >= 1")
    if args.model == WORKSPACE and (missing := BundleFiles.workspace().missing()):
        raise ConfigError(
            f"no {', '.join(map(str, missing))} here: run `make repro` first, or serve a "
            "registered model with --model models:/spinegrade-study@champion"
        )
    engine = engine_of(args.params)
    workers = args.workers or max(1, (os.cpu_count() or 1) // max(1, engine.threads))
    settings = ServiceSettings(
        workers=workers,
        queue=args.queue,
        limits=UploadLimits(max_upload_bytes=args.max_upload_mb * 2**20),
        token=args.token or None,
    )
    app = create_app(loader(args.model, args.params, engine), settings, args.model)
    print(f"spinegrade serve: http://{args.host}:{args.port}/ (model {args.model}; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spinegrade serve",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
