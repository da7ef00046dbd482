"""Stable Diffusion (diffusers' Flax classes) as a model for the OLSS verbs.

Modules: `noise_config` (the scheduler config: alpha_bar, prediction type, offsets),
`model` (the `StableDiffusion` pytree container), `loading` (from a local directory), `text`
(prompts to embeddings), `denoiser` (classifier-free guidance in epsilon), `generate`
(prompts to images under jit), `provenance` (what a schedule was fitted for, mismatch
checks) and `collect` (the teacher on prompts, and the fit).
"""
