//! The CLIP text encoder of Stable Diffusion 2.x / MVDream (OpenCLIP ViT-H/14
//! text tower, used up to its penultimate layer).
//!
//! Module and tensor names follow Hugging Face `CLIPTextModel`
//! (`text_model.embeddings.token_embedding.weight`, ...). We do not reuse
//! candle-transformers' `stable_diffusion::clip` because its `Config` has
//! private fields (no tiny configurations) and its `gelu` is the tanh
//! approximation, whereas OpenCLIP and `hidden_act: "gelu"` mean the exact
//! erf GELU.
//!
//! "Penultimate" (MVDream's `layer: penultimate`) = the first 23 of OpenCLIP's
//! 24 residual blocks followed by the final layer norm; the diffusers export
//! of SD 2.1 stores exactly those 23 layers, so `num_hidden_layers` is the
//! number of layers *used* in both layouts.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// `text_encoder/config.json` (Hugging Face `CLIPTextConfig`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `gelu` (exact, erf), `quick_gelu`, or `gelu_new` / `gelu_pytorch_tanh` (tanh approximation).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// SD 2.1's text encoder: OpenCLIP ViT-H/14 text tower, 23 of 24 layers.
    pub fn sd21() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }

    fn activation(&self) -> Result<Activation> {
        Ok(match self.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "quick_gelu" => Activation::QuickGelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => candle_core::bail!("unsupported CLIP hidden_act `{other}`"),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    QuickGelu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
        }
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        let att = vb.pp("self_attn");
        Ok(Self {
            q_proj: linear(d, d, att.pp("q_proj"))?,
            k_proj: linear(d, d, att.pp("k_proj"))?,
            v_proj: linear(d, d, att.pp("v_proj"))?,
            out_proj: linear(d, d, att.pp("out_proj"))?,
            layer_norm1: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            layer_norm2: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(c.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
            heads: c.num_attention_heads,
            act: c.activation()?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        let hd = d / self.heads;
        let h = self.layer_norm1.forward(xs)?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(&h)?)?;
        let k = split(self.k_proj.forward(&h)?)?;
        let v = split(self.v_proj.forward(&h)?)?;
        let in_dtype = q.dtype();
        let scores = (q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            * (hd as f64).powf(-0.5))?
        .broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(in_dtype)?;
        let att = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        let xs = (xs + self.out_proj.forward(&att)?)?;
        let h = self.layer_norm2.forward(&xs)?;
        let h = self.fc2.forward(&self.act.apply(&self.fc1.forward(&h)?)?)?;
        xs + h
    }
}

/// The CLIP text transformer (`CLIPTextModel`'s `last_hidden_state`).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// Builds the model; `vb` is at the root (tensors under `text_model.`).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let c = config;
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let token_embedding = embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((c.max_position_embeddings, c.hidden_size), "weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Token ids `[batch, seq]` (u32, seq ≤ max_position_embeddings) →
    /// hidden states `[batch, seq, hidden]` after the final layer norm.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_b, l) = input_ids.dims2()?;
        if l > self.config.max_position_embeddings {
            candle_core::bail!(
                "{l} tokens, the text encoder takes at most {}",
                self.config.max_position_embeddings
            )
        }
        let pos = self.position_embedding.narrow(0, 0, l)?;
        let mut xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&pos)?;
        let mask = causal_mask(l, input_ids.device())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

/// `[seq, seq]` additive causal mask (0 on and below the diagonal, −∞ above), f32.
fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (l, l), device)
}

/// Number of parameters a config implies (for reports).
pub fn parameter_count(c: &ClipTextConfig) -> usize {
    let d = c.hidden_size;
    let layer = 4 * (d * d + d)
        + 2 * 2 * d
        + (d * c.intermediate_size + c.intermediate_size)
        + (c.intermediate_size * d + d);
    c.vocab_size * d + c.max_position_embeddings * d + c.num_hidden_layers * layer + 2 * d
}

/// The hidden states `[1, max_length, C]` (the encoder's dtype) of one prompt,
/// tokenized and padded to the tokenizer's length on `device`.
pub(crate) fn encode_clip_prompt(
    tokenizer: &crate::tokenizer::ClipTokenizer,
    text_encoder: &ClipTextModel,
    text: &str,
    device: &Device,
) -> crate::Result<Tensor> {
    let ids = tokenizer.encode(text)?;
    let ids = Tensor::from_vec(ids, (1, tokenizer.max_length()), device)?;
    Ok(text_encoder.forward(&ids)?)
}
