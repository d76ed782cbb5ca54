"""``python -m projects.did fit|validate|test|predict --config projects/did/configs/toy.yaml``."""

from projects.did.data import DiDData
from projects.did.module import DiDModule
from shared.cli import main


def run(args: list[str] | None = None):
    return main(DiDModule, DiDData, project="did", args=args)


if __name__ == "__main__":
    run()
