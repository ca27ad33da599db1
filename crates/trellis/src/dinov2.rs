//! DINOv2 ViT with register tokens (`dinov2_vitl14_reg`, Oquab et al. / Darcet et al.),
//! TRELLIS' image conditioning: `encode_image` takes the backbone's tokens before its final
//! norm (`x_prenorm`: class token, 4 registers, 37×37 patch tokens for a 518² image) and
//! layer-normalises them without affine.
//!
//! # Weights
//! Module names are those of the torch-hub model (`facebookresearch/dinov2`,
//! `dinov2_vitl14_reg4_pretrain.pth`, what TRELLIS loads). The Hugging Face layout of
//! `facebook/dinov2-with-registers-large` (`model.safetensors`) is read through this map:
//!
//! | torch hub (ours) | Hugging Face |
//! |---|---|
//! | `cls_token` | `embeddings.cls_token` |
//! | `register_tokens` | `embeddings.register_tokens` |
//! | `pos_embed` | `embeddings.position_embeddings` |
//! | `patch_embed.proj.{weight,bias}` | `embeddings.patch_embeddings.projection.{weight,bias}` |
//! | `blocks.N.norm1.*`, `blocks.N.norm2.*` | `encoder.layer.N.norm1.*`, `encoder.layer.N.norm2.*` |
//! | `blocks.N.attn.qkv.{weight,bias}` | `encoder.layer.N.attention.attention.{query,key,value}.{weight,bias}`, concatenated in that order |
//! | `blocks.N.attn.proj.*` | `encoder.layer.N.attention.output.dense.*` |
//! | `blocks.N.ls1.gamma`, `blocks.N.ls2.gamma` | `encoder.layer.N.layer_scale1.lambda1`, `encoder.layer.N.layer_scale2.lambda1` |
//! | `blocks.N.mlp.fc1.*`, `blocks.N.mlp.fc2.*` | `encoder.layer.N.mlp.fc1.*`, `encoder.layer.N.mlp.fc2.*` |
//!
//! `mask_token` and the final `norm` (`embeddings.mask_token`, `layernorm`) are not read:
//! TRELLIS uses neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use splatforge_nn::ops::{self, Conv2d, LinearEpilogue};
use splatforge_nn::weights::{NameMap, Source, TensorFile};

use crate::blocks::{dense_attention, linear, linear_forward, LayerNorm32};
use crate::config::{bad_file, hub_error, weights_with_names};
use crate::{Result, TrellisError};
use splatforge_nn::hub::HubConfig;

/// The shape of a DINOv2 ViT with registers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    pub embed_dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
    /// The square image side the position embedding was trained for (518 → 37×37 patches).
    pub image_size: usize,
    pub register_tokens: usize,
    /// Eps of the blocks' layer norms (`partial(nn.LayerNorm, eps=1e-6)`).
    pub layer_norm_eps: f64,
}

impl Dinov2Config {
    /// `dinov2_vitl14_reg`: ViT-L/14, 4 registers, 518² (torch hub `_make_dinov2_model`
    /// with `arch_name="vit_large"`, `num_register_tokens=4`; HF
    /// `facebook/dinov2-with-registers-large` has the same shape).
    pub fn vitl14_reg() -> Self {
        Self {
            embed_dim: 1024,
            depth: 24,
            heads: 16,
            mlp_ratio: 4.0,
            patch_size: 14,
            image_size: 518,
            register_tokens: 4,
            layer_norm_eps: 1e-6,
        }
    }

    /// The same structure at test size: 32 wide, 2 blocks, 28² images of 7² patches.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 32,
            depth: 2,
            heads: 2,
            mlp_ratio: 4.0,
            patch_size: 7,
            image_size: 28,
            register_tokens: 4,
            layer_norm_eps: 1e-6,
        }
    }

    /// The shape from a Hugging Face `config.json` of `Dinov2WithRegistersModel`
    /// (`model_type` `dinov2_with_registers`, plain MLP, GELU).
    pub fn from_hugging_face(text: &str) -> std::result::Result<Self, String> {
        #[derive(Deserialize)]
        struct HfConfig {
            model_type: String,
            hidden_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            mlp_ratio: f64,
            patch_size: usize,
            image_size: usize,
            num_register_tokens: usize,
            layer_norm_eps: f64,
            #[serde(default)]
            use_swiglu_ffn: bool,
            #[serde(default = "default_act")]
            hidden_act: String,
        }
        fn default_act() -> String {
            "gelu".into()
        }
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| format!("not a DINOv2-with-registers config.json: {e}"))?;
        if c.model_type != "dinov2_with_registers" || c.use_swiglu_ffn || c.hidden_act != "gelu" {
            return Err(format!("model_type `{}` (SwiGLU {}, activation {}): only dinov2_with_registers with a GELU MLP is supported", c.model_type, c.use_swiglu_ffn, c.hidden_act));
        }
        Ok(Self {
            embed_dim: c.hidden_size,
            depth: c.num_hidden_layers,
            heads: c.num_attention_heads,
            mlp_ratio: c.mlp_ratio,
            patch_size: c.patch_size,
            image_size: c.image_size,
            register_tokens: c.num_register_tokens,
            layer_norm_eps: c.layer_norm_eps,
        })
    }

    /// Patches per side at the trained image size.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens out of [`Dinov2::encode`]: class, registers, patches.
    pub fn tokens(&self) -> usize {
        1 + self.register_tokens + self.grid() * self.grid()
    }
}

/// Where a DINOv2 checkpoint's tensor names come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dinov2Layout {
    /// torch hub `dinov2_vitl14_reg4_pretrain.pth` (our module names).
    TorchHub,
    /// Hugging Face `Dinov2WithRegistersModel` (`facebook/dinov2-with-registers-large`).
    HuggingFace,
}

impl Dinov2Layout {
    /// The layout of a file from its tensor names.
    pub fn detect(file: &TensorFile) -> Option<Self> {
        if file.contains("cls_token") && file.contains("pos_embed") {
            Some(Self::TorchHub)
        } else if file.contains("embeddings.cls_token")
            && file.contains("embeddings.position_embeddings")
        {
            Some(Self::HuggingFace)
        } else {
            None
        }
    }

    /// Module name → file tensor (see the module documentation's table).
    pub fn name_map(self) -> NameMap {
        match self {
            Self::TorchHub => Arc::new(|name: &str| Some(Source::Key(name.to_string()))),
            Self::HuggingFace => Arc::new(hugging_face_name),
        }
    }
}

/// The Hugging Face tensor(s) holding torch-hub module tensor `name`.
fn hugging_face_name(name: &str) -> Option<Source> {
    let key = |s: String| Some(Source::Key(s));
    match name {
        "cls_token" => return key("embeddings.cls_token".into()),
        "register_tokens" => return key("embeddings.register_tokens".into()),
        "pos_embed" => return key("embeddings.position_embeddings".into()),
        "mask_token" => return key("embeddings.mask_token".into()),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("patch_embed.proj.") {
        return key(format!("embeddings.patch_embeddings.projection.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("norm.") {
        return key(format!("layernorm.{rest}"));
    }
    let rest = name.strip_prefix("blocks.")?;
    let (index, part) = rest.split_once('.')?;
    let layer = format!("encoder.layer.{index}");
    if let Some(param) = part.strip_prefix("attn.qkv.") {
        return Some(Source::Concat(
            ["query", "key", "value"]
                .iter()
                .map(|p| format!("{layer}.attention.attention.{p}.{param}"))
                .collect(),
        ));
    }
    let mapped = match part {
        "ls1.gamma" => "layer_scale1.lambda1".to_string(),
        "ls2.gamma" => "layer_scale2.lambda1".to_string(),
        p if p.starts_with("attn.proj.") => {
            format!("attention.output.dense.{}", &p["attn.proj.".len()..])
        }
        p if p.starts_with("norm1.")
            || p.starts_with("norm2.")
            || p.starts_with("mlp.fc1.")
            || p.starts_with("mlp.fc2.") =>
        {
            p.to_string()
        }
        _ => return None,
    };
    key(format!("{layer}.{mapped}"))
}

/// The Hugging Face repository of DINOv2 ViT-L/14 with registers.
pub const DINOV2_HF_REPO: &str = "facebook/dinov2-with-registers-large";
/// The torch-hub checkpoint TRELLIS loads (`dinov2_vitl14_reg`).
pub const DINOV2_HUB_CHECKPOINT: &str = "dinov2_vitl14_reg4_pretrain.pth";

/// Where torch hub keeps [`DINOV2_HUB_CHECKPOINT`]: `$TORCH_HOME/hub/checkpoints/`, with
/// `TORCH_HOME` defaulting to `$XDG_CACHE_HOME/torch`, then `~/.cache/torch`.
pub fn torch_hub_checkpoint(
    torch_home: Option<&str>,
    xdg_cache: Option<&str>,
    home: Option<&str>,
) -> PathBuf {
    let torch_home = match (torch_home, xdg_cache, home) {
        (Some(t), _, _) => PathBuf::from(t),
        (None, Some(x), _) => Path::new(x).join("torch"),
        (None, None, Some(h)) => Path::new(h).join(".cache").join("torch"),
        (None, None, None) => PathBuf::from(".cache").join("torch"),
    };
    torch_home
        .join("hub")
        .join("checkpoints")
        .join(DINOV2_HUB_CHECKPOINT)
}

/// The DINOv2 weights for `spec`: a file path; `hf:ORG/NAME[@REVISION]` (its `config.json`
/// and `model.safetensors` from the hub cache, downloaded unless offline); or, without a
/// spec, torch hub's cached [`DINOV2_HUB_CHECKPOINT`] where TRELLIS keeps it, else
/// [`DINOV2_HF_REPO`] through the hub cache.
pub fn resolve_weights(spec: Option<&str>, hub: &HubConfig) -> Result<PathBuf> {
    let from_hub = |repo: &str, revision: &str| -> Result<PathBuf> {
        hub.get(repo, revision, "config.json").map_err(hub_error)?;
        hub.get(repo, revision, "model.safetensors")
            .map_err(hub_error)
    };
    match spec {
        Some(s) => match s.strip_prefix("hf:") {
            Some(rest) => {
                let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
                from_hub(repo, revision)
            }
            None => Ok(PathBuf::from(s)),
        },
        None => {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let cached = torch_hub_checkpoint(
                var("TORCH_HOME").as_deref(),
                var("XDG_CACHE_HOME").as_deref(),
                var("HOME").as_deref(),
            );
            if cached.is_file() {
                return Ok(cached);
            }
            from_hub(DINOV2_HF_REPO, "main")
        }
    }
}

/// One `NestedTensorBlock`: pre-norm attention and MLP, each scaled by its LayerScale.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm32,
    qkv: Linear,
    proj: Linear,
    ls1: Tensor,
    norm2: LayerNorm32,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
    heads: usize,
}

impl Block {
    fn load(config: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let c = config.embed_dim;
        let hidden = (c as f64 * config.mlp_ratio) as usize;
        let gamma = |vb: VarBuilder| vb.get_with_hints(c, "gamma", Init::Const(1.0));
        Ok(Self {
            norm1: LayerNorm32::load(c, config.layer_norm_eps, true, vb.pp("norm1"))?,
            qkv: linear(c, 3 * c, true, vb.pp("attn").pp("qkv"))?,
            proj: linear(c, c, true, vb.pp("attn").pp("proj"))?,
            ls1: gamma(vb.pp("ls1"))?,
            norm2: LayerNorm32::load(c, config.layer_norm_eps, true, vb.pp("norm2"))?,
            fc1: linear(c, hidden, true, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(hidden, c, true, vb.pp("mlp").pp("fc2"))?,
            ls2: gamma(vb.pp("ls2"))?,
            heads: config.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.ls1.dim(0)?;
        let qkv = linear_forward(&self.qkv, &self.norm1.forward(x)?)?;
        let part = |i: usize| qkv.narrow(D::Minus1, i * c, c)?.contiguous();
        let h = dense_attention(&part(0)?, &part(1)?, &part(2)?, self.heads)?;
        let x = (x + linear_forward(&self.proj, &h)?.broadcast_mul(&self.ls1)?)?;
        // nn.GELU(): the exact (erf) GELU.
        let h = ops::linear(
            &self.norm2.forward(&x)?,
            &self.fc1,
            LinearEpilogue::default(),
        )?
        .gelu_erf()?;
        Ok((&x + linear_forward(&self.fc2, &h)?.broadcast_mul(&self.ls2)?)?)
    }
}

/// The DINOv2 backbone up to its tokens before the final norm.
#[derive(Debug, Clone)]
pub struct Dinov2 {
    config: Dinov2Config,
    patch_embed: Conv2d,
    cls_token: Tensor,
    register_tokens: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
}

impl Dinov2 {
    /// Builds the model from weights under the torch-hub names (see [`Dinov2Layout`]).
    pub fn load(config: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let c = config.embed_dim;
        if config.heads == 0
            || c % config.heads != 0
            || config.patch_size == 0
            || config.grid() == 0
        {
            return Err(TrellisError::Config(format!(
                "unusable DINOv2 shape {config:?}"
            )));
        }
        let conv = candle_nn::Conv2dConfig {
            stride: config.patch_size,
            ..Default::default()
        };
        let positions = 1 + config.grid() * config.grid();
        let embedding = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            patch_embed: ops::conv2d(
                3,
                c,
                config.patch_size,
                conv,
                vb.pp("patch_embed").pp("proj"),
            )?,
            cls_token: vb.get_with_hints((1, 1, c), "cls_token", embedding)?,
            register_tokens: vb.get_with_hints(
                (1, config.register_tokens, c),
                "register_tokens",
                embedding,
            )?,
            pos_embed: vb.get_with_hints((1, positions, c), "pos_embed", embedding)?,
            blocks: (0..config.depth)
                .map(|i| Block::load(config, vb.pp("blocks").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            config: *config,
        })
    }

    /// Opens a checkpoint in either layout (detected from its names): the torch-hub `.pth`
    /// (or its safetensors conversion) or Hugging Face's `model.safetensors`.
    pub fn load_file(
        config: &Dinov2Config,
        path: &Path,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let file = TensorFile::open(path).map_err(|e| bad_file(path, e))?;
        let layout = Dinov2Layout::detect(&file).ok_or_else(|| bad_file(path, "neither the torch-hub DINOv2 names (cls_token, pos_embed, blocks.N…) nor the Hugging Face ones (embeddings.…, encoder.layer.N…)"))?;
        let vb = weights_with_names(path, layout.name_map(), dtype, device)?;
        Self::load(config, vb)
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// The position embedding for an `h × w` patch grid. DINOv2 interpolates it only when the
    /// grid differs from the trained one; TRELLIS always feeds the trained 518² (37×37), where
    /// the stored embedding is used as is. Other grids are refused.
    fn position_embedding(&self, h: usize, w: usize) -> Result<&Tensor> {
        let grid = self.config.grid();
        if h == grid && w == grid {
            return Ok(&self.pos_embed);
        }
        Err(TrellisError::InvalidArgument(format!(
            "DINOv2 expects {s}×{s} images ({grid}×{grid} patches of {p}); got a {h}×{w} patch grid",
            s = self.config.image_size,
            p = self.config.patch_size
        )))
    }

    /// `pixels [B, 3, H, W]` (ImageNet-normalised) → the tokens before the final norm,
    /// `[B, 1 + registers + patches, C]` (`forward_features(...)["x_prenorm"]`).
    pub fn forward_prenorm(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, _, _) = pixels.dims4()?;
        let dtype = self.cls_token.dtype();
        let patches = self.patch_embed.forward(&pixels.to_dtype(dtype)?)?;
        let (_, c, gh, gw) = patches.dims4()?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let pos = self.position_embedding(gh, gw)?;
        let x = Tensor::cat(
            &[
                &self.cls_token.broadcast_as((b, 1, c))?.contiguous()?,
                &patches.contiguous()?,
            ],
            1,
        )?
        .broadcast_add(pos)?;
        let registers = self
            .register_tokens
            .broadcast_as((b, self.config.register_tokens, c))?
            .contiguous()?;
        let mut x = Tensor::cat(
            &[&x.narrow(1, 0, 1)?, &registers, &x.narrow(1, 1, gh * gw)?],
            1,
        )?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    /// TRELLIS' `encode_image`: [`forward_prenorm`](Self::forward_prenorm), then layer norm
    /// without affine (eps 1e-5) in f32 → `[B, tokens, C]` f32.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self
            .forward_prenorm(pixels)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let c = self.config.embed_dim;
        let ones = Tensor::ones(c, DType::F32, x.device())?;
        let zeros = Tensor::zeros(c, DType::F32, x.device())?;
        Ok(candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-5)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::tests::{layer_norm, lin, max_diff, Mat};
    use candle_core::Device;
    use splatforge_nn::weights::{save_random, RandomRecorder, SeededInit};
    use std::collections::BTreeMap;

    /// `x·Φ(x)`, Φ from candle's f64 erf (the exact GELU of `nn.GELU()`).
    fn erf_gelu(v: f64) -> f64 {
        let t = Tensor::new(&[v / std::f64::consts::SQRT_2], &Device::Cpu)
            .unwrap()
            .erf()
            .unwrap();
        v * 0.5 * (1.0 + t.to_vec1::<f64>().unwrap()[0])
    }

    /// One DINOv2 block written out on one batch item.
    fn block(w: &BTreeMap<String, Tensor>, p: &str, x: &Mat, heads: usize) -> Mat {
        let ln = |n: &str, x: &Mat| {
            layer_norm(
                x,
                1e-6,
                Some((
                    &Mat::of(&w[&format!("{p}.{n}.weight")]),
                    &Mat::of(&w[&format!("{p}.{n}.bias")]),
                )),
            )
        };
        let c = x.cols;
        let qkv = lin(w, &format!("{p}.attn.qkv"), &ln("norm1", x));
        let d = c / heads;
        let mut att = vec![0.0; x.rows * c];
        for h in 0..heads {
            for i in 0..x.rows {
                let s: Vec<f64> = (0..x.rows)
                    .map(|j| {
                        (0..d)
                            .map(|e| {
                                qkv.v[i * 3 * c + h * d + e] * qkv.v[j * 3 * c + c + h * d + e]
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for e in 0..d {
                    att[i * c + h * d + e] = (0..x.rows)
                        .map(|j| (s[j] - m).exp() / z * qkv.v[j * 3 * c + 2 * c + h * d + e])
                        .sum();
                }
            }
        }
        let a = lin(
            w,
            &format!("{p}.attn.proj"),
            &Mat {
                rows: x.rows,
                cols: c,
                v: att,
            },
        );
        let g1 = Mat::of(&w[&format!("{p}.ls1.gamma")]);
        let x = x.add(&a.map_rows(|r| r.iter().enumerate().map(|(i, v)| v * g1.v[i]).collect()));
        let h = lin(w, &format!("{p}.mlp.fc1"), &ln("norm2", &x))
            .map_rows(|r| r.iter().map(|v| erf_gelu(*v)).collect());
        let g2 = Mat::of(&w[&format!("{p}.ls2.gamma")]);
        x.add(
            &lin(w, &format!("{p}.mlp.fc2"), &h)
                .map_rows(|r| r.iter().enumerate().map(|(i, v)| v * g2.v[i]).collect()),
        )
    }

    #[test]
    fn tiny_dinov2_follows_its_equations() {
        let config = Dinov2Config::tiny();
        let init = SeededInit::new(12);
        let model = Dinov2::load(&config, init.var_builder()).unwrap();
        let w = init.tensors();
        let pixels = SeededInit::new(1)
            .var_builder()
            .get_with_hints(
                (1, 3, 28, 28),
                "p",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap();
        let tokens = model.forward_prenorm(&pixels).unwrap();
        assert_eq!(tokens.dims(), &[1, config.tokens(), 32]);
        assert_eq!(config.tokens(), 1 + 4 + 16);

        // Patch embedding written out: patch (py, px) = pixels[:, :, 7py.., 7px..] · W + b.
        let pv = Mat::of(&pixels.flatten_all().unwrap().unsqueeze(0).unwrap()).v;
        let kw = Mat::of(&w["patch_embed.proj.weight"].flatten_from(1).unwrap());
        let kb = Mat::of(&w["patch_embed.proj.bias"]);
        let pos = Mat::of(&w["pos_embed"].get(0).unwrap());
        let cls = Mat::of(&w["cls_token"].get(0).unwrap());
        let reg = Mat::of(&w["register_tokens"].get(0).unwrap());
        let mut x = Vec::new();
        x.extend(cls.v.iter().zip(pos.row(0)).map(|(a, b)| a + b));
        x.extend(reg.v.iter().cloned());
        for py in 0..4 {
            for px in 0..4 {
                for o in 0..32 {
                    let mut s = kb.v[o];
                    for ch in 0..3 {
                        for ky in 0..7 {
                            for kx in 0..7 {
                                s += pv[(ch * 28 + 7 * py + ky) * 28 + 7 * px + kx]
                                    * kw.v[o * kw.cols + (ch * 7 + ky) * 7 + kx];
                            }
                        }
                    }
                    x.push(s + pos.row(1 + py * 4 + px)[o]);
                }
            }
        }
        let mut x = Mat {
            rows: 21,
            cols: 32,
            v: x,
        };
        for i in 0..2 {
            x = block(&w, &format!("blocks.{i}"), &x, 2);
        }
        let diff = max_diff(&tokens.get(0).unwrap(), &x);
        assert!(diff < 1e-4, "max |Δ| {diff}");
        let encoded = model.encode(&pixels).unwrap();
        assert!(max_diff(&encoded.get(0).unwrap(), &layer_norm(&x, 1e-5, None)) < 1e-4);

        let wrong = Tensor::zeros((1, 3, 35, 35), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            model.forward_prenorm(&wrong),
            Err(TrellisError::InvalidArgument(_))
        ));
    }

    #[test]
    fn weights_are_found_where_torch_hub_and_the_hf_cache_keep_them() {
        assert_eq!(
            torch_hub_checkpoint(Some("/t"), Some("/x"), Some("/h")),
            PathBuf::from("/t/hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth")
        );
        assert_eq!(
            torch_hub_checkpoint(None, Some("/x"), Some("/h")),
            PathBuf::from("/x/torch/hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth")
        );
        assert_eq!(
            torch_hub_checkpoint(None, None, Some("/h")),
            PathBuf::from("/h/.cache/torch/hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth")
        );
        let cache = tempfile::tempdir().unwrap();
        let hub = HubConfig {
            cache_dir: cache.path().to_path_buf(),
            offline: true,
        };
        assert_eq!(
            resolve_weights(Some("/w/d.pth"), &hub).unwrap(),
            PathBuf::from("/w/d.pth")
        );
        let err = resolve_weights(Some("hf:facebook/dinov2-with-registers-large"), &hub)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        let snapshot = hub.repo_dir(DINOV2_HF_REPO).join("snapshots").join("main");
        std::fs::create_dir_all(&snapshot).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::write(snapshot.join(f), "{}").unwrap();
        }
        assert_eq!(
            resolve_weights(Some("hf:facebook/dinov2-with-registers-large"), &hub).unwrap(),
            snapshot.join("model.safetensors")
        );
    }

    #[test]
    fn hugging_face_config_gives_the_vitl14_reg_shape() {
        // facebook/dinov2-with-registers-large's config.json (the keys we read).
        let text = r#"{"model_type": "dinov2_with_registers", "hidden_size": 1024, "num_hidden_layers": 24,
            "num_attention_heads": 16, "mlp_ratio": 4, "patch_size": 14, "image_size": 518,
            "num_register_tokens": 4, "layer_norm_eps": 1e-06, "use_swiglu_ffn": false, "hidden_act": "gelu",
            "layerscale_value": 1.0, "qkv_bias": true}"#;
        assert_eq!(
            Dinov2Config::from_hugging_face(text).unwrap(),
            Dinov2Config::vitl14_reg()
        );
        assert!(Dinov2Config::from_hugging_face(
            &text.replace("\"use_swiglu_ffn\": false", "\"use_swiglu_ffn\": true")
        )
        .is_err());
        assert!(Dinov2Config::from_hugging_face("{}").is_err());
    }

    #[test]
    fn both_checkpoint_layouts_load_to_the_same_model() {
        let config = Dinov2Config::tiny();
        let recorder = RandomRecorder::new(3);
        Dinov2::load(&config, recorder.var_builder()).unwrap();
        let hub = recorder.recipes();
        assert!(
            hub.contains_key("blocks.1.ls2.gamma")
                && hub.contains_key("patch_embed.proj.weight")
                && !hub.contains_key("norm.weight")
        );
        // The Hugging Face file: every hub tensor under its HF name, qkv split in three.
        let mut hf = std::collections::HashMap::new();
        let dir = tempfile::tempdir().unwrap();
        for (name, recipe) in &hub {
            let t = recipe.tensor().unwrap();
            match hugging_face_name(name).unwrap() {
                Source::Key(k) => {
                    hf.insert(k, t);
                }
                Source::Concat(keys) => {
                    let n = t.dim(0).unwrap() / 3;
                    for (i, k) in keys.into_iter().enumerate() {
                        hf.insert(k, t.narrow(0, i * n, n).unwrap().contiguous().unwrap());
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(hf.contains_key("encoder.layer.0.attention.attention.value.bias"));
        assert!(hf.contains_key("embeddings.patch_embeddings.projection.weight"));
        let hub_path = dir.path().join("dinov2_hub.safetensors");
        save_random(&hub, DType::F32, &hub_path).unwrap();
        let hf_path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&hf, &hf_path).unwrap();

        let a = Dinov2::load_file(&config, &hub_path, DType::F32, &Device::Cpu).unwrap();
        let b = Dinov2::load_file(&config, &hf_path, DType::F32, &Device::Cpu).unwrap();
        let pixels = SeededInit::new(8)
            .var_builder()
            .get_with_hints(
                (2, 3, 28, 28),
                "p",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap();
        let (ya, yb) = (a.encode(&pixels).unwrap(), b.encode(&pixels).unwrap());
        let d = (ya - yb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);

        let junk = dir.path().join("junk.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(
                "x".to_string(),
                Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            )]),
            &junk,
        )
        .unwrap();
        assert!(matches!(
            Dinov2::load_file(&config, &junk, DType::F32, &Device::Cpu),
            Err(TrellisError::BadFile { .. })
        ));
    }
}
