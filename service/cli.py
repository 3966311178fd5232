"""The `discoseg` command line: training's commands, then the service's `worker` and `serve`."""

from service.serve_command import serve
from service.worker_command import worker
from training.cli import COMMANDS, command_line

app = command_line({**COMMANDS, "worker": worker, "serve": serve})

if __name__ == "__main__":
    app()
