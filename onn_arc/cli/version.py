from onn_arc import __version__
from onn_arc.cli.app import app
from onn_arc.cli.common import out


@app.command()
def version() -> None:
    """Print the onn-arc version."""
    out.print(__version__)
