from projects.rams_trans.data import FGVCDataModule
from projects.rams_trans.module import RAMSTransModule
from shared.cli import main

if __name__ == "__main__":
    main(RAMSTransModule, FGVCDataModule, project="rams_trans")
