//! Modulated deformable convolution: torchvision's `deform_conv2d` (one offset group, one
//! weight group, dilation 1), as BiRefNet's decoder calls it.
//!
//! Each tap `k = (i, j)` of output `(oy, ox)` samples the input bilinearly at
//! `(oy·stride − pad + i + Δy, ox·stride − pad + j + Δx)`, zero at or beyond one pixel
//! outside the image (torchvision drops each of the four neighbours that falls outside), and
//! scales the sample by the tap's modulator. Offsets are stored per tap as `(Δy, Δx)` channel
//! pairs: channel `2k` is `Δy`, `2k + 1` is `Δx`.
//!
//! Two halves, as torchvision runs it: the samples go into a column matrix
//! `[B, C·K², Ho·Wo]` ([`DeformIm2col`]: `cuda/deform.cu` on the GPU, a loop here on the
//! CPU), then one matrix product per batch item with the kernel `[O, C·K²]` gives the output
//! planes. The columns are made a band of output rows at a time, so that their size stays
//! under [`COLS_BUDGET`] whatever the input.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements of one band of columns (256 MiB in bf16): BiRefNet's 7×7 taps over 64 channels
/// at 256² take two bands.
const COLS_BUDGET: usize = 1 << 27;

/// `deform_conv2d(input, offset, weight, bias, stride, padding, mask=mask)`:
/// `x [B, C, H, W]`, `offset [B, 2K², Ho, Wo]` (pixels), `mask [B, K², Ho, Wo]`,
/// `weight [O, C, K, K]`, `bias [O]` → `[B, O, Ho, Wo]` in `x`'s dtype, where
/// `Ho = (H + 2·pad − K) / stride + 1` (likewise `Wo`).
///
/// Precision: on the GPU the samples are computed in f32 and stored, like the product, in
/// `x`'s dtype (f32, f16 or bf16; f32 accumulation); on the CPU everything is f32.
pub fn deform_conv2d(
    x: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    banded(
        x,
        offset,
        mask,
        weight,
        bias,
        (stride, padding),
        COLS_BUDGET,
    )
}

/// [`deform_conv2d`] with columns of at most `budget` elements a band (at least one row).
fn banded(
    x: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    budget: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || k == 0 || stride == 0 || h + 2 * padding < k || w + 2 * padding < k {
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
    let dtype = match (x.device(), x.dtype()) {
        (candle_core::Device::Cuda(_), d @ (DType::F16 | DType::BF16)) => d,
        _ => DType::F32,
    };
    let prepare = |t: &Tensor| t.to_dtype(dtype)?.contiguous();
    let (xs, offset, mask) = (prepare(x)?, prepare(offset)?, prepare(mask)?);
    let kernel = weight.to_dtype(dtype)?.reshape((o, c * taps))?;
    let band = (budget / (b * c * taps * wo).max(1)).clamp(1, ho);
    let mut planes: Vec<Vec<Tensor>> = vec![Vec::new(); b];
    for row0 in (0..ho).step_by(band) {
        let op = DeformIm2col {
            kernel: k,
            stride,
            padding,
            row0,
            rows: band.min(ho - row0),
        };
        let cols = xs.apply_op3_no_bwd(&offset, &mask, &op)?;
        for (bi, plane) in planes.iter_mut().enumerate() {
            plane.push(kernel.matmul(&cols.get(bi)?)?);
        }
    }
    let planes = planes
        .iter()
        .map(|bands| Tensor::cat(bands, 1))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Tensor::stack(&planes, 0)?.reshape((b, o, ho, wo))?;
    if let Some(bias) = bias {
        out = out.broadcast_add(&bias.to_dtype(dtype)?.reshape((1, o, 1, 1))?)?;
    }
    out.to_dtype(x.dtype())
}

/// The column matrix of output rows `[row0, row0 + rows)` (the candle op over
/// `(x, offset, mask)`, contiguous, one dtype): `cols[b, c·K² + t, (oy − row0)·Wo + ox]` is
/// tap `t`'s modulated sample of channel `c` for output pixel `(oy, ox)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeformIm2col {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub row0: usize,
    pub rows: usize,
}

/// The sizes of one [`DeformIm2col`] call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Im2colGeometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl DeformIm2col {
    /// The geometry of `x` with this op's output size, checked against the offsets and mask.
    pub(super) fn geometry(
        &self,
        x: &Layout,
        offset: &Layout,
        mask: &Layout,
    ) -> Result<Im2colGeometry> {
        let (batch, channels, height, width) = x.shape().dims4()?;
        let k = self.kernel;
        let (out_height, out_width) = (
            (height + 2 * self.padding - k) / self.stride + 1,
            (width + 2 * self.padding - k) / self.stride + 1,
        );
        if offset.shape().dims() != [batch, 2 * k * k, out_height, out_width]
            || mask.shape().dims() != [batch, k * k, out_height, out_width]
            || self.rows == 0
            || self.row0 + self.rows > out_height
            || !(x.is_contiguous() && offset.is_contiguous() && mask.is_contiguous())
        {
            candle_core::bail!("deformable im2col: inputs of mismatched shapes or not contiguous")
        }
        Ok(Im2colGeometry {
            batch,
            channels,
            height,
            width,
            out_height,
            out_width,
        })
    }

    /// `[B, C·K², rows·Wo]`.
    pub(super) fn out_shape(&self, g: &Im2colGeometry) -> Shape {
        Shape::from((
            g.batch,
            g.channels * self.kernel * self.kernel,
            self.rows * g.out_width,
        ))
    }

    fn cpu(&self, g: &Im2colGeometry, x: &[f32], offset: &[f32], mask: &[f32]) -> Vec<f32> {
        let taps = self.kernel * self.kernel;
        let pixels = self.rows * g.out_width;
        let (plane_in, plane_out) = (g.height * g.width, g.out_height * g.out_width);
        let mut cols = vec![0f32; g.batch * g.channels * taps * pixels];
        cols.par_chunks_mut(pixels)
            .enumerate()
            .for_each(|(row, out)| {
                let tap = row % taps;
                let bc = row / taps; // b·C + c
                let b = bc / g.channels;
                let img = &x[bc * plane_in..(bc + 1) * plane_in];
                let (ty, tx) = (tap / self.kernel, tap % self.kernel);
                for (p, v) in out.iter_mut().enumerate() {
                    let (oy, ox) = (self.row0 + p / g.out_width, p % g.out_width);
                    let at = oy * g.out_width + ox;
                    let dy = offset[(b * 2 * taps + 2 * tap) * plane_out + at];
                    let dx = offset[(b * 2 * taps + 2 * tap + 1) * plane_out + at];
                    let m = mask[(b * taps + tap) * plane_out + at];
                    let py = (oy * self.stride + ty) as f32 - self.padding as f32 + dy;
                    let px = (ox * self.stride + tx) as f32 - self.padding as f32 + dx;
                    *v = bilinear(img, g.height, g.width, py, px, m);
                }
            });
        cols
    }
}

/// torchvision's `bilinear_interpolate` times `scale`, as `cuda/deform.cu` computes it: zero
/// at or beyond one pixel outside the image (NaN included), else the in-image corners, each
/// weighted by `scale` times its bilinear weight.
fn bilinear(img: &[f32], h: usize, w: usize, y: f32, x: f32, scale: f32) -> f32 {
    if !(y > -1.0 && x > -1.0 && y < h as f32 && x < w as f32) {
        return 0.0;
    }
    let (y0, x0) = (y.floor(), x.floor());
    let (ly, lx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as i64, x0 as i64);
    let mut v = 0f32;
    for (yy, wy) in [(y0, 1.0 - ly), (y0 + 1, ly)] {
        for (xx, wx) in [(x0, 1.0 - lx), (x0 + 1, lx)] {
            let inside = yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64;
            let weight = scale * wy * wx;
            if inside && weight != 0.0 {
                v += weight * img[yy as usize * w + xx as usize];
            }
        }
    }
    v
}

/// The f32 values a contiguous CPU layout covers, borrowed from the storage.
fn f32_values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("deformable im2col: not contiguous".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("deformable im2col on the CPU takes f32"),
    }
}

impl CustomOp3 for DeformIm2col {
    fn name(&self) -> &'static str {
        "splatforge-deform-im2col"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        offset: &CpuStorage,
        lo: &Layout,
        mask: &CpuStorage,
        lm: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(lx, lo, lm)?;
        let cols = self.cpu(
            &g,
            f32_values(x, lx)?,
            f32_values(offset, lo)?,
            f32_values(mask, lm)?,
        );
        Ok((CpuStorage::F32(cols), self.out_shape(&g)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        offset: &candle_core::CudaStorage,
        lo: &Layout,
        mask: &candle_core::CudaStorage,
        lm: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::deform_im2col(self, (x, lx), (offset, lo), (mask, lm))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

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
        // torchvision's `bilinear_interpolate`, literally.
        let sample = |img: &[f32], y: f32, xx: f32| -> f32 {
            if y <= -1.0 || y >= h as f32 || xx <= -1.0 || xx >= w as f32 {
                return 0.0;
            }
            let (yl, xl) = (y.floor() as i64, xx.floor() as i64);
            let (ly, lx) = (y - yl as f32, xx - xl as f32);
            let px = |yy: i64, xc: i64| {
                if yy >= 0 && xc >= 0 && yy < h as i64 && xc < w as i64 {
                    img[yy as usize * w + xc as usize]
                } else {
                    0.0
                }
            };
            (1.0 - ly) * (1.0 - lx) * px(yl, xl)
                + (1.0 - ly) * lx * px(yl, xl + 1)
                + ly * (1.0 - lx) * px(yl + 1, xl)
                + ly * lx * px(yl + 1, xl + 1)
        };
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
                                        * sample(img, y, xx);
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
    fn banded_output_is_the_whole() {
        let dev = Device::Cpu;
        let (b, c, h, w, o, k) = (2, 3, 7, 5, 4, 3);
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let offset = Tensor::randn(0f32, 1.5, (b, 2 * k * k, h, w), &dev).unwrap();
        let mask = Tensor::rand(0f32, 2.0, (b, k * k, h, w), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
        let run =
            |budget| v(&banded(&x, &offset, &mask, &weight, Some(&bias), (1, 1), budget).unwrap());
        let whole = run(usize::MAX);
        // One row (b·C·K²·W = 270 elements) and three rows a band; 0 still takes one row.
        for budget in [270, 3 * 270, 0] {
            let got = run(budget);
            for (a, e) in got.iter().zip(&whole) {
                assert!((a - e).abs() < 1e-5, "budget {budget}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn bands_of_rows_make_the_same_columns() {
        let dev = Device::Cpu;
        let (b, c, h, w, k) = (2, 3, 7, 6, 3);
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let offset = Tensor::randn(0f32, 1.5, (b, 2 * k * k, h, w), &dev).unwrap();
        let mask = Tensor::rand(0f32, 2.0, (b, k * k, h, w), &dev).unwrap();
        let op = |row0, rows| DeformIm2col {
            kernel: k,
            stride: 1,
            padding: 1,
            row0,
            rows,
        };
        let whole = x.apply_op3_no_bwd(&offset, &mask, &op(0, h)).unwrap();
        assert_eq!(whole.dims(), [b, c * k * k, h * w]);
        let bands = [(0, 3), (3, 3), (6, 1)]
            .map(|(r0, n)| x.apply_op3_no_bwd(&offset, &mask, &op(r0, n)).unwrap());
        let joined = Tensor::cat(&bands, 2).unwrap();
        assert_eq!(v(&whole), v(&joined));
        assert!(x.apply_op3_no_bwd(&offset, &mask, &op(6, 2)).is_err());
        assert!(x.apply_op3_no_bwd(&offset, &mask, &op(0, 0)).is_err());
    }

    #[test]
    fn far_and_nan_offsets_sample_nothing() {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 1, 4, 4), DType::F32, &dev).unwrap();
        let weight = Tensor::ones((1, 1, 1, 1), DType::F32, &dev).unwrap();
        let mask = Tensor::ones((1, 1, 4, 4), DType::F32, &dev).unwrap();
        for d in [f32::NAN, 1e30, -1e30, -1.0, 4.0] {
            let offset = Tensor::full(d, (1, 2, 4, 4), &dev).unwrap();
            let out = deform_conv2d(&x, &offset, &mask, &weight, None, 1, 0).unwrap();
            // Only −1 reaches the image (rows and columns 1..3 land on pixel 0..2).
            let sum: f32 = v(&out).iter().sum();
            let want = if d == -1.0 { 9.0 } else { 0.0 };
            assert_eq!(sum, want, "offset {d}");
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
