"""The training commands of the `discoseg` command line, one subcommand per task
(`service.cli` adds the service's); `python -m training.cli` runs them alone, e.g. under
torchrun."""

from collections.abc import Callable

import typer

from training.evaluate_command import evaluate
from training.export_command import export
from training.import_command import import_labels
from training.make_data_command import make_data
from training.predict_command import predict
from training.proposals_command import proposals
from training.train_command import train_command

COMMANDS: dict[str, Callable[..., None]] = {
    "make-data": make_data,
    "train": train_command,
    "predict": predict,
    "evaluate": evaluate,
    "proposals": proposals,
    "export": export,
    "import": import_labels,
}


def command_line(commands: dict[str, Callable[..., None]]) -> typer.Typer:
    """The `discoseg` Typer app with these subcommands, in this order."""
    app = typer.Typer(
        name="discoseg",
        help="Weakly supervised instance segmentation: learn instance masks from tags or boxes.",
        no_args_is_help=True,
        add_completion=False,
    )

    @app.callback()
    def main() -> None:
        """discoseg: learn annotation consistent instances from image tags or boxes."""

    for name, command in commands.items():
        app.command(name)(command)
    return app


app = command_line(COMMANDS)

if __name__ == "__main__":
    app()
