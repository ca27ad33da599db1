//! The Swin Transformer v1 backbone as BiRefNet builds it (`models/backbones/swin_v1.py`):
//! a 4×4 patch embedding with LayerNorm, four stages of Swin blocks (window attention with a
//! relative position bias; every second block shifts the windows by half a window and masks
//! the pairs that the cyclic shift made neighbours), patch merging between stages, and a
//! LayerNorm (`norm{i}`) on each stage's output. Feature maps whose side is not a multiple of
//! the window are padded with zeros after `norm1` (as upstream; the padded tokens are not
//! masked), merged maps of odd side are padded before merging.
//!
//! Tensor names follow the published state dict under `bb.`: `patch_embed.proj`,
//! `patch_embed.norm`, `layers.{i}.blocks.{j}.{norm1, attn.qkv, attn.proj,
//! attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}`, `layers.{i}.downsample.{norm,
//! reduction}`, `norm{i}`. The `attn.relative_position_index` buffers are recomputed here.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use splatforge_nn::ops::{self, Conv2d, LinearEpilogue};

use crate::config::{SwinConfig, PATCH_SIZE};
use crate::layers::{conv2d, linear, LayerNorm};

/// `relative_position_index` of a `ws × ws` window: for tokens `i = (h1, w1)` and
/// `j = (h2, w2)` (row-major in the window), the row of the bias table holding their offset,
/// `(h1 − h2 + ws − 1)·(2ws − 1) + (w1 − w2 + ws − 1)`. `[ws², ws²]` row-major.
pub(crate) fn relative_position_index(ws: usize) -> Vec<u32> {
    let n = ws * ws;
    let mut out = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dh = (i / ws) + ws - 1 - (j / ws);
            let dw = (i % ws) + ws - 1 - (j % ws);
            out.push((dh * (2 * ws - 1) + dw) as u32);
        }
    }
    out
}

/// The region of each position of an `hp × wp` map (a multiple of `ws` each side) after the
/// cyclic shift by `shift`: rows (and columns) `[0, −ws)`, `[−ws, −shift)` and `[−shift, end)`
/// are different regions, the label being `3·row band + column band`. `[hp·wp]` row-major.
fn shift_regions(hp: usize, wp: usize, ws: usize, shift: usize) -> Vec<u8> {
    let band = |x: usize, len: usize| -> u8 {
        if x < len - ws {
            0
        } else if x < len - shift {
            1
        } else {
            2
        }
    };
    let mut out = Vec::with_capacity(hp * wp);
    for y in 0..hp {
        for x in 0..wp {
            out.push(3 * band(y, hp) + band(x, wp));
        }
    }
    out
}

/// The shifted-window attention mask of an `hp × wp` map: `[nW, ws², ws²]` f32, 0 where two
/// tokens of a window come from the same region, −∞ elsewhere (windows in row-major order).
pub(crate) fn shift_mask(
    hp: usize,
    wp: usize,
    ws: usize,
    shift: usize,
    device: &Device,
) -> Result<Tensor> {
    let regions = shift_regions(hp, wp, ws, shift);
    let (nh, nw, n) = (hp / ws, wp / ws, ws * ws);
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |t: usize| regions[(wy * ws + t / ws) * wp + wx * ws + t % ws];
            for i in 0..n {
                for j in 0..n {
                    mask.push(if label(i) == label(j) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// `WindowAttention`: multi-head self-attention inside each window with the relative
/// position bias.
#[derive(Debug, Clone)]
pub(crate) struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    /// `[heads, ws², ws²]` f32: the bias table gathered by `relative_position_index`.
    bias: Tensor,
    heads: usize,
}

impl WindowAttention {
    pub(crate) fn load(dim: usize, heads: usize, ws: usize, vb: VarBuilder) -> Result<Self> {
        let table = vb.get_with_hints(
            ((2 * ws - 1) * (2 * ws - 1), heads),
            "relative_position_bias_table",
            Init::Randn {
                mean: 0.0,
                stdev: 0.5,
            },
        )?;
        let n = ws * ws;
        let index = Tensor::from_vec(relative_position_index(ws), n * n, table.device())?;
        let bias = table
            .to_dtype(DType::F32)?
            .contiguous()?
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        Ok(Self {
            qkv: linear(dim, 3 * dim, true, vb.pp("qkv"))?,
            proj: linear(dim, dim, true, vb.pp("proj"))?,
            bias,
            heads,
        })
    }

    /// `x [B·nW, ws², C]` (windows of `B` images, each image's windows consecutive), `mask
    /// [nW, ws², ws²]` f32 (0 / −∞) or none → `[B·nW, ws², C]`. Scores and softmax in f32.
    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = ops::linear(x, &self.qkv, LinearEpilogue::default())?
            .reshape((bw, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = (hd as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?
            .broadcast_add(&self.bias.unsqueeze(0)?)?;
        if let Some(mask) = mask {
            let nw = mask.dim(0)?;
            scores = scores
                .reshape((bw / nw, nw, self.heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((bw, self.heads, n, n))?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let out = p.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?;
        ops::linear(&out, &self.proj, LinearEpilogue::default())
    }
}

/// `x [B, Hp, Wp, C]` (sides multiples of `ws`) → `[B·nW, ws², C]`, windows row-major.
fn window_partition(x: &Tensor, ws: usize) -> Result<Tensor> {
    let (b, hp, wp, c) = x.dims4()?;
    x.reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / ws) * (wp / ws), ws * ws, c))
}

/// The inverse of [`window_partition`]: `[B·nW, ws², C]` → `[B, Hp, Wp, C]`.
fn window_reverse(windows: &Tensor, ws: usize, hp: usize, wp: usize) -> Result<Tensor> {
    let (bw, _, c) = windows.dims3()?;
    let b = bw / ((hp / ws) * (wp / ws));
    windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))
}

/// (Shifted) window attention over a padded map: `x [B, Hp, Wp, C]` → `[B, Hp, Wp, C]`. With
/// `shift > 0` the map is rolled by `−shift` on both axes, attended with `mask` (see
/// [`shift_mask`]) and rolled back.
pub(crate) fn window_msa(
    attn: &WindowAttention,
    x: &Tensor,
    ws: usize,
    shift: usize,
    mask: &Tensor,
) -> Result<Tensor> {
    let (_, hp, wp, _) = x.dims4()?;
    let s = shift as i32;
    let x = if shift > 0 {
        x.roll(-s, 1)?.roll(-s, 2)?
    } else {
        x.clone()
    };
    let windows = window_partition(&x, ws)?;
    let out = attn.forward(&windows, (shift > 0).then_some(mask))?;
    let out = window_reverse(&out, ws, hp, wp)?;
    if shift > 0 {
        out.roll(s, 1)?.roll(s, 2)
    } else {
        Ok(out)
    }
}

/// `SwinTransformerBlock`.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    shift: usize,
}

impl Block {
    fn load(dim: usize, heads: usize, ws: usize, shift: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(dim, vb.pp("norm1"))?,
            attn: WindowAttention::load(dim, heads, ws, vb.pp("attn"))?,
            norm2: LayerNorm::load(dim, vb.pp("norm2"))?,
            fc1: linear(dim, 4 * dim, true, vb.pp("mlp.fc1"))?,
            fc2: linear(4 * dim, dim, true, vb.pp("mlp.fc2"))?,
            shift,
        })
    }

    /// `x [B, H·W, C]` → `[B, H·W, C]`; `mask` as [`shift_mask`] for the padded map.
    fn forward(&self, x: &Tensor, h: usize, w: usize, ws: usize, mask: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
        let y = self
            .norm1
            .forward(x)?
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, hp - h)?
            .pad_with_zeros(2, 0, wp - w)?;
        let y = window_msa(&self.attn, &y, ws, self.shift, mask)?;
        let y = y.narrow(1, 0, h)?.narrow(2, 0, w)?.reshape((b, l, c))?;
        let x = (x + y)?;
        // Exact (erf) GELU, as timm's Mlp: the fused epilogue's is the tanh approximation.
        let m = ops::linear(
            &self.norm2.forward(&x)?,
            &self.fc1,
            LinearEpilogue::default(),
        )?
        .gelu_erf()?;
        ops::linear(
            &m,
            &self.fc2,
            LinearEpilogue {
                residual: Some(&x),
                ..Default::default()
            },
        )
    }
}

/// `PatchMerging`: each 2×2 block of tokens (odd sides padded with zeros) → one token of
/// `2C` channels (concatenation order: (0,0), (1,0), (0,1), (1,1) as (row, column) offsets).
#[derive(Debug, Clone)]
pub(crate) struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    pub(crate) fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::load(4 * dim, vb.pp("norm"))?,
            reduction: linear(4 * dim, 2 * dim, false, vb.pp("reduction"))?,
        })
    }

    /// The `[B, ⌈H/2⌉·⌈W/2⌉, 4C]` concatenation before the norm, from `x [B, H·W, C]`.
    pub(crate) fn gather(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let x = x
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, h % 2)?
            .pad_with_zeros(2, 0, w % 2)?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // [b, h2, dh, w2, dw, c] → [b, h2, w2, dw, dh, c]: channel block dw·2 + dh.
        x.reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))
    }

    /// `x [B, H·W, C]` → `[B, ⌈H/2⌉·⌈W/2⌉, 2C]`.
    pub(crate) fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let merged = Self::gather(x, h, w)?;
        ops::linear(
            &self.norm.forward(&merged)?,
            &self.reduction,
            LinearEpilogue::default(),
        )
    }
}

#[derive(Debug, Clone)]
struct Stage {
    blocks: Vec<Block>,
    downsample: Option<PatchMerging>,
}

/// The backbone (`SwinTransformer`, all four stages out).
#[derive(Debug, Clone)]
pub struct Swin {
    config: SwinConfig,
    patch_embed: Conv2d,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    norms: Vec<LayerNorm>,
}

impl Swin {
    /// Loads from `vb` (the model's `bb.` prefix).
    pub fn load(config: &SwinConfig, vb: VarBuilder) -> Result<Self> {
        let dims = config.stage_channels();
        let ws = config.window_size;
        let mut stages = Vec::with_capacity(4);
        for (i, &dim) in dims.iter().enumerate() {
            let vs = vb.pp(format!("layers.{i}"));
            let blocks = (0..config.depths[i])
                .map(|j| {
                    let shift = if j % 2 == 0 { 0 } else { ws / 2 };
                    Block::load(
                        dim,
                        config.num_heads[i],
                        ws,
                        shift,
                        vs.pp(format!("blocks.{j}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i < 3 {
                Some(PatchMerging::load(dim, vs.pp("downsample"))?)
            } else {
                None
            };
            stages.push(Stage { blocks, downsample });
        }
        let norms = (0..4)
            .map(|i| LayerNorm::load(dims[i], vb.pp(format!("norm{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            patch_embed: conv2d(
                3,
                config.embed_dim,
                PATCH_SIZE,
                PATCH_SIZE,
                0,
                true,
                vb.pp("patch_embed.proj"),
            )?,
            patch_norm: LayerNorm::load(config.embed_dim, vb.pp("patch_embed.norm"))?,
            stages,
            norms,
        })
    }

    /// `pixels [B, 3, H, W]` (sides multiples of 4) → the four normed stage outputs
    /// `[B, embed·2^i, H/2^(i+2), W/2^(i+2)]` (sides rounded up at each merge).
    pub fn forward(&self, pixels: &Tensor) -> Result<[Tensor; 4]> {
        let ws = self.config.window_size;
        let x = self.patch_embed.forward(pixels)?;
        let (b, c, mut h, mut w) = x.dims4()?;
        let mut x = self
            .patch_norm
            .forward(&x.flatten_from(2)?.transpose(1, 2)?)?;
        let mut outs = Vec::with_capacity(4);
        for (i, stage) in self.stages.iter().enumerate() {
            let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
            let mask = shift_mask(hp, wp, ws, ws / 2, x.device())?;
            for block in &stage.blocks {
                x = block.forward(&x, h, w, ws, &mask)?;
            }
            let ci = c << i;
            let out = self.norms[i]
                .forward(&x)?
                .reshape((b, h, w, ci))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            outs.push(out);
            if let Some(down) = &stage.downsample {
                x = down.forward(&x, h, w)?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
        }
        let [a, b2, c2, d]: [Tensor; 4] = outs.try_into().expect("four stages");
        Ok([a, b2, c2, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splatforge_nn::weights::SeededInit;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Shifted-window attention computed token by token: for a token at `(y, x)` of the
    /// padded map, its place in the rolled map is `((y − s) mod Hp, (x − s) mod Wp)`; it
    /// attends to every token whose rolled place is in the same window and the same shift
    /// region, with the bias of their in-window offset.
    #[allow(clippy::too_many_arguments)]
    fn brute_force(
        x: &[f32],
        hp: usize,
        wp: usize,
        c: usize,
        heads: usize,
        ws: usize,
        shift: usize,
        qkv_w: &[f32],
        qkv_b: &[f32],
        proj_w: &[f32],
        proj_b: &[f32],
        table: &[f32],
    ) -> Vec<f32> {
        let tokens = hp * wp;
        let lin = |w: &[f32], b: &[f32], v: &[f32], out: usize| -> Vec<f32> {
            (0..out)
                .map(|o| b[o] + (0..v.len()).map(|i| w[o * v.len() + i] * v[i]).sum::<f32>())
                .collect()
        };
        let qkv: Vec<Vec<f32>> = (0..tokens)
            .map(|t| lin(qkv_w, qkv_b, &x[t * c..(t + 1) * c], 3 * c))
            .collect();
        let rolled = |t: usize| ((t / wp + hp - shift) % hp, (t % wp + wp - shift) % wp);
        let band = |v: usize, len: usize| {
            if v < len - ws {
                0
            } else if v < len - shift {
                1
            } else {
                2
            }
        };
        let region = |(y, x): (usize, usize)| {
            if shift == 0 {
                0
            } else {
                3 * band(y, hp) + band(x, wp)
            }
        };
        let hd = c / heads;
        let mut out = vec![0f32; tokens * c];
        for t in 0..tokens {
            let (ty, tx) = rolled(t);
            let mut attended = vec![0f32; c];
            for h in 0..heads {
                let mut scores = Vec::new();
                for u in 0..tokens {
                    let (uy, ux) = rolled(u);
                    if uy / ws != ty / ws
                        || ux / ws != tx / ws
                        || region((uy, ux)) != region((ty, tx))
                    {
                        continue;
                    }
                    let dot: f32 = (0..hd)
                        .map(|d| qkv[t][h * hd + d] * qkv[u][c + h * hd + d])
                        .sum();
                    let row = ((ty % ws) + ws - 1 - (uy % ws)) * (2 * ws - 1) + (tx % ws) + ws
                        - 1
                        - (ux % ws);
                    scores.push((u, dot / (hd as f32).sqrt() + table[row * heads + h]));
                }
                let max = scores.iter().map(|s| s.1).fold(f32::MIN, f32::max);
                let sum: f32 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                for (u, s) in scores {
                    let p = (s - max).exp() / sum;
                    for d in 0..hd {
                        attended[h * hd + d] += p * qkv[u][2 * c + h * hd + d];
                    }
                }
            }
            out[t * c..(t + 1) * c].copy_from_slice(&lin(proj_w, proj_b, &attended, c));
        }
        out
    }

    #[test]
    fn window_attention_matches_per_token_loop() {
        let (c, heads, ws) = (4, 2, 3);
        let (hp, wp) = (6, 9);
        let init = SeededInit::new(5);
        let attn = WindowAttention::load(c, heads, ws, init.var_builder().pp("attn")).unwrap();
        let t = init.tensors();
        let get = |n: &str| values(&t[n]);
        let x = Tensor::randn(0f32, 1.0, (1, hp, wp, c), &Device::Cpu).unwrap();
        for shift in [0, 1] {
            let mask = shift_mask(hp, wp, ws, shift.max(1), &Device::Cpu).unwrap();
            let ours = values(&window_msa(&attn, &x, ws, shift, &mask).unwrap());
            let want = brute_force(
                &values(&x),
                hp,
                wp,
                c,
                heads,
                ws,
                shift,
                &get("attn.qkv.weight"),
                &get("attn.qkv.bias"),
                &get("attn.proj.weight"),
                &get("attn.proj.bias"),
                &get("attn.relative_position_bias_table"),
            );
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-4, "shift {shift} at {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn relative_index_corners() {
        let idx = relative_position_index(3);
        // Same token: offset (0, 0) → the centre row (2·5 + 2).
        assert_eq!(idx[0], 12);
        // Token 0 = (0,0) vs token 8 = (2,2): offset (−2, −2) → row 0.
        assert_eq!(idx[8], 0);
        // Token 8 vs token 0: offset (2, 2) → the last row.
        assert_eq!(idx[8 * 9], 24);
    }

    #[test]
    fn patch_merging_gathers_2x2_blocks() {
        // H = 3, W = 2, C = 1; the value is 10·row + column.
        let x = Tensor::new(&[0f32, 1., 10., 11., 20., 21.], &Device::Cpu)
            .unwrap()
            .reshape((1, 6, 1))
            .unwrap();
        let got = values(&PatchMerging::gather(&x, 3, 2).unwrap());
        // Row pair (0,1): (0,0)=0, (1,0)=10, (0,1)=1, (1,1)=11; row pair (2, pad): 20, 0, 21, 0.
        assert_eq!(got, vec![0., 10., 1., 11., 20., 0., 21., 0.]);
    }

    #[test]
    fn stage_shapes() {
        let config = SwinConfig {
            embed_dim: 4,
            depths: [1, 2, 1, 1],
            num_heads: [1, 1, 2, 2],
            window_size: 3,
        };
        let swin = Swin::load(&config, SeededInit::new(1).var_builder()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 40, 24), &Device::Cpu).unwrap();
        let outs = swin.forward(&x).unwrap();
        let shapes: Vec<_> = outs.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![1, 4, 10, 6],
                vec![1, 8, 5, 3],
                vec![1, 16, 3, 2],
                vec![1, 32, 2, 1]
            ]
        );
        for t in &outs {
            assert!(values(t).iter().all(|v| v.is_finite()));
        }
    }
}
