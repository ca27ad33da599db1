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

use crate::weights::Source;

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
