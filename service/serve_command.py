"""`discoseg serve`: load a model bundle once and serve the HTTP API with uvicorn."""

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model bundle to serve (default: DISCOSEG_MODEL_PATH)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu or cuda (default: DISCOSEG_DEVICE, else auto)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve /v1/segment, /v1/pseudo-labels, /v1/models, probes, /metrics and /docs.

    Other settings come from DISCOSEG_* environment variables. For several worker processes
    run `uvicorn --factory service.main:create_app --workers N` instead (each loads the model).
    """
    # Imported here so that other subcommands do not pay for torch and the web stack.
    import uvicorn

    from models.bundle import BundleError
    from models.devices import DeviceError
    from service.core.config import InvalidSettings, load_settings
    from service.core.log_config import serve_log_config
    from service.main import create_app
    from service.runtime import ModelRuntime
    from training.errors import fail

    overrides: dict[str, object] = {}
    if model is not None:
        overrides["model_path"] = model
    if device is not None:
        overrides["device"] = device
    try:
        settings = load_settings(**overrides)
        runtime = ModelRuntime.load(settings)
    except (InvalidSettings, FileNotFoundError, BundleError, DeviceError) as error:
        fail(str(error))
    typer.echo(f"serving {runtime.version} on {runtime.device} at http://{host}:{port}")
    uvicorn.run(
        lambda: create_app(settings, runtime=runtime),
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        log_config=serve_log_config(log_level),
    )
    runtime.close()
