//! Tests of the shared blocks against written-out f64 references; the reference helpers
//! (`Mat`, `lin`, `layer_norm`, `max_diff`) serve the models' tests too.

use super::*;
use candle_core::Device;
use splatforge_nn::weights::SeededInit;
use std::collections::BTreeMap;

/// A row-major f64 matrix, the written-out reference's data.
#[derive(Debug, Clone)]
pub(crate) struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<f64>,
}

impl Mat {
    pub fn of(t: &Tensor) -> Mat {
        let cols = *t.dims().last().unwrap();
        let v: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        Mat {
            rows: v.len() / cols,
            cols,
            v,
        }
    }
    pub fn row(&self, r: usize) -> &[f64] {
        &self.v[r * self.cols..(r + 1) * self.cols]
    }
    pub fn map_rows(&self, f: impl Fn(&[f64]) -> Vec<f64>) -> Mat {
        let v: Vec<f64> = (0..self.rows).flat_map(|r| f(self.row(r))).collect();
        Mat {
            rows: self.rows,
            cols: v.len() / self.rows.max(1),
            v,
        }
    }
    pub fn add(&self, o: &Mat) -> Mat {
        Mat {
            rows: self.rows,
            cols: self.cols,
            v: self.v.iter().zip(&o.v).map(|(a, b)| a + b).collect(),
        }
    }
}

pub(crate) fn max_diff(a: &Tensor, b: &Mat) -> f64 {
    let a = Mat::of(a);
    assert_eq!(a.v.len(), b.v.len(), "sizes differ");
    a.v.iter()
        .zip(&b.v)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `x·Wᵀ + b` with the weights named `prefix.weight`, `prefix.bias`.
pub(crate) fn lin(w: &BTreeMap<String, Tensor>, prefix: &str, x: &Mat) -> Mat {
    let wt = Mat::of(&w[&format!("{prefix}.weight")]);
    let b = w.get(&format!("{prefix}.bias")).map(Mat::of);
    x.map_rows(|r| {
        (0..wt.rows)
            .map(|o| {
                wt.row(o).iter().zip(r).map(|(a, b)| a * b).sum::<f64>()
                    + b.as_ref().map_or(0.0, |b| b.v[o])
            })
            .collect()
    })
}

pub(crate) fn layer_norm(x: &Mat, eps: f64, affine: Option<(&Mat, &Mat)>) -> Mat {
    x.map_rows(|r| {
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        r.iter()
            .enumerate()
            .map(|(i, v)| {
                let y = (v - mean) / (var + eps).sqrt();
                affine.map_or(y, |(w, b)| y * w.v[i] + b.v[i])
            })
            .collect()
    })
}

fn gelu_tanh(v: f64) -> f64 {
    0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
}

/// F.normalize per head, times gamma·√D.
fn qk_norm(x: &Mat, gamma: &Mat) -> Mat {
    let d = gamma.cols;
    x.map_rows(|r| {
        r.chunks(d)
            .enumerate()
            .flat_map(|(h, head)| {
                let norm = head.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                head.iter()
                    .enumerate()
                    .map(move |(j, v)| v / norm * gamma.v[h * d + j] * (d as f64).sqrt())
                    .collect::<Vec<_>>()
            })
            .collect()
    })
}

/// Softmax attention of one batch item, heads of `d` channels.
fn attention(q: &Mat, k: &Mat, v: &Mat, heads: usize) -> Mat {
    let d = q.cols / heads;
    let mut out = vec![0.0; q.rows * q.cols];
    for h in 0..heads {
        for i in 0..q.rows {
            let s: Vec<f64> = (0..k.rows)
                .map(|j| {
                    (0..d)
                        .map(|c| q.v[i * q.cols + h * d + c] * k.v[j * k.cols + h * d + c])
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..d {
                out[i * q.cols + h * d + c] = (0..k.rows)
                    .map(|j| e[j] / z * v.v[j * v.cols + h * d + c])
                    .sum();
            }
        }
    }
    Mat {
        rows: q.rows,
        cols: q.cols,
        v: out,
    }
}

fn cols(x: &Mat, start: usize, n: usize) -> Mat {
    x.map_rows(|r| r[start..start + n].to_vec())
}

fn mul_add(x: &Mat, a: &[f64], b: &[f64]) -> Mat {
    x.map_rows(|r| r.iter().enumerate().map(|(i, v)| v * a[i] + b[i]).collect())
}

/// The modulated cross block of one batch item written out: `x [N, C]`, `emb [C]`,
/// `ctx [L, C_ctx]`, weights by their official names under `p`.
fn modulated_cross_block(
    w: &BTreeMap<String, Tensor>,
    p: &str,
    x: &Mat,
    emb: &[f64],
    ctx: &Mat,
    heads: usize,
) -> Mat {
    let c = x.cols;
    let silu: Vec<f64> = emb.iter().map(|v| v / (1.0 + (-v).exp())).collect();
    let m = lin(
        w,
        &format!("{p}.adaLN_modulation.1"),
        &Mat {
            rows: 1,
            cols: c,
            v: silu,
        },
    );
    let t = |i: usize| m.v[i * c..(i + 1) * c].to_vec();
    let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) =
        (t(0), t(1), t(2), t(3), t(4), t(5));
    let one_plus = |s: &[f64]| s.iter().map(|v| 1.0 + v).collect::<Vec<_>>();
    let zeros = vec![0.0; c];
    let gamma = |n: &str| Mat::of(&w[&format!("{p}.{n}.gamma")]);

    let h = mul_add(
        &layer_norm(x, 1e-6, None),
        &one_plus(&scale_msa),
        &shift_msa,
    );
    let qkv = lin(w, &format!("{p}.self_attn.to_qkv"), &h);
    let q = qk_norm(&cols(&qkv, 0, c), &gamma("self_attn.q_rms_norm"));
    let k = qk_norm(&cols(&qkv, c, c), &gamma("self_attn.k_rms_norm"));
    let a = lin(
        w,
        &format!("{p}.self_attn.to_out"),
        &attention(&q, &k, &cols(&qkv, 2 * c, c), heads),
    );
    let x = x.add(&mul_add(&a, &gate_msa, &zeros));

    let n2 = (
        Mat::of(&w[&format!("{p}.norm2.weight")]),
        Mat::of(&w[&format!("{p}.norm2.bias")]),
    );
    let h = layer_norm(&x, 1e-6, Some((&n2.0, &n2.1)));
    let q = qk_norm(
        &lin(w, &format!("{p}.cross_attn.to_q"), &h),
        &gamma("cross_attn.q_rms_norm"),
    );
    let kv = lin(w, &format!("{p}.cross_attn.to_kv"), ctx);
    let k = qk_norm(&cols(&kv, 0, c), &gamma("cross_attn.k_rms_norm"));
    let a = lin(
        w,
        &format!("{p}.cross_attn.to_out"),
        &attention(&q, &k, &cols(&kv, c, c), heads),
    );
    let x = x.add(&a);

    let h = mul_add(
        &layer_norm(&x, 1e-6, None),
        &one_plus(&scale_mlp),
        &shift_mlp,
    );
    let h = lin(w, &format!("{p}.mlp.mlp.0"), &h)
        .map_rows(|r| r.iter().map(|v| gelu_tanh(*v)).collect());
    let h = lin(w, &format!("{p}.mlp.mlp.2"), &h);
    x.add(&mul_add(&h, &gate_mlp, &zeros))
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    let init = SeededInit::new(seed);
    init.var_builder()
        .get_with_hints(
            dims,
            "x",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )
        .unwrap()
}

const CONFIG: BlockConfig = BlockConfig {
    channels: 8,
    heads: 2,
    mlp_ratio: 2.5,
    qkv_bias: true,
    qk_rms_norm: true,
};

#[test]
fn modulated_cross_block_follows_its_equations() {
    let init = SeededInit::new(7);
    let block = ModulatedTransformerCrossBlock::load(
        CONFIG,
        6,
        true,
        false,
        init.var_builder().pp("blocks.0"),
    )
    .unwrap();
    let weights = init.tensors();
    let names: Vec<&str> = weights.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blocks.0.adaLN_modulation.1.bias",
            "blocks.0.adaLN_modulation.1.weight",
            "blocks.0.cross_attn.k_rms_norm.gamma",
            "blocks.0.cross_attn.q_rms_norm.gamma",
            "blocks.0.cross_attn.to_kv.bias",
            "blocks.0.cross_attn.to_kv.weight",
            "blocks.0.cross_attn.to_out.bias",
            "blocks.0.cross_attn.to_out.weight",
            "blocks.0.cross_attn.to_q.bias",
            "blocks.0.cross_attn.to_q.weight",
            "blocks.0.mlp.mlp.0.bias",
            "blocks.0.mlp.mlp.0.weight",
            "blocks.0.mlp.mlp.2.bias",
            "blocks.0.mlp.mlp.2.weight",
            "blocks.0.norm2.bias",
            "blocks.0.norm2.weight",
            "blocks.0.self_attn.k_rms_norm.gamma",
            "blocks.0.self_attn.q_rms_norm.gamma",
            "blocks.0.self_attn.to_out.bias",
            "blocks.0.self_attn.to_out.weight",
            "blocks.0.self_attn.to_qkv.bias",
            "blocks.0.self_attn.to_qkv.weight",
        ]
    );
    assert_eq!(weights["blocks.0.mlp.mlp.0.weight"].dims(), &[20, 8]);
    let (b, n, l) = (2, 5, 3);
    let x = randn(&[b, n, 8], 1);
    let emb = randn(&[b, 8], 2);
    let ctx = randn(&[b, l, 6], 3);
    let y = block.forward(&x, &emb, &ctx).unwrap();
    assert_eq!(y.dims(), &[b, n, 8]);
    for i in 0..b {
        let item = |t: &Tensor| Mat::of(&t.get(i).unwrap());
        let want = modulated_cross_block(
            &weights,
            "blocks.0",
            &item(&x),
            &item(&emb).v,
            &item(&ctx),
            2,
        );
        let diff = max_diff(&y.get(i).unwrap(), &want);
        assert!(diff < 1e-4, "batch item {i}: max |Δ| {diff}");
    }
}

#[test]
fn per_row_terms_and_custom_attention_match_the_dense_block() {
    // The sparse models' use: both items' tokens as one [1, rows, C] sequence, terms
    // gathered per row, attention restricted to each item's rows.
    let init = SeededInit::new(11);
    let block =
        ModulatedTransformerCrossBlock::load(CONFIG, 6, true, false, init.var_builder()).unwrap();
    let (b, n, l) = (2, 4, 3);
    let x = randn(&[b, n, 8], 4);
    let emb = randn(&[b, 8], 5);
    let ctx = randn(&[b, l, 6], 6);
    let dense = block.forward(&x, &emb, &ctx).unwrap();

    let rows_of_item: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, n))
        .collect();
    let index = Tensor::new(rows_of_item.as_slice(), &Device::Cpu).unwrap();
    let terms = block
        .modulation_terms(&emb)
        .unwrap()
        .map(|t| Ok(t.squeeze(1)?.index_select(&index, 0)?.unsqueeze(0)?))
        .unwrap();
    let by_item = |q: &Tensor,
                   k: &Tensor,
                   v: &Tensor,
                   heads: usize,
                   kv_rows: usize|
     -> candle_core::Result<Tensor> {
        let q = q.reshape((b, n, 8))?;
        let (k, v) = (k.reshape((b, kv_rows, 8))?, v.reshape((b, kv_rows, 8))?);
        dense_attention(&q, &k, &v, heads)?.reshape((1, b * n, 8))
    };
    let self_attend = |q: &Tensor, k: &Tensor, v: &Tensor, h: usize| by_item(q, k, v, h, n);
    let cross_attend = |q: &Tensor, k: &Tensor, v: &Tensor, h: usize| by_item(q, k, v, h, l);
    let flat = block
        .forward_with(
            &x.reshape((1, b * n, 8)).unwrap(),
            &terms,
            &ctx,
            &self_attend,
            &cross_attend,
        )
        .unwrap();
    let diff = (flat.reshape((b, n, 8)).unwrap() - dense)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "max |Δ| {diff}");
}

#[test]
fn transformer_block_follows_its_equations() {
    let init = SeededInit::new(3);
    let config = BlockConfig {
        qk_rms_norm: false,
        mlp_ratio: 4.0,
        ..CONFIG
    };
    let block = TransformerBlock::load(config, true, init.var_builder()).unwrap();
    let w = init.tensors();
    assert!(
        w.contains_key("norm1.weight")
            && w.contains_key("attn.to_qkv.weight")
            && !w.contains_key("attn.q_rms_norm.gamma")
    );
    let x = randn(&[1, 6, 8], 9);
    let y = block.forward(&x).unwrap();
    let xm = Mat::of(&x.get(0).unwrap());
    let norm = |name: &str, x: &Mat| {
        layer_norm(
            x,
            1e-6,
            Some((
                &Mat::of(&w[&format!("{name}.weight")]),
                &Mat::of(&w[&format!("{name}.bias")]),
            )),
        )
    };
    let qkv = lin(&w, "attn.to_qkv", &norm("norm1", &xm));
    let a = attention(&cols(&qkv, 0, 8), &cols(&qkv, 8, 8), &cols(&qkv, 16, 8), 2);
    let xm = xm.add(&lin(&w, "attn.to_out", &a));
    let h = lin(&w, "mlp.mlp.0", &norm("norm2", &xm))
        .map_rows(|r| r.iter().map(|v| gelu_tanh(*v)).collect());
    let want = xm.add(&lin(&w, "mlp.mlp.2", &h));
    let diff = max_diff(&y.get(0).unwrap(), &want);
    assert!(diff < 1e-4, "max |Δ| {diff}");
}

#[test]
fn norms_compute_in_f32_and_keep_the_input_dtype() {
    let init = SeededInit::new(5);
    let vb = init.var_builder();
    let ln = LayerNorm32::load(8, 1e-6, false, vb.pp("ln")).unwrap();
    let rms = MultiHeadRmsNorm::load(4, 2, vb.pp("rms")).unwrap();
    let x = (randn(&[3, 8], 8) * 3.0).unwrap();
    let want = layer_norm(&Mat::of(&x), 1e-6, None);
    assert!(max_diff(&ln.forward(&x).unwrap(), &want) < 1e-5);
    let y = ln.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert!(max_diff(&y, &want) < 0.05);

    let gamma = Mat::of(&init.tensors()["rms.gamma"]);
    assert!(max_diff(&rms.forward(&x).unwrap(), &qk_norm(&Mat::of(&x), &gamma)) < 1e-5);
    let zero = Tensor::zeros((1, 8), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        Mat::of(&rms.forward(&zero).unwrap()).v,
        vec![0.0; 8],
        "F.normalize maps 0 to 0"
    );
    assert_eq!(
        rms.forward(&x.to_dtype(DType::F16).unwrap())
            .unwrap()
            .dtype(),
        DType::F16
    );
}

#[test]
fn timestep_features_follow_glide() {
    let t = Tensor::new(&[0f32, 1.5, 999.0], &Device::Cpu).unwrap();
    for dim in [8usize, 9] {
        let f = Mat::of(&timestep_features(&t, dim).unwrap());
        assert_eq!((f.rows, f.cols), (3, dim));
        let half = dim / 2;
        for (r, tv) in [0.0, 1.5, 999.0].iter().enumerate() {
            for i in 0..half {
                let arg = tv * (-(10000f64.ln()) * i as f64 / half as f64).exp();
                assert!(
                    (f.v[r * dim + i] - arg.cos()).abs() < 2e-3,
                    "cos t={tv} i={i}"
                );
                assert!(
                    (f.v[r * dim + half + i] - arg.sin()).abs() < 2e-3,
                    "sin t={tv} i={i}"
                );
            }
            if dim % 2 == 1 {
                assert_eq!(f.v[r * dim + dim - 1], 0.0);
            }
        }
    }
}

#[test]
fn position_embedding_is_sin_cos_per_axis_zero_padded() {
    // 20 channels over 3 axes: 3 frequencies, 18 used, 2 zeros.
    let pe = AbsolutePositionEmbedder::new(20, 3).unwrap();
    let e = Mat::of(&pe.embed(&[0, 1, 2, 5, 3, 7], &Device::Cpu).unwrap());
    assert_eq!((e.rows, e.cols), (2, 20));
    for (r, point) in [[0.0, 1.0, 2.0], [5.0, 3.0, 7.0]].iter().enumerate() {
        for (axis, x) in point.iter().enumerate() {
            for j in 0..3 {
                let arg = x * 10000f64.powf(-(j as f64) / 3.0);
                assert!((e.v[r * 20 + axis * 6 + j] - arg.sin()).abs() < 1e-5);
                assert!((e.v[r * 20 + axis * 6 + 3 + j] - arg.cos()).abs() < 1e-5);
            }
        }
        assert_eq!(&e.v[r * 20 + 18..r * 20 + 20], &[0.0, 0.0]);
    }
    assert!(pe.embed(&[1, 2], &Device::Cpu).is_err());
    assert!(AbsolutePositionEmbedder::new(5, 3).is_err());
}

#[test]
fn timestep_embedder_loads_its_official_names() {
    let init = SeededInit::new(1);
    let te = TimestepEmbedder::load(16, init.var_builder().pp("t_embedder")).unwrap();
    let y = te
        .forward(&Tensor::new(&[500f32, 20.0], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[2, 16]);
    let w = init.tensors();
    assert_eq!(w["t_embedder.mlp.0.weight"].dims(), &[16, 256]);
    assert_eq!(w["t_embedder.mlp.2.weight"].dims(), &[16, 16]);
    let f =
        Mat::of(&timestep_features(&Tensor::new(&[500f32], &Device::Cpu).unwrap(), 256).unwrap());
    let h = lin(&w, "t_embedder.mlp.0", &f)
        .map_rows(|r| r.iter().map(|v| v / (1.0 + (-v).exp())).collect());
    assert!(
        max_diff(
            &y.get(0).unwrap().unsqueeze(0).unwrap(),
            &lin(&w, "t_embedder.mlp.2", &h)
        ) < 1e-4
    );
}
