"""``python -m projects.spm generate|evaluate ...`` (SPM's own CLIs) or ``fit|validate|test ...`` (training through
the shared Lightning CLI). SPM's prediction is generation: ``predict`` says so and exits."""

import sys

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "generate":
        from projects.spm.generate import main as generate_main

        generate_main(sys.argv[2:])
    elif command == "evaluate":
        from projects.spm.evaluate import main as evaluate_main

        evaluate_main(sys.argv[2:])
    elif command == "predict":
        sys.stderr.write("SPM predicts images from prompts: use `python -m projects.spm generate --base_model <folder> "
                         "--spm <file.safetensors> --prompts ... --out <folder>` (see projects/spm/README.md, "
                         "Generation)\n")
        sys.exit(2)
    else:
        from projects.spm.data import SPMStepData
        from projects.spm.module import SPMModule
        from shared.cli import main

        main(SPMModule, SPMStepData, project="spm")
