"""``python -m projects.rams_trans fit|validate|test|predict --config projects/rams_trans/configs/toy.yaml``."""

from projects.rams_trans.data import FGVCDataModule
from projects.rams_trans.module import RAMSTransModule
from shared.cli import main


def run(args: list[str] | None = None):
    return main(RAMSTransModule, FGVCDataModule, project="rams_trans", args=args)


if __name__ == "__main__":
    run()
