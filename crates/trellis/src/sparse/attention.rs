//! Full attention over variable-length batch items: TRELLIS'
//! `sparse_scaled_dot_product_attention` (flash-attn's `varlen` functions, or xformers'
//! block-diagonal mask), where the queries of batch item `i` attend to the keys and
//! values of item `i` only.
//!
//! Rows are packed item after item (`[T, H·D]`, the layout of [`SparseTensor`] features
//! and of a dense `[B, L, H·D]` context flattened to `[B·L, H·D]`). When every item has
//! the same query length and the same key length (the sampler's conditional and
//! unconditional passes over one voxel set), the packed rows are one dense `[B, N, H·D]`
//! batch and go through [`splatforge_nn::ops::attention`] in one call; otherwise
//! each item is one call.
//!
//! [`SparseTensor`]: super::SparseTensor

use candle_core::Tensor;
use splatforge_nn::ops::attention;

use crate::{Result, TrellisError};

/// Multi-head softmax attention (scale `D^−½`) per batch item: `q` `[Σ q_lens, H·D]`,
/// `k`, `v` `[Σ kv_lens, H·D]`, item `i` owning the `i`-th run of `q_lens[i]` query rows
/// and `kv_lens[i]` key rows → `[Σ q_lens, H·D]`.
///
/// Fails when the lengths don't add up to the row counts, the lists differ in length,
/// or an item has queries but no keys.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_lens: &[usize],
    kv_lens: &[usize],
    heads: usize,
) -> Result<Tensor> {
    let (q_rows, width) = q.dims2()?;
    let (k_rows, v_rows) = (k.dim(0)?, v.dim(0)?);
    if q_lens.len() != kv_lens.len()
        || q_lens.iter().sum::<usize>() != q_rows
        || kv_lens.iter().sum::<usize>() != k_rows
        || k_rows != v_rows
    {
        return Err(TrellisError::InvalidArgument(format!(
            "varlen attention: {q_rows} query rows for lengths {q_lens:?}, {k_rows} key and {v_rows} value rows for lengths {kv_lens:?}"
        )));
    }
    if let Some(i) = q_lens
        .iter()
        .zip(kv_lens)
        .position(|(&nq, &nk)| nq > 0 && nk == 0)
    {
        return Err(TrellisError::InvalidArgument(format!(
            "varlen attention: batch item {i} has queries but no keys"
        )));
    }
    let items = q_lens.len();
    if items == 0 || q_rows == 0 {
        return Ok(q.zeros_like()?);
    }
    let uniform =
        q_lens.iter().all(|&n| n == q_lens[0]) && kv_lens.iter().all(|&n| n == kv_lens[0]);
    if uniform {
        let (nq, nk) = (q_lens[0], kv_lens[0]);
        let out = attention(
            &q.reshape((items, nq, width))?,
            &k.reshape((items, nk, k.dim(1)?))?,
            &v.reshape((items, nk, v.dim(1)?))?,
            heads,
        )?;
        return Ok(out.reshape((q_rows, out.dim(2)?))?);
    }
    let (mut q_start, mut kv_start) = (0, 0);
    let mut outputs = Vec::with_capacity(items);
    for (&nq, &nk) in q_lens.iter().zip(kv_lens) {
        if nq > 0 {
            let item = |t: &Tensor, start: usize, len: usize| t.narrow(0, start, len)?.unsqueeze(0);
            let out = attention(
                &item(q, q_start, nq)?,
                &item(k, kv_start, nk)?,
                &item(v, kv_start, nk)?,
                heads,
            )?;
            outputs.push(out.squeeze(0)?);
        }
        q_start += nq;
        kv_start += nk;
    }
    Ok(Tensor::cat(&outputs, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use splatforge_nn::ops::attention_reference;

    /// Per item, dense attention written out: softmax(q kᵀ / √D) v for each head.
    fn per_item_reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        q_lens: &[usize],
        kv_lens: &[usize],
        heads: usize,
    ) -> Vec<f32> {
        let (q, k, v) = (
            q.to_vec2::<f32>().unwrap(),
            k.to_vec2::<f32>().unwrap(),
            v.to_vec2::<f32>().unwrap(),
        );
        let d = q[0].len() / heads;
        let mut out = Vec::new();
        let (mut qs, mut ks) = (0, 0);
        for (&nq, &nk) in q_lens.iter().zip(kv_lens) {
            for q_row in q.iter().skip(qs).take(nq) {
                let mut row = vec![0f32; heads * d];
                for h in 0..heads {
                    let dot = |kj: usize| {
                        (0..d)
                            .map(|c| q_row[h * d + c] * k[kj][h * d + c])
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    };
                    let scores: Vec<f32> = (ks..ks + nk).map(dot).collect();
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    for (e, kj) in exps.iter().zip(ks..ks + nk) {
                        for c in 0..d {
                            row[h * d + c] += e / total * v[kj][h * d + c];
                        }
                    }
                }
                out.extend(row);
            }
            qs += nq;
            ks += nk;
        }
        out
    }

    fn assert_close(got: &Tensor, want: &[f32]) {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn variable_lengths_match_per_item_attention() {
        let (heads, width) = (2, 8);
        let (q_lens, kv_lens) = ([3, 0, 5], [4, 2, 1]);
        let q = Tensor::randn(0f32, 1.0, (8, width), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (7, width), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (7, width), &Device::Cpu).unwrap();
        let got = varlen_attention(&q, &k, &v, &q_lens, &kv_lens, heads).unwrap();
        assert_close(
            &got,
            &per_item_reference(&q, &k, &v, &q_lens, &kv_lens, heads),
        );
    }

    #[test]
    fn equal_lengths_match_per_item_attention_and_the_dense_batch() {
        let (heads, width) = (4, 16);
        let (q_lens, kv_lens) = ([6, 6], [5, 5]);
        let q = Tensor::randn(0f32, 1.0, (12, width), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (10, width), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (10, width), &Device::Cpu).unwrap();
        let got = varlen_attention(&q, &k, &v, &q_lens, &kv_lens, heads).unwrap();
        assert_close(
            &got,
            &per_item_reference(&q, &k, &v, &q_lens, &kv_lens, heads),
        );
        let dense = attention_reference(
            &q.reshape((2, 6, width)).unwrap(),
            &k.reshape((2, 5, width)).unwrap(),
            &v.reshape((2, 5, width)).unwrap(),
            heads,
        )
        .unwrap();
        let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&got, &dense);
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let t = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(varlen_attention(&t, &t, &t, &[2, 1], &[2, 2], 1).is_err());
        assert!(varlen_attention(&t, &t, &t, &[2, 2], &[4], 1).is_err());
        assert!(varlen_attention(&t, &t, &t, &[2, 2], &[4, 0], 1).is_err());
    }
}
