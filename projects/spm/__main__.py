from projects.spm.data import SPMStepData
from projects.spm.module import SPMModule
from shared.cli import main

if __name__ == "__main__":
    main(SPMModule, SPMStepData, project="spm")
