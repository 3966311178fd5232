"""The `discoseg` command line: one Typer app, one subcommand per task."""

import typer

from service.serve_command import serve
from service.worker_command import worker
from training.evaluate_command import evaluate
from training.export_command import export
from training.import_command import import_labels
from training.make_data_command import make_data
from training.predict_command import predict
from training.proposals_command import proposals
from training.train_command import train_command

app = typer.Typer(
    name="discoseg",
    help="Weakly supervised instance segmentation: learn instance masks from tags or boxes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """discoseg: learn annotation consistent instances from image tags or boxes."""


app.command("make-data")(make_data)
app.command("train")(train_command)
app.command("predict")(predict)
app.command("evaluate")(evaluate)
app.command("proposals")(proposals)
app.command("export")(export)
app.command("import")(import_labels)
app.command("worker")(worker)
app.command("serve")(serve)

if __name__ == "__main__":
    app()
