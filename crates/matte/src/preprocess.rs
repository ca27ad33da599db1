//! The official inference's input and output handling (the model card's and `inference.py`'s):
//! `transforms.Resize((1024, 1024))` of the PIL image (Pillow's bilinear filter, widened when
//! shrinking, 8-bit fixed point), `ToTensor`, `Normalize` with ImageNet's mean and deviation;
//! after the network, the sigmoid of the last prediction resized to the input's size with
//! `F.interpolate(..., mode='bilinear', align_corners=True)` (`inference.py`).

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::{MatteError, Result};

/// ImageNet channel means (RGB, 0–1 scale).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, 0–1 scale).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Bits of Pillow's fixed-point resampling weights (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter: per output index, the
/// first input index and the fixed-point weights of the inputs it reads.
fn axis_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero; the clamp makes negative starts 0 either way.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: a fixed-point sum → 0–255.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along rows (`horizontal`) or columns of an interleaved RGB buffer.
fn pass(src: &[u8], (w, h): (usize, usize), out_len: usize, horizontal: bool) -> Vec<u8> {
    let weights = axis_weights(if horizontal { w } else { h }, out_len);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = &weights[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut sum = half;
                for (i, &kw) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (start + i, y)
                    } else {
                        (x, start + i)
                    };
                    sum += i64::from(src[(sy * w + sx) * 3 + c]) * i64::from(kw);
                }
                out[(y * ow + x) * 3 + c] = clip8(sum);
            }
        }
    }
    out
}

/// `image.resize((width, height), Image.BILINEAR)` exactly as Pillow computes it (horizontal
/// pass, then vertical, each rounded to 8 bits).
pub fn resize_bilinear_pil(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let mut buf = image.as_raw().clone();
    let mut cur_w = w;
    if ow != w {
        buf = pass(&buf, (w, h), ow, true);
        cur_w = ow;
    }
    if oh != h {
        buf = pass(&buf, (cur_w, h), oh, false);
    }
    RgbImage::from_raw(width, height, buf).expect("buffer of the output's size")
}

/// The network input of `image`: resized to `size × size`, scaled to 0–1 and normalised with
/// ImageNet's statistics → `[1, 3, size, size]` in `dtype` on `device`.
pub fn network_input(
    image: &RgbImage,
    size: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if image.width() == 0 || image.height() == 0 {
        return Err(MatteError::InvalidArgument(format!(
            "empty image ({}×{})",
            image.width(),
            image.height()
        )));
    }
    let resized = resize_bilinear_pil(image, size as u32, size as u32);
    let mut planar = vec![0f32; 3 * size * size];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            planar[c * size * size + i] =
                (f32::from(px.0[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(planar, (1, 3, size, size), device)?.to_dtype(dtype)?)
}

/// The matte of `logits [1, 1, S, S]` at `width × height`: sigmoid, then bilinear resizing
/// with `align_corners=True`, in f32. Row-major, values in 0–1.
pub fn alpha_from_logits(logits: &Tensor, width: u32, height: u32) -> Result<Vec<f32>> {
    let a = candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?;
    let a = crate::layers::resize(&a, height as usize, width as usize)?;
    Ok(a.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> RgbImage {
        RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([
                ((37 * x + 53 * y) % 256) as u8,
                ((255 + 256 * 64 - 29 * x * y) % 256) as u8,
                ((x * x * 11 + y * 90) % 256) as u8,
            ])
        })
    }

    /// Values from Pillow 13.0.0: `Image.fromarray(pattern).resize(size, Image.BILINEAR)`.
    #[test]
    fn matches_pillow_bilinear() {
        let down = resize_bilinear_pil(&pattern(), 4, 3);
        let want_down: [u8; 36] = [
            42, 249, 46, 100, 229, 92, 168, 206, 105, 168, 187, 123, 125, 225, 130, 167, 150, 136,
            166, 113, 103, 87, 159, 129, 201, 200, 72, 118, 111, 118, 78, 134, 112, 136, 141, 149,
        ];
        assert_eq!(down.as_raw().as_slice(), want_down.as_slice());
        let up = resize_bilinear_pil(&pattern(), 11, 9);
        let red: Vec<u8> = up.pixels().map(|p| p.0[0]).collect();
        let want_red: [u8; 99] = [
            0, 17, 40, 64, 87, 111, 135, 158, 182, 205, 222, 18, 35, 58, 82, 105, 129, 153, 176,
            200, 176, 154, 47, 64, 87, 111, 134, 158, 182, 205, 229, 129, 42, 77, 94, 117, 141,
            164, 188, 212, 203, 155, 91, 43, 106, 123, 146, 170, 193, 217, 241, 194, 55, 55, 72,
            135, 152, 175, 199, 171, 104, 128, 120, 72, 84, 101, 165, 182, 202, 208, 141, 20, 44,
            67, 91, 114, 131, 194, 211, 219, 134, 80, 49, 73, 96, 120, 143, 160, 212, 229, 229, 90,
            43, 67, 91, 114, 138, 161, 178,
        ];
        assert_eq!(red.as_slice(), want_red.as_slice());
        assert_eq!(resize_bilinear_pil(&pattern(), 7, 5), pattern());
    }

    #[test]
    fn normalises_with_imagenet_statistics() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([255, 0, 128]));
        let x = network_input(&img, 4, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), [1, 3, 4, 4]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.456) / 0.224,
            (128.0 / 255.0 - 0.406) / 0.225,
        ];
        for c in 0..3 {
            assert!(v[c * 16..(c + 1) * 16]
                .iter()
                .all(|&a| (a - want[c]).abs() < 1e-5));
        }
        let empty = RgbImage::new(0, 3);
        assert!(network_input(&empty, 4, DType::F32, &Device::Cpu).is_err());
    }

    #[test]
    fn alpha_is_sigmoid_resized_with_aligned_corners() {
        let logits = Tensor::new(&[[0f32, 2.0]], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 2))
            .unwrap();
        let a = alpha_from_logits(&logits, 3, 1).unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want = [s(0.0), (s(0.0) + s(2.0)) / 2.0, s(2.0)];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
    }
}
