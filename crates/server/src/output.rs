//! Turning a generation into response bytes: PLY or SPZ (binary or
//! base64), or a turntable video. Runs on the worker thread.

use std::time::{Duration, Instant};

use base64::Engine as _;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};
use splatforge_render::{render, Camera, GaussianBuffers, RenderOptions};
use splatforge_splat::normalize::{fit_to_box, VALIDATOR_BOX};
use splatforge_splat::ply::{write_ply, PlyWriteOptions};
use splatforge_splat::spz::{write_spz, SpzFlavor};
use splatforge_splat::Gaussians;

use crate::generator::{CancelToken, GenerationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplatFormat {
    /// Binary little-endian 3DGS PLY with normals (62 floats per splat at SH 3).
    Ply,
    /// 404-GEN's SPZ: Niantic SPZ v2 compressed with zstd.
    Spz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

/// Container of a turntable video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// H.264 in MP4 (`video/mp4`), as the 404 miner returns; needs the
    /// crate's `mp4` feature (on by default).
    Mp4,
    /// Animated GIF (`image/gif`).
    Gif,
}

impl VideoFormat {
    /// MP4 when the encoder is built in, else GIF.
    pub const DEFAULT: VideoFormat = if cfg!(feature = "mp4") {
        VideoFormat::Mp4
    } else {
        VideoFormat::Gif
    };

    pub fn available(self) -> bool {
        self == VideoFormat::Gif || cfg!(feature = "mp4")
    }
}

/// What a job produces from its Gaussians.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputSpec {
    Splat {
        format: SplatFormat,
        encoding: Encoding,
    },
    /// A turntable of `frames` square frames of `resolution` pixels (even
    /// for MP4) at 25 frames per second.
    Video {
        resolution: u32,
        frames: u32,
        format: VideoFormat,
    },
}

/// Turntable frame rate.
pub const VIDEO_FPS: u32 = 25;

/// Response bytes, their content type and the time spent making them.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub timings: Vec<(String, Duration)>,
}

fn failed(e: impl std::fmt::Display) -> GenerationError {
    GenerationError::Failed(e.to_string())
}

pub fn encode(
    g: &Gaussians,
    spec: &OutputSpec,
    cancel: &CancelToken,
) -> Result<Encoded, GenerationError> {
    match *spec {
        OutputSpec::Splat { format, encoding } => {
            let t = Instant::now();
            let bytes = match format {
                SplatFormat::Ply => write_ply(g, PlyWriteOptions { normals: true }),
                SplatFormat::Spz => write_spz(g, SpzFlavor::Zstd404),
            }
            .map_err(failed)?;
            let (body, content_type) = match encoding {
                Encoding::Binary => (bytes, "application/octet-stream"),
                Encoding::Base64 => (
                    base64::engine::general_purpose::STANDARD
                        .encode(bytes)
                        .into_bytes(),
                    "text/plain; charset=utf-8",
                ),
            };
            Ok(Encoded {
                body,
                content_type,
                timings: vec![("encode".into(), t.elapsed())],
            })
        }
        OutputSpec::Video {
            resolution,
            frames,
            format,
        } => {
            let t = Instant::now();
            let images = turntable(g, resolution, frames, cancel)?;
            let rendered = t.elapsed();
            let t = Instant::now();
            let (body, content_type) = match format {
                VideoFormat::Gif => (encode_gif(images, cancel)?, "image/gif"),
                #[cfg(feature = "mp4")]
                VideoFormat::Mp4 => (mp4_h264::encode(&images, VIDEO_FPS, cancel)?, "video/mp4"),
                #[cfg(not(feature = "mp4"))]
                VideoFormat::Mp4 => {
                    return Err(failed("this build has no MP4 encoder (feature `mp4`)"))
                }
            };
            Ok(Encoded {
                body,
                content_type,
                timings: vec![("render".into(), rendered), ("encode".into(), t.elapsed())],
            })
        }
    }
}

/// Camera path of the turntable: a full turn of azimuth (0° first), the
/// elevation swinging once between −30° and +10° (404's range), radius 2.5
/// and fovy 49.1° around the splat fitted into the validators' 1.5 box, on
/// white.
pub fn turntable_cameras(resolution: u32, frames: u32) -> Vec<Camera> {
    (0..frames)
        .map(|i| {
            let phase = i as f32 / frames as f32;
            let elevation = -10.0 - 20.0 * (phase * std::f32::consts::TAU).sin();
            Camera::orbit(elevation, 360.0 * phase, 2.5, 49.1, resolution, resolution)
        })
        .collect()
}

fn turntable(
    g: &Gaussians,
    resolution: u32,
    frames: u32,
    cancel: &CancelToken,
) -> Result<Vec<RgbaImage>, GenerationError> {
    let mut g = g.clone();
    if !g.is_empty() {
        fit_to_box(&mut g, VALIDATOR_BOX).map_err(failed)?;
    }
    let buffers = GaussianBuffers::from(&g);
    let options = RenderOptions {
        background: [1.0; 3],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(frames as usize);
    for camera in turntable_cameras(resolution, frames) {
        cancel.check()?;
        let img = render(&buffers.params(), std::slice::from_ref(&camera), &options)
            .map_err(failed)?
            .remove(0);
        let rgb = img.rgb8();
        let mut rgba = Vec::with_capacity(rgb.len() / 3 * 4);
        for p in rgb.chunks_exact(3) {
            rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        out.push(
            RgbaImage::from_raw(img.width, img.height, rgba).expect("width × height × 4 bytes"),
        );
    }
    Ok(out)
}

/// An endlessly looping GIF at [`VIDEO_FPS`].
fn encode_gif(frames: Vec<RgbaImage>, cancel: &CancelToken) -> Result<Vec<u8>, GenerationError> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(failed)?;
        let delay = Delay::from_numer_denom_ms(1000, VIDEO_FPS);
        for f in frames {
            cancel.check()?;
            encoder
                .encode_frame(Frame::from_parts(f, 0, 0, delay))
                .map_err(failed)?;
        }
    }
    Ok(out)
}

#[cfg(feature = "mp4")]
mod mp4_h264 {
    //! H.264 (openh264, built from source) in an MP4 container (the `mp4`
    //! crate): one IDR frame, then P frames, constant frame rate.

    use std::io::Cursor;

    use axum::body::Bytes;
    use image::RgbaImage;
    use mp4::{
        AvcConfig, FourCC, MediaConfig, Mp4Config, Mp4Sample, Mp4Writer, TrackConfig, TrackType,
    };
    use openh264::encoder::{
        Encoder, EncoderConfig, FrameRate, FrameType, QpRange, RateControlMode,
    };
    use openh264::formats::{RgbSliceU8, YUVBuffer};
    use openh264::OpenH264API;

    use super::failed;
    use crate::generator::{CancelToken, GenerationError};

    /// Track ticks per second.
    const TIMESCALE: u32 = 12_800;

    /// The NAL unit without its Annex-B start code.
    fn strip_start_code(nal: &[u8]) -> &[u8] {
        if nal.starts_with(&[0, 0, 0, 1]) {
            &nal[4..]
        } else if nal.starts_with(&[0, 0, 1]) {
            &nal[3..]
        } else {
            nal
        }
    }

    pub fn encode(
        frames: &[RgbaImage],
        fps: u32,
        cancel: &CancelToken,
    ) -> Result<Vec<u8>, GenerationError> {
        let (w, h) = frames
            .first()
            .map(|f| f.dimensions())
            .ok_or_else(|| failed("no frames"))?;
        if w % 2 != 0 || h % 2 != 0 {
            return Err(failed(format!("H.264 needs even dimensions, got {w}×{h}")));
        }
        // Constant quality, every frame kept (rate control would skip frames).
        let config = EncoderConfig::new()
            .rate_control_mode(RateControlMode::Off)
            .qp(QpRange::new(16, 24))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .skip_frames(false);
        let mut encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(failed)?;
        let (mut sps, mut pps) = (None::<Vec<u8>>, None::<Vec<u8>>);
        // (AVCC sample bytes, is sync, frames it covers)
        let mut samples: Vec<(Vec<u8>, bool, u32)> = Vec::with_capacity(frames.len());
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for frame in frames {
            cancel.check()?;
            rgb.clear();
            for p in frame.pixels() {
                rgb.extend_from_slice(&p.0[..3]);
            }
            let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&rgb, (w as usize, h as usize)));
            let stream = encoder.encode(&yuv).map_err(failed)?;
            let mut sample = Vec::new();
            let mut sync = matches!(stream.frame_type(), FrameType::IDR);
            for l in 0..stream.num_layers() {
                let layer = stream.layer(l).expect("layer index in range");
                for n in 0..layer.nal_count() {
                    let nal = strip_start_code(layer.nal_unit(n).expect("NAL index in range"));
                    match nal.first().map(|b| b & 0x1f) {
                        None => {}
                        Some(7) => {
                            sps.get_or_insert_with(|| nal.to_vec());
                        }
                        Some(8) => {
                            pps.get_or_insert_with(|| nal.to_vec());
                        }
                        Some(t) => {
                            sync |= t == 5;
                            sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                            sample.extend_from_slice(nal);
                        }
                    }
                }
            }
            match samples.last_mut() {
                // A skipped frame: the previous picture stays up longer.
                Some(last) if sample.is_empty() => last.2 += 1,
                _ if sample.is_empty() => {}
                _ => samples.push((sample, sync, 1)),
            }
        }
        let (Some(sps), Some(pps)) = (sps, pps) else {
            return Err(failed("the H.264 encoder produced no parameter sets"));
        };
        let brand = |s: &str| s.parse::<FourCC>().expect("a four-character code");
        let mp4_config = Mp4Config {
            major_brand: brand("isom"),
            minor_version: 512,
            compatible_brands: ["isom", "iso2", "avc1", "mp41"]
                .iter()
                .map(|s| brand(s))
                .collect(),
            timescale: 1000,
        };
        let mut writer =
            Mp4Writer::write_start(Cursor::new(Vec::new()), &mp4_config).map_err(failed)?;
        writer
            .add_track(&TrackConfig {
                track_type: TrackType::Video,
                timescale: TIMESCALE,
                language: "und".into(),
                media_conf: MediaConfig::AvcConfig(AvcConfig {
                    width: w as u16,
                    height: h as u16,
                    seq_param_set: sps,
                    pic_param_set: pps,
                }),
            })
            .map_err(failed)?;
        let tick = TIMESCALE / fps;
        let mut start = 0u64;
        for (bytes, is_sync, n) in samples {
            let duration = tick * n;
            let sample = Mp4Sample {
                start_time: start,
                duration,
                rendering_offset: 0,
                is_sync,
                bytes: Bytes::from(bytes),
            };
            writer.write_sample(1, &sample).map_err(failed)?;
            start += duration as u64;
        }
        writer.write_end().map_err(failed)?;
        Ok(writer.into_writer().into_inner())
    }
}
