"""`python -m linking serve|migrate|asyncapi`."""

from contracts.kit.service import main
from linking import app


def run() -> None:
    """Console entry point."""
    main(app)


if __name__ == "__main__":
    run()
