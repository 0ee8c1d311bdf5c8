"""Tiny random-weight diffusers pipelines, built the way diffusers' own fast tests build theirs, saved with
``save_pretrained`` into folders that look exactly like a user's download (model_index.json, one folder per component,
safetensors weights). tiqo then loads them through its real code. No hub access: the tokenizer is made from a vocab.

``python -m tests.tiny_diffusion DIR [--size N]`` builds them all into DIR (the bench uses a bigger UNet).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

TEXT_TO_IMAGE = "sd-tiny"
INPAINTING = "sd-tiny-inpaint"
TEXT_TO_VIDEO = "t2v-tiny"
IMAGE_TO_VIDEO = "svd-tiny"
ALL = (TEXT_TO_IMAGE, INPAINTING, TEXT_TO_VIDEO, IMAGE_TO_VIDEO)


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    words = ["a", "red", "cat", "dog", "on", "the", "moon", "painting", "of", "blue", "sky", "photo"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for word in words:
        vocab[word + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_encoder(vocab_size: int, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # Four blocks: the latents are 1/8 of the picture like a real SD VAE (two blocks make them 1/2, and slow).
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def stable_diffusion(folder: Path, *, in_channels: int = 4, width: int = 32) -> Path:
    """StableDiffusionPipeline (or the inpainting one, ``in_channels=9``); ``width`` scales the UNet for the bench."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(width, width * 2),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=min(32, width),
    )
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def text_to_video(folder: Path) -> Path:
    import torch
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    pipe = TextToVideoSDPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet, scheduler=_ddim()
    )
    pipe.save_pretrained(folder)
    return folder


def image_to_video(folder: Path) -> Path:
    """Stable Video Diffusion, with the dummy components of diffusers' SVD fast test."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 32, 32, 32],  # it has no norm_num_groups: GroupNorm's 32 groups
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,  # the pipeline resizes a picture to 224 x 224 for its image encoder
        intermediate_size=37,
        patch_size=32,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=CLIPVisionModelWithProjection(vision),
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
    )
    pipe.save_pretrained(folder)
    return folder


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny pipeline under ``root`` (built once: a folder with a model_index.json is reused)."""
    builders = {
        TEXT_TO_IMAGE: stable_diffusion,
        INPAINTING: lambda f: stable_diffusion(f, in_channels=9),
        TEXT_TO_VIDEO: text_to_video,
        IMAGE_TO_VIDEO: image_to_video,
    }
    out = {}
    for name, build in builders.items():
        folder = root / name
        if not (folder / "model_index.json").exists():
            partial = root / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)  # a folder that exists is complete (an interrupted build is redone)
        out[name] = folder
    return out


if __name__ == "__main__":
    print(build_all(Path(sys.argv[1])))
