from projects.did.data import DiDData
from projects.did.module import DiDModule
from shared.cli import main

if __name__ == "__main__":
    main(DiDModule, DiDData, project="did")
