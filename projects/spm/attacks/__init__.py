"""Does an erased concept come back? Three standard attacks on SPMs and their attack success rate (ASR).

``python -m projects.spm attack`` (:mod:`projects.spm.tools.attack`). ``target``: the erased model at the strength
an attacked prompt receives; ``text``: prompts with attack slots, encoded with gradients; ``soft_prompt``
(UnlearnDiffAtk), ``inversion`` (concept inversion), ``ring_a_bell`` (Ring-A-Bell); ``judges``: which images show
the concept.
"""
