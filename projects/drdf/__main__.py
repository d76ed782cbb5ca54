"""``python -m projects.drdf fit|validate|test|predict --config projects/drdf/configs/toy.yaml``."""

from projects.drdf.data import DRDFDataModule
from projects.drdf.module import DRDFModule
from shared.cli import main

if __name__ == "__main__":
    main(DRDFModule, DRDFDataModule, project="drdf")
