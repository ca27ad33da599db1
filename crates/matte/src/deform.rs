//! Modulated deformable convolution: torchvision's `deform_conv2d` (one offset group, one
//! weight group, dilation 1) and BiRefNet's `DeformableConv2d` module around it
//! (`models/modules/deform_conv.py`): an offset convolution and a modulator convolution
//! (`2·sigmoid`) of the input steer a regular convolution's taps.
//!
//! Each tap `k = (i, j)` of output `(oy, ox)` samples the input bilinearly at
//! `(oy·stride − pad + i + Δy, ox·stride − pad + j + Δx)`, zero outside the image (torchvision
//! drops each of the four neighbours that falls outside), and scales the sample by the tap's
//! modulator. Offsets are stored per tap as `(Δy, Δx)` channel pairs: channel `2k` is `Δy`,
//! `2k + 1` is `Δx`.
//!
//! The implementation gathers the four neighbours of every tap with `index_select`, weights
//! and sums them (im2col), then multiplies by the kernel. It runs in f32 whatever the model's
//! dtype, as torchvision's autocast rule for `deform_conv2d` does; on any candle device.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{init::DEFAULT_KAIMING_NORMAL, VarBuilder};
use splatforge_nn::ops::Conv2d;

use crate::layers::conv2d;

/// `deform_conv2d(input, offset, weight, bias, stride, padding, mask=mask)`:
/// `x [B, C, H, W]`, `offset [B, 2K², Ho, Wo]` (pixels), `mask [B, K², Ho, Wo]`,
/// `weight [O, C, K, K]`, `bias [O]` → `[B, O, Ho, Wo]` in `x`'s dtype, where
/// `Ho = (H + 2·pad − K) / stride + 1` (likewise `Wo`).
pub fn deform_conv2d(
    x: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || stride == 0 || h + 2 * padding < k || w + 2 * padding < k {
        candle_core::bail!(
            "deform_conv2d: input {:?}, weight {:?}, stride {stride}, padding {padding}",
            x.dims(),
            weight.dims()
        )
    }
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (w + 2 * padding - k) / stride + 1;
    let taps = k * k;
    if offset.dims() != [b, 2 * taps, ho, wo] || mask.dims() != [b, taps, ho, wo] {
        candle_core::bail!(
            "deform_conv2d: offset {:?} / mask {:?} for {taps} taps on a {ho}×{wo} output",
            offset.dims(),
            mask.dims()
        )
    }
    let dev = x.device();
    let (base_y, base_x) = tap_grid(k, ho, wo, stride, padding, dev)?;
    let offset = offset.to_dtype(DType::F32)?.reshape((b, taps, 2, ho, wo))?;
    let py = offset.narrow(2, 0, 1)?.squeeze(2)?.broadcast_add(&base_y)?;
    let px = offset.narrow(2, 1, 1)?.squeeze(2)?.broadcast_add(&base_x)?;
    let mask = mask.to_dtype(DType::F32)?;
    let y0 = py.floor()?;
    let x0 = px.floor()?;
    let ly = (&py - &y0)?;
    let lx = (&px - &x0)?;
    let xf = x.to_dtype(DType::F32)?;
    // Each corner: (row, column, bilinear weight).
    let corners = [
        (y0.clone(), x0.clone(), ((1.0 - &ly)? * (1.0 - &lx)?)?),
        (y0.clone(), (&x0 + 1.0)?, ((1.0 - &ly)? * &lx)?),
        ((&y0 + 1.0)?, x0.clone(), (&ly * (1.0 - &lx)?)?),
        ((&y0 + 1.0)?, (&x0 + 1.0)?, (&ly * &lx)?),
    ];
    let weight2 = weight.to_dtype(DType::F32)?.reshape((o, c * taps))?.t()?;
    let mut outs = Vec::with_capacity(b);
    for bi in 0..b {
        // [H·W, C]: one row per pixel, so gathering pixels is an index_select of rows.
        let pixels = xf.get(bi)?.reshape((c, h * w))?.t()?.contiguous()?;
        let mut cols: Option<Tensor> = None;
        for (cy, cx, cw) in &corners {
            let (cy, cx) = (cy.get(bi)?, cx.get(bi)?);
            let inside = cy
                .ge(0.0)?
                .mul(&cy.le((h - 1) as f64)?)?
                .mul(&cx.ge(0.0)?)?
                .mul(&cx.le((w - 1) as f64)?)?
                .to_dtype(DType::F32)?;
            let index = (cy.clamp(0.0, (h - 1) as f64)? * w as f64)?
                .add(&cx.clamp(0.0, (w - 1) as f64)?)?
                .to_dtype(DType::U32)?
                .flatten_all()?;
            let scale = (cw.get(bi)? * inside)?.mul(&mask.get(bi)?)?;
            let sampled = pixels
                .index_select(&index, 0)?
                .broadcast_mul(&scale.flatten_all()?.unsqueeze(1)?)?;
            cols = Some(match cols {
                None => sampled,
                Some(acc) => (acc + sampled)?,
            });
        }
        let cols = cols.expect("four corners");
        // [K², Ho·Wo, C] → [Ho·Wo, C·K²] (the kernel's (c, i, j) order).
        let cols = cols
            .reshape((taps, ho * wo, c))?
            .permute((1, 2, 0))?
            .reshape((ho * wo, c * taps))?;
        let out = cols.matmul(&weight2)?.t()?.reshape((o, ho, wo))?;
        outs.push(out);
    }
    let mut out = Tensor::stack(&outs, 0)?;
    if let Some(bias) = bias {
        out = out.broadcast_add(&bias.to_dtype(DType::F32)?.reshape((1, o, 1, 1))?)?;
    }
    out.to_dtype(x.dtype())
}

/// The undeformed sampling rows and columns of every tap: `[1, K², Ho, Wo]` f32 each.
fn tap_grid(
    k: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    padding: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut ys = Vec::with_capacity(k * k * ho * wo);
    let mut xs = Vec::with_capacity(k * k * ho * wo);
    for i in 0..k {
        for j in 0..k {
            for oy in 0..ho {
                for ox in 0..wo {
                    ys.push((oy * stride + i) as f32 - padding as f32);
                    xs.push((ox * stride + j) as f32 - padding as f32);
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(ys, (1, k * k, ho, wo), dev)?,
        Tensor::from_vec(xs, (1, k * k, ho, wo), dev)?,
    ))
}

/// `DeformableConv2d` (`bias=False` as ASPPDeformable builds it; stride 1).
#[derive(Debug, Clone)]
pub struct DeformableConv2d {
    offset_conv: Conv2d,
    modulator_conv: Conv2d,
    /// `[O, C, K, K]`: `regular_conv.weight`.
    weight: Tensor,
    padding: usize,
}

impl DeformableConv2d {
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let taps = kernel * kernel;
        Ok(Self {
            offset_conv: conv2d(
                in_channels,
                2 * taps,
                kernel,
                1,
                padding,
                true,
                vb.pp("offset_conv"),
            )?,
            modulator_conv: conv2d(
                in_channels,
                taps,
                kernel,
                1,
                padding,
                true,
                vb.pp("modulator_conv"),
            )?,
            weight: vb.pp("regular_conv").get_with_hints(
                (out_channels, in_channels, kernel, kernel),
                "weight",
                DEFAULT_KAIMING_NORMAL,
            )?,
            padding,
        })
    }

    /// `x [B, C, H, W]` → `[B, O, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let offset = self.offset_conv.forward(x)?;
        let modulator = (candle_nn::ops::sigmoid(&self.modulator_conv.forward(x)?)? * 2.0)?;
        deform_conv2d(x, &offset, &modulator, &self.weight, None, 1, self.padding)
    }
}

/// The mean over the spatial dimensions in f32: `x [B, C, H, W]` → `[B, C, 1, 1]` in `x`'s dtype.
pub(crate) fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?
        .mean_keepdim(D::Minus1)?
        .mean_keepdim(D::Minus2)?
        .to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchvision's `bilinear_interpolate`, literally: zero when the point is at or beyond
    /// one pixel outside the image, else the in-image neighbours weighted.
    fn bilinear(img: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
        if y <= -1.0 || y >= h as f32 || x <= -1.0 || x >= w as f32 {
            return 0.0;
        }
        let (yl, xl) = (y.floor() as i64, x.floor() as i64);
        let (ly, lx) = (y - yl as f32, x - xl as f32);
        let px = |yy: i64, xx: i64| {
            if yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64 {
                img[yy as usize * w + xx as usize]
            } else {
                0.0
            }
        };
        (1.0 - ly) * (1.0 - lx) * px(yl, xl)
            + (1.0 - ly) * lx * px(yl, xl + 1)
            + ly * (1.0 - lx) * px(yl + 1, xl)
            + ly * lx * px(yl + 1, xl + 1)
    }

    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        offset: &[f32],
        mask: &[f32],
        weight: &[f32],
        bias: &[f32],
        (o, k): (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Vec<f32> {
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let mut out = vec![0f32; b * o * ho * wo];
        for bi in 0..b {
            for oc in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[oc];
                        for i in 0..k {
                            for j in 0..k {
                                let t = i * k + j;
                                let at = |ch: usize| ((bi * (2 * k * k) + ch) * ho + oy) * wo + ox;
                                let dy = offset[at(2 * t)];
                                let dx = offset[at(2 * t + 1)];
                                let m = mask[((bi * k * k + t) * ho + oy) * wo + ox];
                                let y = (oy * stride + i) as f32 - pad as f32 + dy;
                                let xx = (ox * stride + j) as f32 - pad as f32 + dx;
                                for ic in 0..c {
                                    let img = &x[(bi * c + ic) * h * w..(bi * c + ic + 1) * h * w];
                                    acc += weight[((oc * c + ic) * k + i) * k + j]
                                        * m
                                        * bilinear(img, h, w, y, xx);
                                }
                            }
                        }
                        out[((bi * o + oc) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn matches_direct_loop() {
        let dev = Device::Cpu;
        for (k, stride, pad) in [(3, 1, 1), (1, 1, 0), (3, 2, 2), (5, 1, 2)] {
            let (b, c, h, w, o) = (2, 3, 6, 5, 4);
            let ho = (h + 2 * pad - k) / stride + 1;
            let wo = (w + 2 * pad - k) / stride + 1;
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            // Offsets of a few pixels send many taps past the border.
            let offset = Tensor::randn(0f32, 2.5, (b, 2 * k * k, ho, wo), &dev).unwrap();
            let mask = Tensor::rand(0f32, 2.0, (b, k * k, ho, wo), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let ours =
                deform_conv2d(&x, &offset, &mask, &weight, Some(&bias), stride, pad).unwrap();
            assert_eq!(ours.dims(), [b, o, ho, wo]);
            let want = direct(
                &v(&x),
                (b, c, h, w),
                &v(&offset),
                &v(&mask),
                &v(&weight),
                &v(&bias),
                (o, k),
                stride,
                pad,
            );
            for (i, (a, e)) in v(&ours).iter().zip(&want).enumerate() {
                assert!(
                    (a - e).abs() < 1e-4,
                    "k {k} stride {stride}: {i}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn zero_offsets_unit_mask_is_a_convolution() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 4), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (3, 2, 3, 3), &dev).unwrap();
        let offset = Tensor::zeros((1, 18, 5, 4), DType::F32, &dev).unwrap();
        let mask = Tensor::ones((1, 9, 5, 4), DType::F32, &dev).unwrap();
        let ours = deform_conv2d(&x, &offset, &mask, &weight, None, 1, 1).unwrap();
        let conv = x.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let d = (ours - conv).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn refuses_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        let weight = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev).unwrap();
        let offset = Tensor::zeros((1, 18, 4, 3), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 9, 4, 4), DType::F32, &dev).unwrap();
        assert!(deform_conv2d(&x, &offset, &mask, &weight, None, 1, 1).is_err());
    }
}
