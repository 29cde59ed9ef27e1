"""`aae-web`: serving the browser demo, the web package and built model folders."""

from .server import (
    AccessLog,
    AccessLogEntry,
    RunningServer,
    add_serve_arguments,
    create_app,
    list_models,
    main,
    run_from_args,
    safe_join,
    serve,
    start_server,
)

__all__ = [
    "AccessLog",
    "AccessLogEntry",
    "RunningServer",
    "add_serve_arguments",
    "create_app",
    "list_models",
    "main",
    "run_from_args",
    "safe_join",
    "serve",
    "start_server",
]
