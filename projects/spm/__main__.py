"""``python -m projects.spm generate|evaluate|attack ...`` (SPM's own CLIs, ``tools/``) or ``fit|validate|test ...``
(training through the shared Lightning CLI). SPM's prediction is generation: ``predict`` says so and exits."""

import sys

from projects.spm.data import SPMStepData
from projects.spm.module import SPMModule
from projects.spm.tools.attack import main as attack_main
from projects.spm.tools.evaluate import main as evaluate_main
from projects.spm.tools.generate import main as generate_main
from shared.cli import main


def run(args: list[str] | None = None):
    args = sys.argv[1:] if args is None else args
    command = args[0] if args else ""
    if command == "generate":
        return generate_main(args[1:])
    if command == "evaluate":
        return evaluate_main(args[1:])
    if command == "attack":
        return attack_main(args[1:])
    if command == "predict":
        sys.stderr.write("SPM predicts images from prompts: use `python -m projects.spm generate --base_model <folder> "
                         "--spm <file.safetensors> --prompts ... --out <folder>` (see projects/spm/README.md, "
                         "Generation)\n")
        sys.exit(2)
    return main(SPMModule, SPMStepData, project="spm", args=args)


if __name__ == "__main__":
    run()
