//! TRELLIS' image preprocessing (`TrellisImageTo3DPipeline.preprocess_image` and
//! `encode_image`), bit-exact with Pillow's integer arithmetic:
//!
//! 1. the foreground: the input's alpha when any pixel is not opaque (TRELLIS runs `rembg`
//!    otherwise; [`plain_background_alpha`] is our stand-in for pictures on a plain
//!    background);
//! 2. the box of pixels with alpha > 0.8·255, its centre, side `int(1.2 · max(w, h))`
//!    (`w`, `h` the differences of the extreme pixel indices), the square of half-side
//!    `side // 2` around the centre, its corners rounded half to even (`Image.crop`),
//!    pixels outside the image transparent black;
//! 3. `resize((518, 518), LANCZOS)`: Pillow premultiplies RGBA (`RGBa`, `(c·a + 128)·257 >> 16`),
//!    resamples horizontally then vertically with 22-bit fixed-point Lanczos-3 weights
//!    (support scaled by the reduction factor) rounding to 8 bits after each pass, and
//!    un-premultiplies (`255·c / a`, truncated); an image already 518² is copied;
//! 4. colour premultiplied on black in f32 and truncated to 8 bits;
//! 5. for DINOv2: `/255`, ImageNet mean and standard deviation.

use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageReader, Limits, RgbImage, RgbaImage};

use crate::{Result, TrellisError};

/// The side TRELLIS conditions on (DINOv2 at 518² gives 37×37 patches).
pub const CONDITION_SIZE: u32 = 518;

/// The largest image side we decode; larger headers are refused before any allocation.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// ImageNet statistics of `transforms.Normalize` in `_init_image_cond_model`.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Decodes an image file into the RGBA the preprocessing reads: PNG (8- or 16-bit, palette,
/// grey), JPEG (RGB, grey, CMYK/YCCK: converted to RGB by the decoder), WebP and GIF, turned
/// upright by the file's EXIF orientation; grey and RGB images become opaque RGBA, 16-bit
/// samples are rounded to 8 bits. Refused with a clear error: empty input, unknown formats,
/// sides above [`MAX_IMAGE_SIDE`] (from the header, before any pixel is allocated), and
/// animations (animated GIF, PNG or WebP: which frame shows the object is a guess we do not
/// make for the client).
pub fn decode_image(bytes: &[u8]) -> Result<RgbaImage> {
    use image::{AnimationDecoder, ImageDecoder, ImageFormat};
    let bad = |m: String| TrellisError::InvalidArgument(format!("image: {m}"));
    const SUPPORTED: &str = "PNG, JPEG, WebP or GIF";
    if bytes.is_empty() {
        return Err(bad("the input is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif)) => {
            f
        }
        Some(other) => {
            return Err(bad(format!(
                "{other:?} images are not supported ({SUPPORTED})"
            )))
        }
        None => {
            return Err(bad(format!(
                "not an image in a supported format ({SUPPORTED})"
            )))
        }
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(4 * u64::from(MAX_IMAGE_SIDE) * u64::from(MAX_IMAGE_SIDE));
    let cannot = |e: image::ImageError| {
        bad(format!(
            "cannot decode ({e}); images up to {MAX_IMAGE_SIDE}² in {SUPPORTED} are supported"
        ))
    };
    let animated = match format {
        ImageFormat::Gif => {
            let mut gif =
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(cannot)?;
            gif.set_limits(limits.clone()).map_err(cannot)?;
            // A second frame makes it an animation; decoding stops there.
            gif.into_frames().take(2).count() > 1
        }
        ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
            .and_then(|png| png.is_apng())
            .map_err(cannot)?,
        ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .map_err(cannot)?
            .has_animation(),
        _ => false,
    };
    if animated {
        return Err(bad(format!(
            "animated {format:?} images are not supported: send a still image"
        )));
    }
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    // A file whose EXIF block does not parse is shown as stored, as viewers do.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgba8(rgba) => rgba,
        other => other.to_rgba8(),
    })
}

/// Whether any pixel is not fully opaque (TRELLIS then uses the alpha as given).
pub fn has_alpha(image: &RgbaImage) -> bool {
    image.pixels().any(|p| p.0[3] != 255)
}

/// An alpha for a picture on a plain background: the background colour is the per-channel
/// median of the border pixels, and a pixel is foreground (255) when any channel differs
/// from it by more than `tolerance`, else transparent (0). Our stand-in for TRELLIS' `rembg`
/// on opaque inputs; a segmentation network replaces it.
pub fn plain_background_alpha(image: &RgbaImage, tolerance: u8) -> RgbaImage {
    let (w, h) = image.dimensions();
    let mut border: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in image.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for (channel, value) in border.iter_mut().zip(p.0) {
                channel.push(value);
            }
        }
    }
    let background: Vec<u8> = border
        .iter_mut()
        .map(|v| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        })
        .collect();
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let foreground = (0..3).any(|c| p.0[c].abs_diff(background[c]) > tolerance);
        p.0[3] = if foreground { 255 } else { 0 };
    }
    out
}

/// TRELLIS' `preprocess_image` for an image with alpha: crop around the object, 518²
/// Lanczos, colour premultiplied on black → 518² RGB.
pub fn preprocess(image: &RgbaImage) -> Result<RgbImage> {
    Ok(on_black(&cutout(image)?))
}

/// Steps 2 and 3 of `preprocess_image` for an image with alpha: the 518² RGBA cut-out around
/// the object (what `--save-views` writes: the picture the 3D stage sees, before step 4).
pub fn cutout(image: &RgbaImage) -> Result<RgbaImage> {
    let (x0, y0, x1, y1) = object_box(image)?;
    let crop = crop_transparent(image, x0, y0, x1, y1);
    if crop.width() == 0 || crop.height() == 0 {
        return Err(TrellisError::InvalidArgument(
            "image: the object is a single pixel wide; nothing to crop".into(),
        ));
    }
    Ok(resize_rgba_lanczos(&crop, CONDITION_SIZE, CONDITION_SIZE))
}

/// Step 4 of `preprocess_image`: colour premultiplied on black, as TRELLIS computes it.
pub fn on_black(cutout: &RgbaImage) -> RgbImage {
    let mut out = RgbImage::new(cutout.width(), cutout.height());
    for (o, p) in out.pixels_mut().zip(cutout.pixels()) {
        let a = p.0[3] as f32 / 255.0;
        for c in 0..3 {
            // float32: c/255 · a/255, ·255, truncated by astype(uint8).
            o.0[c] = ((p.0[c] as f32 / 255.0) * a * 255.0) as u8;
        }
    }
    out
}

/// `image` (518² RGB) → `[1, 3, 518, 518]` f32 on `device`, ImageNet-normalised.
pub fn dinov2_pixels(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut v = vec![0f32; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            v[c * plane + i] = (p.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(v, (1, 3, h as usize, w as usize), device)?)
}

/// The crop rectangle `(left, top, right, bottom)` (right/bottom exclusive, may lie outside
/// the image) of `preprocess_image`.
fn object_box(image: &RgbaImage) -> Result<(i64, i64, i64, i64)> {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in image.enumerate_pixels() {
        // alpha > 0.8 * 255 = 204.0
        if p.0[3] > 204 {
            bounds = Some(match bounds {
                None => (x, y, x, y),
                Some((a, b, c, d)) => (a.min(x), b.min(y), c.max(x), d.max(y)),
            });
        }
    }
    let (bx0, by0, bx1, by1) = bounds.ok_or_else(|| {
        TrellisError::InvalidArgument(
            "image: no pixel is more than 80 % opaque (fully transparent image?)".into(),
        )
    })?;
    let (cx, cy) = ((bx0 + bx1) as f64 / 2.0, (by0 + by1) as f64 / 2.0);
    let size = ((bx1 - bx0).max(by1 - by0) as f64 * 1.2) as i64;
    let half = (size / 2) as f64;
    let round = |v: f64| v.round_ties_even() as i64;
    Ok((
        round(cx - half),
        round(cy - half),
        round(cx + half),
        round(cy + half),
    ))
}

/// `Image.crop`: the rectangle, pixels outside `image` transparent black.
fn crop_transparent(image: &RgbaImage, x0: i64, y0: i64, x1: i64, y1: i64) -> RgbaImage {
    let (w, h) = ((x1 - x0).max(0) as u32, (y1 - y0).max(0) as u32);
    RgbaImage::from_fn(w, h, |x, y| {
        let (sx, sy) = (x0 + x as i64, y0 + y as i64);
        if sx >= 0 && sy >= 0 && sx < image.width() as i64 && sy < image.height() as i64 {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    })
}

/// Pillow's fixed-point precision of 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos3(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One axis' resampling: per output index, the first input index and the fixed-point
/// weights (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct AxisWeights {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn axis_weights(in_size: usize, out_size: usize) -> AxisWeights {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 3.0 * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates towards zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut k: Vec<f64> = (xmin..xmax.max(xmin))
            .map(|x| lanczos3((x as f64 - center + 0.5) * inv_filter_scale))
            .collect();
        let total: f64 = k.iter().sum();
        if total != 0.0 {
            k.iter_mut().for_each(|v| *v /= total);
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        weights.push(
            k.iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect(),
        );
        first.push(xmin);
    }
    AxisWeights { first, weights }
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResample` of 4-channel 8-bit pixels (horizontal pass, then vertical).
fn resample(pixels: &[[u8; 4]], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<[u8; 4]> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut current = pixels.to_vec();
    let mut width = w;
    if out_w != w {
        let ax = axis_weights(w, out_w);
        let mut next = vec![[0u8; 4]; out_w * h];
        for y in 0..h {
            for xx in 0..out_w {
                let mut sum = [half; 4];
                for (i, &k) in ax.weights[xx].iter().enumerate() {
                    let p = current[y * width + ax.first[xx] + i];
                    for c in 0..4 {
                        sum[c] += p[c] as i32 * k;
                    }
                }
                next[y * out_w + xx] = sum.map(clip8);
            }
        }
        current = next;
        width = out_w;
    }
    if out_h != h {
        let ax = axis_weights(h, out_h);
        let mut next = vec![[0u8; 4]; width * out_h];
        for yy in 0..out_h {
            for x in 0..width {
                let mut sum = [half; 4];
                for (i, &k) in ax.weights[yy].iter().enumerate() {
                    let p = current[(ax.first[yy] + i) * width + x];
                    for c in 0..4 {
                        sum[c] += p[c] as i32 * k;
                    }
                }
                next[yy * width + x] = sum.map(clip8);
            }
        }
        current = next;
    }
    current
}

/// `Image.resize((w, h), LANCZOS)` of an RGBA image: premultiplied resampling as Pillow
/// does (RGBA → RGBa → resample → RGBA); the same size is a copy.
fn resize_rgba_lanczos(image: &RgbaImage, out_w: u32, out_h: u32) -> RgbaImage {
    if image.dimensions() == (out_w, out_h) {
        return image.clone();
    }
    let premultiplied: Vec<[u8; 4]> = image
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0;
            // MULDIV255: (c·a + 128 + ((c·a + 128) >> 8)) >> 8
            let mul = |c: u8| {
                let t = c as u32 * a as u32 + 128;
                (((t >> 8) + t) >> 8) as u8
            };
            [mul(r), mul(g), mul(b), a]
        })
        .collect();
    let out = resample(
        &premultiplied,
        image.width() as usize,
        image.height() as usize,
        out_w as usize,
        out_h as usize,
    );
    let mut result = RgbaImage::new(out_w, out_h);
    for (o, [r, g, b, a]) in result.pixels_mut().zip(out) {
        let un = |c: u8| {
            if a == 255 || a == 0 {
                c
            } else {
                (255 * c as u32 / a as u32).min(255) as u8
            }
        };
        o.0 = [un(r), un(g), un(b), a];
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba};

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn bad_images_get_clear_errors() {
        let msg = |r: Result<RgbaImage>| r.unwrap_err().to_string();
        assert!(msg(decode_image(&[])).contains("empty"));
        assert!(msg(decode_image(b"definitely not a picture")).contains("not an image"));
        let ghost = png(&DynamicImage::ImageRgba8(RgbaImage::new(64, 64)));
        assert!(msg(decode_image(&ghost[..ghost.len() / 2])).contains("cannot decode"));
        // A PNG header claiming 20000² (no pixel data): refused from the header.
        let mut header = Vec::new();
        image::codecs::png::PngEncoder::new(&mut header)
            .write_image(&[0u8; 4], 1, 1, image::ExtendedColorType::Rgba8)
            .unwrap();
        header[16..20].copy_from_slice(&20000u32.to_be_bytes());
        header[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&header[12..29]);
        header[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(msg(decode_image(&header)).contains("16384"));
        let clear = RgbaImage::new(8, 8);
        assert!(preprocess(&clear)
            .unwrap_err()
            .to_string()
            .contains("transparent"));
        let grey =
            DynamicImage::ImageLuma8(image::ImageBuffer::from_pixel(3, 2, image::Luma([7u8])));
        let decoded = decode_image(&png(&grey)).unwrap();
        assert_eq!(decoded.get_pixel(2, 1).0, [7, 7, 7, 255]);
        assert!(!has_alpha(&decoded));
    }

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn near(got: [u8; 4], want: [u8; 4]) -> bool {
        got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 12)
    }

    #[test]
    fn sixteen_bit_palette_cmyk_and_webp_images_decode() {
        // 16-bit RGBA: rounded to 8 bits, alpha kept.
        let rgba16 = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(3, 2, |x, _| {
            image::Rgba([0xffff, 0x8080, 0, if x == 0 { 0 } else { 0xffff }])
        }));
        let decoded = decode_image(&png(&rgba16)).unwrap();
        assert_eq!(decoded.get_pixel(0, 0).0, [255, 128, 0, 0]);
        assert_eq!(decoded.get_pixel(2, 1).0, [255, 128, 0, 255]);
        // A palette PNG with a transparent index: its alpha is real.
        let palette = decode_image(&data("palette.png")).unwrap();
        assert_eq!(palette.dimensions(), (12, 12));
        assert_eq!(palette.get_pixel(0, 0).0[3], 0);
        assert_eq!(palette.get_pixel(5, 5).0, [200, 40, 40, 255]);
        assert!(has_alpha(&palette));
        // CMYK JPEG (Pillow's, Adobe marker): converted to RGB by the decoder, not refused.
        let cmyk = decode_image(&data("cmyk.jpg")).unwrap();
        assert_eq!(cmyk.dimensions(), (16, 8));
        assert!(
            near(cmyk.get_pixel(2, 2).0, [220, 30, 30, 255]),
            "{:?}",
            cmyk.get_pixel(2, 2)
        );
        assert!(
            near(cmyk.get_pixel(13, 5).0, [30, 30, 220, 255]),
            "{:?}",
            cmyk.get_pixel(13, 5)
        );
        // Lossless WebP with alpha: exactly the pixels.
        let im = RgbaImage::from_fn(5, 4, |x, y| {
            Rgba([x as u8 * 40, y as u8 * 50, 7, (x * y * 20) as u8])
        });
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .write_image(im.as_raw(), 5, 4, image::ExtendedColorType::Rgba8)
            .unwrap();
        assert_eq!(decode_image(&webp).unwrap(), im);
    }

    #[test]
    fn exif_orientation_turns_the_picture_upright() {
        // 16×8, left half red, right half blue, stored with EXIF orientation 6 ("rotate 90°
        // clockwise to display"): shown 8×16, red on top.
        let im = image::RgbImage::from_fn(16, 8, |x, _| {
            image::Rgb(if x < 8 { [230, 20, 20] } else { [20, 20, 230] })
        });
        // A little-endian TIFF header and one IFD entry: tag 0x0112 (Orientation), SHORT, 6.
        let exif: Vec<u8> = [
            &b"II*\0"[..],
            &8u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &[0x12, 0x01, 3, 0],
            &1u32.to_le_bytes(),
            &[6, 0, 0, 0],
            &0u32.to_le_bytes(),
        ]
        .concat();
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
        encoder.set_exif_metadata(exif).unwrap();
        encoder
            .write_image(im.as_raw(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let upright = decode_image(&jpeg).unwrap();
        assert_eq!(upright.dimensions(), (8, 16));
        assert!(
            near(upright.get_pixel(4, 2).0, [230, 20, 20, 255]),
            "{:?}",
            upright.get_pixel(4, 2)
        );
        assert!(
            near(upright.get_pixel(4, 13).0, [20, 20, 230, 255]),
            "{:?}",
            upright.get_pixel(4, 13)
        );
    }

    #[test]
    fn animated_gifs_are_refused_and_still_ones_decode() {
        use image::codecs::gif::GifEncoder;
        let frame = |v: u8| image::Frame::new(RgbaImage::from_pixel(6, 6, Rgba([v, v, v, 255])));
        let gif = |frames: Vec<image::Frame>| {
            let mut bytes = Vec::new();
            GifEncoder::new(&mut bytes).encode_frames(frames).unwrap();
            bytes
        };
        let e = decode_image(&gif(vec![frame(10), frame(200)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("animated") && e.contains("still image"), "{e}");
        let still = decode_image(&gif(vec![frame(10)])).unwrap();
        assert_eq!(still.get_pixel(3, 3).0, [10, 10, 10, 255]);
    }

    /// CRC-32 (PNG chunks), to forge a valid header.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn object_box_rounds_half_to_even_and_pads_with_transparency() {
        // Opaque pixels at x 3..=8, y 2..=4 (alpha 205 counts, 204 does not).
        let mut im = RgbaImage::new(12, 10);
        for x in 3..=8 {
            for y in 2..=4 {
                im.put_pixel(x, y, Rgba([10, 20, 30, 205]));
            }
        }
        im.put_pixel(0, 9, Rgba([1, 1, 1, 204]));
        // centre (5.5, 3), side int(5·1.2) = 6, half 3: (2.5, 0, 8.5, 6) → (2, 0, 8, 6).
        assert_eq!(object_box(&im).unwrap(), (2, 0, 8, 6));
        let crop = crop_transparent(&im, -2, -1, 3, 3);
        assert_eq!(crop.dimensions(), (5, 4));
        assert_eq!(crop.get_pixel(0, 0).0, [0, 0, 0, 0]);
        assert_eq!(crop.get_pixel(4, 3).0, im.get_pixel(2, 2).0);
    }

    #[test]
    fn lanczos_weights_match_pillows_formula() {
        // Downscaling 10 → 4: scale 2.5, support 7.5; output 1 centred at 3.75.
        let ax = axis_weights(10, 4);
        assert_eq!(ax.first[1], 0);
        let raw: Vec<f64> = (0..10)
            .map(|x| lanczos3((x as f64 - 3.75 + 0.5) / 2.5))
            .collect();
        let total: f64 = raw.iter().sum();
        for (i, k) in ax.weights[1].iter().enumerate() {
            let want = raw[i] / total * (1 << 22) as f64;
            assert!((*k as f64 - want).abs() <= 0.5 + 1e-9, "{i}: {k} vs {want}");
        }
        let sum: i64 = ax.weights[1].iter().map(|&k| k as i64).sum();
        assert!((sum - (1 << 22)).abs() <= 10);
        // A constant image stays constant through both passes.
        let flat = vec![[90u8, 60, 30, 255]; 7 * 5];
        assert!(resample(&flat, 7, 5, 3, 11)
            .iter()
            .all(|p| *p == [90, 60, 30, 255]));
    }

    #[test]
    fn resize_premultiplies_and_unpremultiplies_like_pillow() {
        // One half-transparent red pixel among transparent ones, upscaled 2 → 3.
        let mut im = RgbaImage::new(2, 1);
        im.put_pixel(0, 0, Rgba([255, 0, 0, 128]));
        let out = resize_rgba_lanczos(&im, 3, 1);
        // Premultiplied red: MULDIV255(255, 128) = 128; horizontal weights of output 0.
        let ax = axis_weights(2, 3);
        let r = clip8((1 << 21) + 128 * ax.weights[0][0]);
        let a = clip8((1 << 21) + 128 * ax.weights[0][0]);
        assert_eq!(r, a);
        let want_r = if a == 255 || a == 0 {
            r
        } else {
            (255 * r as u32 / a as u32).min(255) as u8
        };
        assert_eq!(out.get_pixel(0, 0).0, [want_r, 0, 0, a]);
        assert_eq!(resize_rgba_lanczos(&im, 2, 1), im);
    }

    #[test]
    fn preprocess_gives_a_premultiplied_518_square_and_normalised_pixels() {
        // A 60² square (x, y in 10..70) with a 20² hole (30..50), on an 80² canvas: crop
        // (4, 4)–(74, 74), scale 70/518.
        let colour = Rgba([200, 100, 50, 255]);
        let im = RgbaImage::from_fn(80, 80, |x, y| {
            let inside = |a: u32, b: u32| (a..b).contains(&x) && (a..b).contains(&y);
            if inside(10, 70) && !inside(30, 50) {
                colour
            } else {
                Rgba([200, 100, 50, 0])
            }
        });
        let out = preprocess(&im).unwrap();
        assert_eq!(out.dimensions(), (518, 518));
        // Output 114 samples crop 15.4 ± 3, inside the square's band: the colour exactly.
        assert_eq!(out.get_pixel(114, 114).0, [200, 100, 50]);
        // The hole and the margin are black (premultiplied transparency).
        assert_eq!(out.get_pixel(259, 259).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        let t = dinov2_pixels(&out, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 518, 518]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let solid = 114 * 518 + 114;
        assert!((v[solid] - (200.0 / 255.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((v[2 * 518 * 518] - (0.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    /// FNV-1a 64 of bytes.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn fixtures_preprocess_exactly_as_pillow_does() {
        // FNV-1a of the 518² RGB that TRELLIS' preprocess_image steps give with Pillow 13.0.0
        // (computed once with Pillow and numpy from the same fixture files).
        for (name, want) in [
            ("ghost_rgba.png", 0x38ff_596d_b0da_4322u64),
            ("car_rgba.png", 0xb3e5_8c79_9967_fe4a),
            ("astronaut_rgba.png", 0x28f3_76e1_c75a_84a6),
        ] {
            let path = format!(
                "{}/../../../shared/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let Ok(bytes) = std::fs::read(&path) else {
                eprintln!("skipping: fixture {path} not found");
                continue;
            };
            let out = preprocess(&decode_image(&bytes).unwrap()).unwrap();
            assert_eq!(fnv1a(out.as_raw()), want, "{name}");
        }
    }

    #[test]
    fn plain_background_becomes_transparent() {
        let mut im = RgbaImage::from_pixel(9, 9, Rgba([250, 250, 250, 255]));
        im.put_pixel(4, 4, Rgba([20, 30, 40, 255]));
        im.put_pixel(5, 4, Rgba([245, 250, 250, 255]));
        let matte = plain_background_alpha(&im, 16);
        assert_eq!(matte.get_pixel(4, 4).0[3], 255);
        assert_eq!(matte.get_pixel(5, 4).0[3], 0);
        assert_eq!(matte.get_pixel(0, 0).0[3], 0);
        assert!(has_alpha(&matte));
    }
}
