"""``python -m projects.drdf fit|validate|test|predict --config projects/drdf/configs/toy.yaml``."""

from projects.drdf.data import DRDFDataModule
from projects.drdf.module import DRDFModule
from shared.cli import main


def run(args: list[str] | None = None):
    return main(DRDFModule, DRDFDataModule, project="drdf", args=args)


if __name__ == "__main__":
    run()
