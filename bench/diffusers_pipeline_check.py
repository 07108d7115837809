"""Loads an exported student pipeline folder in diffusers (0.30.3) and compares its one-step output with
`swiftbrush sample`'s, from the same noise and prompt embeddings.

Usage: python bench/diffusers_pipeline_check.py STUDENT_DIR SAMPLE_DIR
SAMPLE_DIR: the output of `swiftbrush sample --unet STUDENT_DIR ...` (images.safetensors with images, noise,
latents) plus SAMPLE_DIR/embeds.safetensors holding `prompt_embeds` [N, L, D] of the sampled prompts in order
(`node --import tsx bench/prompt_embeds.ts F.parquet N SAMPLE_DIR/embeds.safetensors`).
Needs torch, diffusers and transformers (the pipeline module imports it; no text encoder is loaded).
"""
import sys, torch
import safetensors.torch as st  # also makes safetensors.torch visible to diffusers' loader
from diffusers import StableDiffusionPipeline, DDIMScheduler
student, sample_dir = sys.argv[1], sys.argv[2]
ours = st.load_file(f"{sample_dir}/images.safetensors")
emb = st.load_file(f"{sample_dir}/embeds.safetensors")["prompt_embeds"]
pipe = StableDiffusionPipeline.from_pretrained(student, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None)
print("loaded:", {k: type(v).__name__ for k, v in pipe.components.items()})
# One step from t = 999 that returns the x0-prediction: DDIM with trailing spacing and alpha_prod_prev = 1.
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True)
h, w = ours["images"].shape[-2:]
img = pipe(prompt_embeds=emb, latents=ours["noise"], num_inference_steps=1, guidance_scale=0, height=h, width=w, output_type="pt").images
print("pipeline timesteps:", pipe.scheduler.timesteps.tolist())
ref = (ours["images"] + 1) / 2
print("pipe() vs swiftbrush sample: max |diff| in [0,1] pixels =", float((img - ref).abs().max()))
# The same by hand: ε at t = 999, x0 = (z − √(1−ᾱ) ε) / √ᾱ, decode(x0 / scaling_factor).
with torch.no_grad():
    z = ours["noise"]
    eps = pipe.unet(z, torch.full((z.shape[0],), 999), encoder_hidden_states=emb).sample
    a = pipe.scheduler.alphas_cumprod[999]
    x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    print("manual x0 vs swiftbrush latents: max |diff| =", float((x0 - ours["latents"]).abs().max()))
    image = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    print("manual decode vs swiftbrush images: max |diff| =", float((image - ours["images"]).abs().max()))
