//! `splatforge serve` with an image profile and the tiny random-weight TRELLIS models,
//! through real HTTP: `/generate/` takes the image as a file field or as base64 in
//! `prompt` (the 404 miner's image tasks) and answers a PLY with the TRELLIS stage timings;
//! text and broken images get 400; the stage metrics cover the new stages.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use splatforge_splat::read_splat_bytes;

mod common;
use common::{
    get, ghost_fixture, make_models, post, post_to, post_with_headers, request, wait_healthy,
    Response, Server,
};

/// A multipart body of `(name, file name, value)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "splatforgecompetitionboundary";
    let mut body = Vec::new();
    for (name, file, value) in parts {
        let file = file.map_or(String::new(), |f| format!("; filename=\"{f}\""));
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A multipart body with the file field `image` and the text field `seed`.
fn multipart_image(image: &[u8]) -> (String, Vec<u8>) {
    let boundary = "splatforgeimageboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"ghost.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(image);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n3\r\n--{boundary}--\r\n")
            .as_bytes(),
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn ghost() -> Vec<u8> {
    std::fs::read(ghost_fixture()).expect("the shared ghost fixture")
}

fn start(models: &Path) -> Server {
    start_with(models, &[])
}

/// [`start`] with more `serve` options.
fn start_with(models: &Path, options: &[&str]) -> Server {
    let mut args = vec![
        "--profile".into(),
        "image-development".into(),
        "--models".into(),
        models.as_os_str().to_owned(),
    ];
    args.extend(options.iter().map(std::ffi::OsString::from));
    Server::start(args, |_| {})
}

#[test]
fn tiny_trellis_behind_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let ghost = ghost();

    let server = start(&models);
    let addr = server.addr;
    wait_healthy(addr);
    let version = get(addr, "/version");
    assert!(String::from_utf8_lossy(&version.body).contains("trellis:image-development"));

    // The image as a file field.
    let (content_type, body) = multipart_image(&ghost);
    let r = post(addr, &content_type, &body);
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.body.starts_with(b"ply\n"));
    let file_field = read_splat_bytes(&r.body).unwrap();
    assert!(!file_field.is_empty());
    for stage in [
        "dinov2",
        "sparse_structure",
        "ss_decoder",
        "slat",
        "gs_decoder",
    ] {
        assert!(r.head.contains(stage), "no {stage} timing in\n{}", r.head);
    }

    // The image's bytes in base64 in `prompt` (a data URL too), same seed: the same splat.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&ghost);
    for prompt in [b64.clone(), format!("data:image/png;base64,{b64}")] {
        let json = serde_json::json!({"prompt": prompt, "seed": 3}).to_string();
        let r = post(addr, "application/json", json.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(read_splat_bytes(&r.body).unwrap(), file_field);
    }

    // Text, broken base64, bytes that are no image, and both at once: 400 with a reason.
    let cases = [
        (serde_json::json!({"prompt": "a red chair"}), "base64"),
        (
            serde_json::json!({"prompt": "aGVsbG8gd29ybGQ="}),
            "image format",
        ),
        (serde_json::json!({}), "missing image"),
    ];
    for (json, needle) in cases {
        let r = post(addr, "application/json", json.to_string().as_bytes());
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 400, "{json}: {body}");
        assert!(body.contains(needle), "{json}: {body}");
    }

    // A picture with no object: a 400 from the generator, and the worker goes on.
    let mut clear = Vec::new();
    image::RgbaImage::new(8, 8)
        .write_to(
            &mut std::io::Cursor::new(&mut clear),
            image::ImageFormat::Png,
        )
        .unwrap();
    let (content_type, body) = multipart_image(&clear);
    let r = post(addr, &content_type, &body);
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 400, "{text}");
    assert!(
        text.contains("transparent") && text.contains("bad_input"),
        "{text}"
    );

    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
    assert!(metrics.contains("outcome=\"bad_input\""), "{metrics}");
    for stage in ["dinov2", "sparse_structure", "slat", "gs_decoder"] {
        assert!(
            metrics.contains(&format!(
                "splatforge_stage_duration_seconds_count{{stage=\"{stage}\"}}"
            )),
            "no {stage} in\n{metrics}"
        );
    }
    drop(server);
}

/// A multipart part that owns its value: name, file name, bytes.
type Part = (&'static str, Option<&'static str>, Vec<u8>);

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

/// Issue 13, item 4: 404's competition 0 API on an image server. `POST /generate` with the
/// multipart file `prompt_image_file` and `seed` answers the binary PLY, the same bytes for
/// the same seed, turned Y-up (the three-gen `/generate/` answer is `save_ply`'s Y-down
/// frame: the same splat with y and z negated); bad inputs get a 4xx JSON error and the
/// server stays healthy.
#[test]
fn competition_generate_takes_prompt_image_file_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let ghost = ghost();
    let server = start(&models);
    let addr = server.addr;
    wait_healthy(addr);

    let generate = |parts: &[(&str, Option<&str>, &[u8])]| {
        let (content_type, body) = multipart(parts);
        post_to(addr, "/generate", &content_type, &body)
    };
    let ok = |r: &Response| {
        assert_eq!(
            r.status,
            200,
            "{}\n{}",
            r.head,
            String::from_utf8_lossy(&r.body)
        );
        assert!(r
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/octet-stream"));
        assert!(r.body.starts_with(b"ply\n"));
    };
    let first = generate(&[
        ("prompt_image_file", Some("prompt.jpg"), &ghost),
        ("seed", None, b"7"),
    ]);
    ok(&first);
    let again = generate(&[
        ("seed", None, b"7"),
        ("prompt_image_file", Some("prompt.png"), &ghost),
    ]);
    ok(&again);
    assert_eq!(first.body, again.body, "the same seed gives the same bytes");
    let y_up = read_splat_bytes(&first.body).unwrap();
    let (content_type, body) =
        multipart(&[("image", Some("ghost.png"), &ghost), ("seed", None, b"7")]);
    let subnet = post(addr, &content_type, &body);
    assert_eq!(
        subnet.status,
        200,
        "{}",
        String::from_utf8_lossy(&subnet.body)
    );
    let y_down = read_splat_bytes(&subnet.body).unwrap();
    assert_eq!(y_up.len(), y_down.len());
    assert!(!y_up.is_empty());
    for (u, d) in y_up.means.iter().zip(&y_down.means) {
        assert_eq!(*u, [d[0], -d[1], -d[2]]);
    }

    // A PNG header claiming 20000² (no pixel data).
    let mut huge = Vec::new();
    image::RgbaImage::new(1, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut huge),
            image::ImageFormat::Png,
        )
        .unwrap();
    huge[16..24].copy_from_slice(&[20000u32.to_be_bytes(), 20000u32.to_be_bytes()].concat());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    // Two frames: an animation.
    let mut gif = Vec::new();
    let frame = |v: u8| {
        image::Frame::new(image::RgbaImage::from_pixel(
            8,
            8,
            image::Rgba([v, v, v, 255]),
        ))
    };
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode_frames(vec![frame(10), frame(200)])
        .unwrap();
    let file = |bytes: &[u8]| {
        vec![
            ("prompt_image_file", Some("p.png"), bytes.to_vec()),
            ("seed", None, b"1".to_vec()),
        ]
    };
    let cases: Vec<(&str, Vec<Part>, &str)> = vec![
        (
            "not an image",
            file(b"hello, not a picture"),
            "image format",
        ),
        ("empty", file(b""), "empty"),
        (
            "truncated PNG",
            file(&ghost[..ghost.len() / 2]),
            "cannot decode",
        ),
        ("20000² header", file(&huge), "16384"),
        ("animated GIF", file(&gif), "animated"),
        (
            "no image",
            vec![("seed", None, b"1".to_vec())],
            "prompt_image_file",
        ),
        (
            "no seed",
            vec![("prompt_image_file", Some("p.png"), ghost.clone())],
            "seed",
        ),
        (
            "seed not an integer",
            vec![
                ("prompt_image_file", Some("p.png"), ghost.clone()),
                ("seed", None, b"1.5".to_vec()),
            ],
            "seed must be an integer",
        ),
    ];
    for (what, parts, needle) in cases {
        let parts: Vec<(&str, Option<&str>, &[u8])> = parts
            .iter()
            .map(|(n, f, v)| (*n, *f, v.as_slice()))
            .collect();
        let r = generate(&parts);
        let body: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{what}: not JSON: {}", String::from_utf8_lossy(&r.body)));
        assert_eq!(r.status, 400, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{what}: {body}"
        );
        assert_eq!(get(addr, "/health").status, 200, "healthy after {what}");
    }

    // 60 MB announced: 413 from the Content-Length alone, before the body is read.
    let head = format!(
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n--x\r\n",
        60 << 20
    );
    let t0 = Instant::now();
    let r = request(addr, head.as_bytes());
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["kind"], "payload_too_large");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // Still serving: the same answer as before.
    ok(&generate(&[
        ("prompt_image_file", Some("prompt.jpg"), &ghost),
        ("seed", None, b"7"),
    ]));
    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
    assert!(
        metrics.contains("splatforge_http_requests_total{endpoint=\"/generate\",outcome=\"ok\"} 3"),
        "{metrics}"
    );
    drop(server);
}

/// A red disc on white as an RGB JPEG (no alpha), as 404's orchestrator sends pictures.
fn disc_jpeg() -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::RgbImage::from_fn(96, 64, |x, y| {
        let (dx, dy) = (x as f32 - 48.0, y as f32 - 30.0);
        image::Rgb(if dx * dx + dy * dy < 400.0 {
            [200, 30, 30]
        } else {
            [255, 255, 255]
        })
    })
    .write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    jpeg
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Issue 13, items 1, 2, 5 and 6 through real HTTP: an RGB JPEG gets the tiny random
/// BiRefNet (a `matte` stage in the timings and metrics); a deadline too short for the
/// profile (`serve --deadline-ms` on the competition route, or `X-Deadline-Ms`) degrades
/// the run and still answers 200 with `X-Degraded`; no deadline, or a long one, is not
/// degraded; a deadline already past is a 503; `/generate_video/` takes images.
#[test]
fn rgb_pictures_get_the_matte_and_short_deadlines_degrade() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let jpeg = disc_jpeg();
    // 250 ms: far less than a tiny run in a debug build (the warm-up's times × 1.5), so
    // every step of the ladder is taken; the job itself starts within milliseconds.
    let server = start_with(&models, &["--deadline-ms", "250"]);
    let addr = server.addr;
    wait_healthy(addr);
    let competition = |headers: &[(&str, &str)]| {
        let (content_type, body) = multipart(&[
            ("prompt_image_file", Some("prompt.jpg"), &jpeg),
            ("seed", None, b"4"),
        ]);
        post_with_headers(addr, "/generate", &content_type, headers, &body)
    };
    let ok = |r: &Response| {
        assert_eq!(
            r.status,
            200,
            "{}\n{}",
            r.head,
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.body.starts_with(b"ply\n"));
        let timings = header(r, "x-stage-timings").unwrap();
        assert!(
            timings.starts_with("queue=") && timings.contains(",matte="),
            "{timings}"
        );
    };

    // A long deadline fits the profile: not degraded.
    let roomy = competition(&[("X-Deadline-Ms", "600000")]);
    ok(&roomy);
    assert_eq!(header(&roomy, "x-degraded"), None, "{}", roomy.head);
    // The server's default deadline: fewer steps, then the lite matte, then the threshold.
    let hurried = competition(&[]);
    ok(&hurried);
    assert_eq!(
        header(&hurried, "x-degraded"),
        Some("trellis_steps=2+2->1+1, matte=birefnet->threshold"),
        "{}",
        hurried.head
    );
    // The three-gen route takes no default deadline; a header there applies.
    let (content_type, body) = multipart_image(&jpeg);
    let plain = post(addr, &content_type, &body);
    ok(&plain);
    assert_eq!(header(&plain, "x-degraded"), None, "{}", plain.head);
    let short = post_with_headers(
        addr,
        "/generate/",
        &content_type,
        &[("X-Deadline-Ms", "250")],
        &body,
    );
    ok(&short);
    assert!(header(&short, "x-degraded").is_some(), "{}", short.head);

    // Past already, or not a number: a JSON error, and the server goes on.
    for (value, status, kind) in [
        ("0", 503, "deadline_exceeded"),
        ("soon", 400, "bad_request"),
        ("-5", 400, "bad_request"),
    ] {
        let r = competition(&[("X-Deadline-Ms", value)]);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.status, status, "{value}: {body}");
        assert_eq!(body["kind"], kind, "{value}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("eadline"),
            "{body}"
        );
    }

    // A turntable of an image request (item 6).
    let (content_type, body) = multipart(&[
        ("image", Some("disc.jpg"), &jpeg),
        ("frames", None, b"2"),
        ("video_res", None, b"32"),
        ("video_format", None, b"gif"),
    ]);
    let video = post_to(addr, "/generate_video/", &content_type, &body);
    assert_eq!(
        video.status,
        200,
        "{}",
        String::from_utf8_lossy(&video.body)
    );
    assert!(video.body.starts_with(b"GIF8"), "{}", video.head);
    assert_eq!(header(&video, "x-video-frames"), Some("2"));
    assert!(header(&video, "x-stage-timings")
        .unwrap()
        .contains("matte="));

    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
    for line in [
        "splatforge_degraded_total{change=\"trellis_steps\"} 2",
        "splatforge_degraded_total{change=\"matte\"} 2",
        "splatforge_stage_duration_seconds_count{stage=\"matte\"} 5",
        "splatforge_http_requests_total{endpoint=\"/generate\",outcome=\"deadline_exceeded\"} 1",
        "splatforge_http_requests_total{endpoint=\"/generate_video/\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    drop(server);
}
