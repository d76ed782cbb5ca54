"""The frozen diffusion model, by role: ``conditioning`` (text states + SDXL's pooled embedding), ``model`` (text
encoders, the UNet call, the VAE decoder), ``ddim`` (noise schedule and DDIM step), ``sampling`` (CFG, the roll-out,
samplers), ``loading`` / ``single_file`` (diffusers folders and single-file checkpoints), ``configs`` (UNet configs)."""
