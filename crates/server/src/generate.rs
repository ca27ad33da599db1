//! The generation routes (`POST /generate/`, `/generate_video/`, and 404's
//! competition `/generate` on an image server): parse the request, queue the job, follow it
//! (timeout, client disconnect, shutdown) and answer with the splat.

use super::*;

/// What a generation route takes and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The three-gen-subnet miner's `/generate/`: a splat.
    Splat,
    /// `/generate_video/`: a turntable.
    Video,
    /// 404's competition 0 `/generate` (see [`competition_request`]).
    Competition,
}

impl Route {
    /// The route's name in metrics.
    fn endpoint(self) -> &'static str {
        match self {
            Route::Splat => "/generate/",
            Route::Video => "/generate_video/",
            Route::Competition => "/generate",
        }
    }
}

pub(crate) async fn generate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_generation(app, Route::Splat, headers, body).await
}

/// `POST /generate` (no slash): 404's competition API on an image server, the same as
/// `/generate/` on a text server (the competition takes images only).
pub(crate) async fn generate_bare(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = competition_or_splat(&app.config);
    handle_generation(app, route, headers, body).await
}

fn competition_or_splat(config: &ServerConfig) -> Route {
    match config.input {
        RequestInput::Image => Route::Competition,
        RequestInput::Text => Route::Splat,
    }
}

/// The metrics name of a request to `path` (for answers made before the handler runs).
pub(crate) fn endpoint_of(path: &str, config: &ServerConfig) -> &'static str {
    if path.starts_with("/generate_video") {
        Route::Video
    } else if path == "/generate" {
        competition_or_splat(config)
    } else {
        Route::Splat
    }
    .endpoint()
}

pub(crate) async fn generate_video(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_generation(app, Route::Video, headers, body).await
}

/// Refused before queueing: no bytes, or bytes of no known image format.
fn check_image(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the image is empty"));
    }
    if image::guess_format(bytes).is_err() {
        return Err(ApiError::bad_request(
            "the image is not in a known image format (send PNG, JPEG, WebP or GIF)",
        ));
    }
    Ok(())
}

/// 404's competition 0 request (`Competitions/competition0.md` in 404-Repo/404-gen-subnet:
/// `prompt_image_file: UploadFile = File(...)`, `seed: int = Form()`): the image as the file
/// field `prompt_image_file` and an integer `seed`, both required. The answer is the binary
/// PLY, Y-up. A negative seed (Python's `int` allows it) is taken modulo 2^64.
fn competition_request(form: &form::Form) -> Result<(GenerationRequest, OutputSpec), ApiError> {
    let image = form.bytes("prompt_image_file")?.ok_or_else(|| {
        ApiError::bad_request("missing file field 'prompt_image_file' (the image)")
    })?;
    check_image(image)?;
    let seed = form
        .number("seed")?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing form field 'seed' (an integer)"))?;
    let seed = seed
        .parse::<u64>()
        .or_else(|_| seed.parse::<i64>().map(|s| s as u64))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "seed must be an integer in -2^63..2^64, got '{seed}'"
            ))
        })?;
    Ok((
        GenerationRequest {
            prompt: String::new(),
            seed: Some(seed),
            image: Some(Arc::new(image.to_vec())),
            y_up: true,
        },
        OutputSpec::Splat {
            format: SplatFormat::Ply,
            encoding: Encoding::Binary,
        },
    ))
}

/// The text prompt of a request to a text server.
fn text_prompt(form: &form::Form) -> Result<String, ApiError> {
    if form.bytes("image")?.is_some() {
        return Err(ApiError::bad_request(
            "this server turns text prompts into 3D; it takes no 'image' field",
        ));
    }
    let prompt = form
        .text("prompt")?
        .ok_or_else(|| ApiError::bad_request("missing form field 'prompt'"))?;
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ApiError::bad_request(format!(
            "the prompt has {chars} characters; at most {MAX_PROMPT_CHARS} are accepted \
             (this server takes text prompts; image prompts need an image profile)"
        )));
    }
    Ok(prompt.to_string())
}

/// The image of a request to an image server: the file field `image`, or base64 image
/// bytes in `prompt`; refused unless its first bytes are a known image format.
fn image_input(form: &form::Form) -> Result<Vec<u8>, ApiError> {
    let bytes = match (form.bytes("image")?, form.text("prompt")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give the image once: a file field 'image' or base64 in 'prompt', not both",
            ))
        }
        (Some(bytes), None) => bytes.to_vec(),
        (None, Some(text)) => {
            decode_base64_image(&text).map_err(|e| {
                    ApiError::bad_request(format!(
                        "field 'prompt' is not base64 image bytes ({e}); this server turns images into 3D: send the image as a file field 'image' or base64 in 'prompt'"
                    ))
                })?
        }
        (None, None) => return Err(ApiError::bad_request(
            "missing image: send a file field 'image' or the image's bytes in base64 in 'prompt'",
        )),
    };
    check_image(&bytes)?;
    Ok(bytes)
}

fn parse_request(
    form: &form::Form,
    route: Route,
    config: &ServerConfig,
) -> Result<(GenerationRequest, OutputSpec), ApiError> {
    if route == Route::Competition {
        return competition_request(form);
    }
    let video = route == Route::Video;
    let (prompt, image) = match config.input {
        RequestInput::Text => (text_prompt(form)?, None),
        RequestInput::Image => (String::new(), Some(Arc::new(image_input(form)?))),
    };
    // Optional fields: surrounding white space is dropped, and an empty
    // value is the same as leaving the field out (as HTML forms send them).
    let present = |value: Option<String>| {
        value
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let field = |name: &str| -> Result<Option<String>, ApiError> { Ok(present(form.text(name)?)) };
    let seed = present(form.number("seed")?)
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("seed must be an integer in 0..2^64, got '{s}'"))
            })
        })
        .transpose()?;
    let number = |name: &str, default: u32| -> Result<u32, ApiError> {
        match present(form.number(name)?) {
            None => Ok(default),
            Some(s) => s.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a positive integer, got '{s}'"))
            }),
        }
    };
    let output = if video {
        let max_res = config.max_video_res;
        let resolution = number("video_res", DEFAULT_VIDEO_RES.min(max_res))?;
        if !(MIN_VIDEO_RES..=max_res).contains(&resolution) {
            return Err(ApiError::bad_request(format!(
                "video_res must be {MIN_VIDEO_RES} to {max_res} on this server, got {resolution}"
            )));
        }
        let frames = number("frames", DEFAULT_VIDEO_FRAMES)?;
        if !(1..=MAX_VIDEO_FRAMES).contains(&frames) {
            return Err(ApiError::bad_request(format!(
                "frames must be 1 to {MAX_VIDEO_FRAMES}, got {frames}"
            )));
        }
        let format = match field("video_format")?
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None => VideoFormat::DEFAULT,
            Some("mp4") => VideoFormat::Mp4,
            Some("gif") => VideoFormat::Gif,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "video_format must be 'mp4' or 'gif', got '{other}'"
                )))
            }
        };
        if !format.available() {
            return Err(ApiError::bad_request(
                "this server was built without the MP4 encoder; ask for video_format=gif",
            ));
        }
        // H.264 4:2:0 needs even sides: an odd MP4 resolution is rounded down.
        let resolution = if format == VideoFormat::Mp4 {
            resolution & !1
        } else {
            resolution
        };
        OutputSpec::Video {
            resolution,
            frames,
            format,
        }
    } else {
        let format = match field("format")?.map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("ply") => SplatFormat::Ply,
            Some("spz") => SplatFormat::Spz,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "format must be 'ply' or 'spz', got '{other}'"
                )))
            }
        };
        let encoding = match field("encoding")?
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("binary") => Encoding::Binary,
            Some("base64") => Encoding::Base64,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "encoding must be 'binary' or 'base64', got '{other}'"
                )))
            }
        };
        OutputSpec::Splat { format, encoding }
    };
    Ok((
        GenerationRequest {
            prompt,
            seed,
            image,
            y_up: false,
        },
        output,
    ))
}

/// The request header that carries a time budget: whole milliseconds from the request's
/// arrival until the client needs the answer.
pub(crate) const DEADLINE_HEADER: &str = "x-deadline-ms";

/// The request's time budget: `X-Deadline-Ms`, else the server's default for the
/// competition route; `None` without either.
fn time_budget(
    headers: &HeaderMap,
    route: Route,
    config: &ServerConfig,
) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(DEADLINE_HEADER) else {
        return Ok(config
            .default_deadline
            .filter(|_| route == Route::Competition));
    };
    let text = value.to_str().unwrap_or("").trim();
    text.parse::<u64>()
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "X-Deadline-Ms must be a whole number of milliseconds, got '{}'",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

fn deadline_exceeded(budget: Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded",
        format!(
            "the request's deadline ({} ms after its arrival) passed before generation could start",
            budget.as_millis()
        ),
    )
}

async fn handle_generation(
    app: Arc<App>,
    route: Route,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut tracker = Tracker::new(&app, route.endpoint());
    let config = &app.config;
    let budget = match time_budget(&headers, route, config) {
        Ok(b) => b,
        Err(e) => return tracker.fail(e),
    };
    let deadline = budget.map(|b| tracker.started + b);
    let parsed = match form::read_form(
        &headers,
        body,
        config.max_body_bytes,
        config.body_read_timeout,
    )
    .await
    {
        Ok(form) => parse_request(&form, route, &app.config),
        Err(e) => Err(e),
    };
    let (request, output) = match parsed {
        Ok(p) => p,
        Err(e) => return tracker.fail(e),
    };
    if let (Some(budget), Some(deadline)) = (budget, deadline) {
        if Instant::now() >= deadline {
            return tracker.fail(deadline_exceeded(budget));
        }
    }
    let token = app.pool.root.child();
    let (reply, receiver) = oneshot::channel();
    let job = Job {
        id: 0,
        request,
        output,
        cancel: token.clone(),
        enqueued: Instant::now(),
        deadline,
        reply,
    };
    let rejection = match app.pool.submit(job) {
        Ok(ticket) => {
            tracker.job = Some(SubmittedJob { token, ticket });
            None
        }
        Err(rejection) => Some(rejection),
    };
    if let Some(rejection) = rejection {
        let e = match rejection {
            Rejection::NotReady => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the models are still loading; see GET /health",
            )
            .retry_after(5),
            Rejection::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            )
            .retry_after(5),
            Rejection::QueueFull { retry_after_secs } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "every device queue is full ({} waiting each); retry later",
                    app.config.queue_size
                ),
            )
            .retry_after(retry_after_secs),
        };
        return tracker.fail(e);
    }
    let timeout = app.config.timeout;
    let result = match tokio::time::timeout(timeout, receiver).await {
        Err(_) => {
            tracker.abandon_job();
            return tracker.fail(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "generation did not finish within {} s",
                    timeout.as_secs_f64()
                ),
            ));
        }
        Ok(Err(_)) => {
            return tracker.fail(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                "the worker dropped the job",
            ))
        }
        Ok(Ok(r)) => r,
    };
    let out = match result {
        Ok(out) => out,
        Err(f) => {
            let e = match f {
                JobFailure::Cancelled => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    if app.pool.is_draining() {
                        "shutting_down"
                    } else {
                        "cancelled"
                    },
                    "the job was cancelled (server shutting down)",
                )
                .retry_after(5),
                JobFailure::OutOfMemory(m) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "out_of_memory",
                    format!("the device ran out of memory: {m}"),
                ),
                JobFailure::BadInput(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_input", m),
                JobFailure::Failed(m) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    format!("generation failed: {m}"),
                ),
                JobFailure::Panicked(m) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "panicked",
                    format!("generation panicked: {m}"),
                ),
                JobFailure::DeadlineExceeded => deadline_exceeded(budget.unwrap_or_default()),
            };
            return tracker.fail(e);
        }
    };
    let total = tracker.started.elapsed();
    tracker.ok(success_response(out, output, total))
}

/// Stage names as HTTP tokens and label values: `[A-Za-z0-9_-]`, others `_`.
pub(crate) fn sanitize_stage(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "stage".into()
    } else {
        s
    }
}

fn success_response(out: JobOutput, spec: OutputSpec, total: Duration) -> Response {
    let mut timings: Vec<(String, Duration)> = out
        .timings
        .iter()
        .map(|(s, d)| (sanitize_stage(s), *d))
        .collect();
    timings.push(("total".into(), total));
    let x_stage = timings
        .iter()
        .map(|(s, d)| format!("{s}={:.6}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(",");
    let server_timing = timings
        .iter()
        .map(|(s, d)| format!("{s};dur={:.3}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = (StatusCode::OK, out.encoded.body).into_response();
    let h = r.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("content-type", out.encoded.content_type.to_string());
    set("x-stage-timings", x_stage);
    set("server-timing", server_timing);
    set("x-gaussian-count", out.gaussians.to_string());
    set("x-device", out.device.to_string());
    if !out.degradations.is_empty() {
        let degraded = out
            .degradations
            .iter()
            .map(|d| format!("{}={}", d.change, d.detail))
            .collect::<Vec<_>>()
            .join(", ");
        set("x-degraded", degraded);
    }
    match spec {
        OutputSpec::Splat { format, encoding } => {
            set(
                "x-splat-format",
                if format == SplatFormat::Ply {
                    "ply"
                } else {
                    "spz"
                }
                .into(),
            );
            set(
                "x-encoding",
                if encoding == Encoding::Binary {
                    "binary"
                } else {
                    "base64"
                }
                .into(),
            );
        }
        OutputSpec::Video {
            resolution,
            frames,
            format,
        } => {
            set("x-video-res", resolution.to_string());
            set("x-video-frames", frames.to_string());
            set(
                "x-video-format",
                if format == VideoFormat::Mp4 {
                    "mp4"
                } else {
                    "gif"
                }
                .into(),
            );
        }
    }
    r
}
