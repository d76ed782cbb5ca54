"""The UNet configurations of the three families, for building full-size UNets with no weights (tests count
the adapted layers on the meta device; the bench times random ones)."""

# SD v1.4's UNet (CompVis/stable-diffusion-v1-4 unet/config.json), for building it with no weights.
SD14_UNET_CONFIG: dict = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# SD 2.1's UNet (stabilityai/stable-diffusion-2-1 unet/config.json): 1024-dim OpenCLIP context, linear proj_in /
# proj_out, per-block head counts, 96x96 latents (768 px).
SD21_UNET_CONFIG: dict = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), block_out_channels=(320, 640, 1280, 1280), use_linear_projection=True,
    upcast_attention=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# SDXL base 1.0's UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json): 2048-dim context (768 + 1280),
# 1/2/10 transformer layers per block, "text_time" added conditioning (pooled 1280 + 6 time ids x 256 = 2816).
SDXL_UNET_CONFIG: dict = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280), use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
