"""The `discoseg` command line: one Typer app, one subcommand per task."""

import typer

app = typer.Typer(
    name="discoseg",
    help="Weakly supervised instance segmentation: learn instance masks from tags or boxes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """discoseg: learn annotation consistent instances from image tags or boxes."""


if __name__ == "__main__":
    app()
