"""`python -m portal`: the same as the `portal` console script."""

from portal.cli import app

if __name__ == "__main__":
    app(prog_name="portal")
