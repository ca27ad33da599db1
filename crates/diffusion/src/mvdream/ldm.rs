//! Tensor-name mappings between our modules and a single LDM-format
//! checkpoint (MVDream's `sd-v2.1-base-4view`, Stable Diffusion `.ckpt`).
//!
//! | component | our module names (= diffusers / transformers) | LDM checkpoint keys |
//! |---|---|---|
//! | UNet | `time_embed.0.weight`, `input_blocks.1.1.proj_in.weight`, … (MVDream names) | `model.diffusion_model.` + the same |
//! | VAE | `encoder.down_blocks.{i}.resnets.{j}.conv1` | `first_stage_model.encoder.down.{i}.block.{j}.conv1` |
//! | | `encoder.down_blocks.{i}.downsamplers.0.conv` | `first_stage_model.encoder.down.{i}.downsample.conv` |
//! | | `decoder.up_blocks.{i}.resnets.{j}` | `first_stage_model.decoder.up.{n−1−i}.block.{j}` (levels reversed) |
//! | | `decoder.up_blocks.{i}.upsamplers.0.conv` | `first_stage_model.decoder.up.{n−1−i}.upsample.conv` |
//! | | `*.mid_block.resnets.{0,1}` | `*.mid.block_{1,2}` |
//! | | `*.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (also `query,key,value,proj_attn`) | `*.mid.attn_1.{norm,q,k,v,proj_out}` (1×1 convs, reshaped) |
//! | | `*.conv_shortcut`, `*.conv_norm_out` | `*.nin_shortcut`, `*.norm_out` |
//! | | `conv_in`, `conv_out`, `quant_conv`, `post_quant_conv` | same |
//! | text (OpenCLIP) | `text_model.embeddings.token_embedding.weight` | `cond_stage_model.model.token_embedding.weight` |
//! | | `text_model.embeddings.position_embedding.weight` | `cond_stage_model.model.positional_embedding` |
//! | | `text_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}` | chunk 0/1/2 of `…transformer.resblocks.{i}.attn.in_proj_{weight,bias}` |
//! | | `….self_attn.out_proj`, `layer_norm1`, `layer_norm2`, `mlp.fc1`, `mlp.fc2` | `….attn.out_proj`, `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj` |
//! | | `text_model.final_layer_norm` | `cond_stage_model.model.ln_final` |
//! | text (SD 1.x, HF CLIP) | `text_model.…` | `cond_stage_model.transformer.text_model.…` |
//!
//! OpenCLIP keeps all 24 blocks of ViT-H; MVDream uses the penultimate layer,
//! so we load blocks `0..num_hidden_layers` (23) and ignore the last one.

use splatforge_nn::weights::{NameMap, Source};

/// Prefix of the UNet in an LDM checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE in an LDM checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of the OpenCLIP text tower in an LDM checkpoint (SD 2.x, MVDream).
pub const OPENCLIP_PREFIX: &str = "cond_stage_model.model.";
/// Prefix of the Hugging Face CLIP text model in an LDM checkpoint (SD 1.x).
pub const HF_CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// UNet module name → LDM key.
pub fn unet_key(name: &str) -> String {
    format!("{UNET_PREFIX}{name}")
}

fn resnet_part(rest: &str) -> String {
    // norm1, conv1, norm2, conv2, conv_shortcut → nin_shortcut
    match rest.strip_prefix("conv_shortcut.") {
        Some(w) => format!("nin_shortcut.{w}"),
        None => rest.to_string(),
    }
}

fn attn_part(rest: &str) -> Option<String> {
    let (layer, w) = if let Some(w) = rest.strip_prefix("to_out.0.") {
        ("to_out.0", w)
    } else {
        let (l, w) = rest.split_once('.')?;
        (l, w)
    };
    let ldm = match layer {
        "group_norm" => "norm",
        "to_q" | "query" => "q",
        "to_k" | "key" => "k",
        "to_v" | "value" => "v",
        "to_out.0" | "proj_attn" => "proj_out",
        _ => return None,
    };
    Some(format!("{ldm}.{w}"))
}

fn mid_part(rest: &str) -> Option<String> {
    if let Some(r) = rest.strip_prefix("resnets.") {
        let (i, tail) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        return Some(format!("mid.block_{}.{}", i + 1, resnet_part(tail)));
    }
    let r = rest.strip_prefix("attentions.0.")?;
    Some(format!("mid.attn_1.{}", attn_part(r)?))
}

/// VAE module name (diffusers) → LDM key, for a VAE with `levels` blocks.
pub fn vae_key(name: &str, levels: usize) -> Option<String> {
    let top = ["quant_conv.", "post_quant_conv."];
    if top.iter().any(|p| name.starts_with(p)) {
        return Some(format!("{VAE_PREFIX}{name}"));
    }
    let (part, rest) = name.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let mapped = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(w) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{w}")
    } else if let Some(r) = rest.strip_prefix("mid_block.") {
        mid_part(r)?
    } else if let (Some(r), "encoder") = (rest.strip_prefix("down_blocks."), part) {
        let (i, tail) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        if let Some(t) = tail.strip_prefix("resnets.") {
            let (j, t) = t.split_once('.')?;
            format!("down.{i}.block.{j}.{}", resnet_part(t))
        } else {
            let w = tail.strip_prefix("downsamplers.0.conv.")?;
            format!("down.{i}.downsample.conv.{w}")
        }
    } else if let (Some(r), "decoder") = (rest.strip_prefix("up_blocks."), part) {
        let (i, tail) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        if i >= levels {
            return None;
        }
        let k = levels - 1 - i;
        if let Some(t) = tail.strip_prefix("resnets.") {
            let (j, t) = t.split_once('.')?;
            format!("up.{k}.block.{j}.{}", resnet_part(t))
        } else {
            let w = tail.strip_prefix("upsamplers.0.conv.")?;
            format!("up.{k}.upsample.conv.{w}")
        }
    } else {
        return None;
    };
    Some(format!("{VAE_PREFIX}{part}.{mapped}"))
}

/// Text-encoder module name (Hugging Face CLIP) → where it is in an LDM
/// checkpoint whose text tower is OpenCLIP's.
pub fn openclip_source(name: &str) -> Option<Source> {
    let p = OPENCLIP_PREFIX;
    let rest = name.strip_prefix("text_model.")?;
    let key = |k: String| Some(Source::Key(format!("{p}{k}")));
    match rest {
        "embeddings.token_embedding.weight" => return key("token_embedding.weight".into()),
        "embeddings.position_embedding.weight" => return key("positional_embedding".into()),
        _ => {}
    }
    if let Some(w) = rest.strip_prefix("final_layer_norm.") {
        return key(format!("ln_final.{w}"));
    }
    let r = rest.strip_prefix("encoder.layers.")?;
    let (i, tail) = r.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let blk = format!("{p}transformer.resblocks.{i}.");
    let (layer, w) = tail.rsplit_once('.')?;
    let chunk = |index| {
        Some(Source::Chunk {
            key: format!("{blk}attn.in_proj_{w}"),
            index,
            chunks: 3,
        })
    };
    match layer {
        "self_attn.q_proj" => chunk(0),
        "self_attn.k_proj" => chunk(1),
        "self_attn.v_proj" => chunk(2),
        "self_attn.out_proj" => Some(Source::Key(format!("{blk}attn.out_proj.{w}"))),
        "layer_norm1" => Some(Source::Key(format!("{blk}ln_1.{w}"))),
        "layer_norm2" => Some(Source::Key(format!("{blk}ln_2.{w}"))),
        "mlp.fc1" => Some(Source::Key(format!("{blk}mlp.c_fc.{w}"))),
        "mlp.fc2" => Some(Source::Key(format!("{blk}mlp.c_proj.{w}"))),
        _ => None,
    }
}

/// Text-encoder module name → LDM key when the text tower is a Hugging Face
/// `CLIPTextModel` (SD 1.x checkpoints).
pub fn hf_clip_source(name: &str) -> Option<Source> {
    name.starts_with("text_model.")
        .then(|| Source::Key(format!("{HF_CLIP_PREFIX}{name}")))
}

/// A [`NameMap`] that reads a diffusers SD UNet's tensors for a
/// [`crate::mvdream::MultiViewUNet`] of configuration `cfg` (through
/// [`diffusers_unet_key`]).
pub fn diffusers_unet_names(cfg: &crate::mvdream::MultiViewUNetConfig) -> NameMap {
    let cfg = cfg.clone();
    std::sync::Arc::new(move |n: &str| diffusers_unet_key(n, &cfg).map(Source::Key))
}

/// The diffusers `UNet2DConditionModel` key holding MVDream/LDM UNet module
/// tensor `name` (e.g. `input_blocks.1.0.in_layers.2.weight` →
/// `down_blocks.0.resnets.0.conv1.weight`), for a UNet of configuration
/// `cfg` (the inverse of diffusers' `convert_ldm_unet_checkpoint`). `None`
/// for tensors diffusers' SD UNet does not have (the camera embedding).
/// With it, SD 2.1's diffusers UNet loads into [`crate::mvdream::MultiViewUNet`]
/// (no camera, one frame): MVDream's UNet reduced to one view is SD 2.1's.
pub fn diffusers_unet_key(name: &str, cfg: &crate::mvdream::MultiViewUNetConfig) -> Option<String> {
    let resnet = |rest: &str| -> Option<String> {
        let pairs = [
            ("in_layers.0.", "norm1."),
            ("in_layers.2.", "conv1."),
            ("emb_layers.1.", "time_emb_proj."),
            ("out_layers.0.", "norm2."),
            ("out_layers.3.", "conv2."),
            ("skip_connection.", "conv_shortcut."),
        ];
        pairs
            .iter()
            .find_map(|(a, b)| rest.strip_prefix(a).map(|w| format!("{b}{w}")))
    };
    // (LDM prefix, diffusers prefix, is a ResBlock)
    let mut table: Vec<(String, String, bool)> = vec![
        ("input_blocks.0.0.".into(), "conv_in.".into(), false),
        (
            "time_embed.0.".into(),
            "time_embedding.linear_1.".into(),
            false,
        ),
        (
            "time_embed.2.".into(),
            "time_embedding.linear_2.".into(),
            false,
        ),
        ("out.0.".into(), "conv_norm_out.".into(), false),
        ("out.2.".into(), "conv_out.".into(), false),
        (
            "middle_block.0.".into(),
            "mid_block.resnets.0.".into(),
            true,
        ),
        (
            "middle_block.1.".into(),
            "mid_block.attentions.0.".into(),
            false,
        ),
        (
            "middle_block.2.".into(),
            "mid_block.resnets.1.".into(),
            true,
        ),
    ];
    let levels = cfg.channel_mult.len();
    let mut k = 0;
    let mut ds = 1;
    for l in 0..levels {
        for j in 0..cfg.num_res_blocks.get(l) {
            k += 1;
            table.push((
                format!("input_blocks.{k}.0."),
                format!("down_blocks.{l}.resnets.{j}."),
                true,
            ));
            if cfg.attention_resolutions.contains(&ds) {
                table.push((
                    format!("input_blocks.{k}.1."),
                    format!("down_blocks.{l}.attentions.{j}."),
                    false,
                ));
            }
        }
        if l + 1 != levels {
            k += 1;
            table.push((
                format!("input_blocks.{k}.0.op."),
                format!("down_blocks.{l}.downsamplers.0.conv."),
                false,
            ));
            ds *= 2;
        }
    }
    let mut k = 0;
    for (u, l) in (0..levels).rev().enumerate() {
        let n = cfg.num_res_blocks.get(l);
        for i in 0..=n {
            table.push((
                format!("output_blocks.{k}.0."),
                format!("up_blocks.{u}.resnets.{i}."),
                true,
            ));
            let mut idx = 1;
            if cfg.attention_resolutions.contains(&ds) {
                table.push((
                    format!("output_blocks.{k}.1."),
                    format!("up_blocks.{u}.attentions.{i}."),
                    false,
                ));
                idx = 2;
            }
            if l > 0 && i == n {
                table.push((
                    format!("output_blocks.{k}.{idx}.conv."),
                    format!("up_blocks.{u}.upsamplers.0.conv."),
                    false,
                ));
                ds /= 2;
            }
            k += 1;
        }
    }
    table.iter().find_map(|(a, b, res)| {
        let rest = name.strip_prefix(a.as_str())?;
        if *res {
            resnet(rest).map(|r| format!("{b}{r}"))
        } else {
            Some(format!("{b}{rest}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vk(n: &str) -> String {
        vae_key(n, 4).unwrap_or_else(|| panic!("no mapping for {n}"))
    }

    // Pairs taken from the conversion scripts (diffusers'
    // convert_original_stable_diffusion_to_diffusers.py / mvdream_diffusers'
    // convert_mvdream_to_diffusers.py), for the 4-level SD VAE.
    #[test]
    fn vae_names() {
        let f = |s: &str| format!("first_stage_model.{s}");
        assert_eq!(vk("encoder.conv_in.weight"), f("encoder.conv_in.weight"));
        assert_eq!(vk("encoder.conv_norm_out.bias"), f("encoder.norm_out.bias"));
        assert_eq!(vk("decoder.conv_out.weight"), f("decoder.conv_out.weight"));
        assert_eq!(vk("quant_conv.weight"), f("quant_conv.weight"));
        assert_eq!(vk("post_quant_conv.bias"), f("post_quant_conv.bias"));
        assert_eq!(
            vk("encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            f("encoder.down.1.block.0.nin_shortcut.weight")
        );
        assert_eq!(
            vk("encoder.down_blocks.2.resnets.1.norm2.weight"),
            f("encoder.down.2.block.1.norm2.weight")
        );
        assert_eq!(
            vk("encoder.down_blocks.0.downsamplers.0.conv.weight"),
            f("encoder.down.0.downsample.conv.weight")
        );
        assert_eq!(
            vk("decoder.up_blocks.0.resnets.2.conv1.weight"),
            f("decoder.up.3.block.2.conv1.weight")
        );
        assert_eq!(
            vk("decoder.up_blocks.0.upsamplers.0.conv.bias"),
            f("decoder.up.3.upsample.conv.bias")
        );
        assert_eq!(
            vk("decoder.up_blocks.3.resnets.0.conv_shortcut.weight"),
            f("decoder.up.0.block.0.nin_shortcut.weight")
        );
        assert_eq!(
            vk("decoder.up_blocks.2.upsamplers.0.conv.weight"),
            f("decoder.up.1.upsample.conv.weight")
        );
        assert_eq!(
            vk("encoder.mid_block.resnets.0.conv1.weight"),
            f("encoder.mid.block_1.conv1.weight")
        );
        assert_eq!(
            vk("decoder.mid_block.resnets.1.norm1.bias"),
            f("decoder.mid.block_2.norm1.bias")
        );
        assert_eq!(
            vk("decoder.mid_block.attentions.0.group_norm.weight"),
            f("decoder.mid.attn_1.norm.weight")
        );
        assert_eq!(
            vk("decoder.mid_block.attentions.0.to_q.weight"),
            f("decoder.mid.attn_1.q.weight")
        );
        assert_eq!(
            vk("decoder.mid_block.attentions.0.key.bias"),
            f("decoder.mid.attn_1.k.bias")
        );
        assert_eq!(
            vk("encoder.mid_block.attentions.0.to_v.weight"),
            f("encoder.mid.attn_1.v.weight")
        );
        assert_eq!(
            vk("encoder.mid_block.attentions.0.to_out.0.weight"),
            f("encoder.mid.attn_1.proj_out.weight")
        );
        assert_eq!(
            vk("encoder.mid_block.attentions.0.proj_attn.bias"),
            f("encoder.mid.attn_1.proj_out.bias")
        );
        assert_eq!(
            vae_key("decoder.up_blocks.4.resnets.0.conv1.weight", 4),
            None
        );
        assert_eq!(
            vae_key("encoder.up_blocks.0.resnets.0.conv1.weight", 4),
            None
        );
        assert_eq!(vae_key("something.else", 4), None);
        // Two levels: up_blocks.0 is the deepest (up.1).
        assert_eq!(
            vae_key("decoder.up_blocks.0.resnets.0.conv1.weight", 2).unwrap(),
            f("decoder.up.1.block.0.conv1.weight")
        );
    }

    #[test]
    fn sd21_unet_names() {
        // Pairs from diffusers' convert_ldm_unet_checkpoint for SD 2.1.
        let c = crate::mvdream::MultiViewUNetConfig::sd21_base_4view();
        let d = |n: &str| diffusers_unet_key(n, &c).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(d("input_blocks.0.0.weight"), "conv_in.weight");
        assert_eq!(d("time_embed.2.bias"), "time_embedding.linear_2.bias");
        assert_eq!(
            d("input_blocks.1.0.in_layers.2.weight"),
            "down_blocks.0.resnets.0.conv1.weight"
        );
        assert_eq!(
            d("input_blocks.2.1.proj_in.weight"),
            "down_blocks.0.attentions.1.proj_in.weight"
        );
        assert_eq!(
            d("input_blocks.3.0.op.weight"),
            "down_blocks.0.downsamplers.0.conv.weight"
        );
        assert_eq!(
            d("input_blocks.4.0.skip_connection.bias"),
            "down_blocks.1.resnets.0.conv_shortcut.bias"
        );
        assert_eq!(
            d("input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight"),
            "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(
            d("input_blocks.9.0.op.bias"),
            "down_blocks.2.downsamplers.0.conv.bias"
        );
        assert_eq!(
            d("input_blocks.11.0.emb_layers.1.weight"),
            "down_blocks.3.resnets.1.time_emb_proj.weight"
        );
        assert_eq!(
            d("middle_block.1.norm.weight"),
            "mid_block.attentions.0.norm.weight"
        );
        assert_eq!(
            d("middle_block.2.out_layers.3.weight"),
            "mid_block.resnets.1.conv2.weight"
        );
        assert_eq!(
            d("output_blocks.0.0.out_layers.0.bias"),
            "up_blocks.0.resnets.0.norm2.bias"
        );
        assert_eq!(
            d("output_blocks.2.1.conv.weight"),
            "up_blocks.0.upsamplers.0.conv.weight"
        );
        assert_eq!(
            d("output_blocks.3.1.proj_out.bias"),
            "up_blocks.1.attentions.0.proj_out.bias"
        );
        assert_eq!(
            d("output_blocks.5.2.conv.bias"),
            "up_blocks.1.upsamplers.0.conv.bias"
        );
        assert_eq!(
            d("output_blocks.8.2.conv.weight"),
            "up_blocks.2.upsamplers.0.conv.weight"
        );
        assert_eq!(
            d("output_blocks.11.1.transformer_blocks.0.ff.net.2.weight"),
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.weight"
        );
        assert_eq!(d("out.0.weight"), "conv_norm_out.weight");
        assert_eq!(d("out.2.bias"), "conv_out.bias");
        assert_eq!(diffusers_unet_key("camera_embed.0.weight", &c), None);
    }

    #[test]
    fn openclip_names() {
        let p = "cond_stage_model.model.";
        let key = |s: &str| Some(Source::Key(format!("{p}{s}")));
        assert_eq!(
            openclip_source("text_model.embeddings.token_embedding.weight"),
            key("token_embedding.weight")
        );
        assert_eq!(
            openclip_source("text_model.embeddings.position_embedding.weight"),
            key("positional_embedding")
        );
        assert_eq!(
            openclip_source("text_model.final_layer_norm.weight"),
            key("ln_final.weight")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.22.layer_norm1.bias"),
            key("transformer.resblocks.22.ln_1.bias")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.3.layer_norm2.weight"),
            key("transformer.resblocks.3.ln_2.weight")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.0.mlp.fc1.weight"),
            key("transformer.resblocks.0.mlp.c_fc.weight")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.0.mlp.fc2.bias"),
            key("transformer.resblocks.0.mlp.c_proj.bias")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.5.self_attn.out_proj.weight"),
            key("transformer.resblocks.5.attn.out_proj.weight")
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.5.self_attn.k_proj.bias"),
            Some(Source::Chunk {
                key: format!("{p}transformer.resblocks.5.attn.in_proj_bias"),
                index: 1,
                chunks: 3
            })
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.1.self_attn.v_proj.weight"),
            Some(Source::Chunk {
                key: format!("{p}transformer.resblocks.1.attn.in_proj_weight"),
                index: 2,
                chunks: 3
            })
        );
        assert_eq!(
            openclip_source("text_model.encoder.layers.1.self_attn.x_proj.weight"),
            None
        );
        assert_eq!(
            unet_key("camera_embed.0.weight"),
            "model.diffusion_model.camera_embed.0.weight"
        );
    }
}
