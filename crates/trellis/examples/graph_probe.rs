//! Whether one guided step of the stage-1 flow (`SparseStructureFlowModel::forward` on
//! the CFG batch of 2, full size) can be captured as a CUDA graph on candle's stream, and
//! what replaying it saves (issue 18, CUDA graphs). Loads stage 1 from `--models` (a full-size
//! TRELLIS folder, e.g. one `models make-random` wrote) or writes a random one under `OUT`,
//! then:
//! 1. the eager forward, warmed up, then timed (median of 10);
//! 2. the same forward captured (`cuStreamBeginCapture` on candle's stream, relaxed mode;
//!    instantiated with auto-free on launch, so that the captured output's buffer is
//!    reallocated at the same address by every launch);
//! 3. replays: the inputs copied into the captured buffers, a launch, the output copied out
//!    (median of 10), and the replay's output against the eager one on the same inputs.
//!
//! Prints one JSON line: the eager and replay times, their ratio, the largest difference,
//! or the error that ended the capture (the first op a graph cannot hold names itself
//! there). Exit status 0 when the replay equals the eager output within 1e-6 relative.
//!
//! ```text
//! cargo run --release -p splatforge-trellis --features cuda --example graph_probe -- OUT [--dtype f16|bf16|f32] [--models DIR]
//! ```

#[cfg(feature = "cuda")]
mod probe {
    use std::path::PathBuf;

    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::{DType, Device, Tensor};
    use splatforge_nn::test_util::{median_ms, relative_error};
    use splatforge_trellis::pipeline::dinov2_in_folder;
    use splatforge_trellis::stage1::{write_random_stage1, ModelSize, Stage1};

    pub type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

    pub fn run() -> R<()> {
        let mut args = std::env::args().skip(1);
        let usage = "usage: graph_probe OUT [--dtype f16|bf16|f32] [--models TRELLIS_DIR]";
        let out = PathBuf::from(args.next().ok_or(usage)?);
        let (mut dtype, mut models) = (DType::F16, None);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(usage)?;
            match flag.as_str() {
                "--dtype" => dtype = value.parse::<splatforge_nn::Precision>()?.dtype(),
                "--models" => models = Some(PathBuf::from(value)),
                _ => return Err(usage.into()),
            }
        }
        let dev = Device::new_cuda(0)?;
        let cuda = dev.as_cuda_device()?;
        let (model_dir, dinov2) = match models {
            Some(dir) => {
                let dinov2 = dinov2_in_folder(&dir).ok_or("no DINOv2 file in --models")?;
                (dir, dinov2)
            }
            None => {
                let dir = out.join("stage1-full");
                let dinov2 = write_random_stage1(&dir, ModelSize::Full, DType::F32, 3)?;
                (dir, dinov2)
            }
        };
        let stage1 = Stage1::load(&model_dir, &dinov2, dtype, &dev)?;
        let flow = stage1.flow();
        let cfg = flow.config().clone();
        let r = cfg.resolution;
        let x = splatforge_nn::rng::randn(1, &[2, cfg.in_channels, r, r, r], DType::F32, &dev)?;
        let t = Tensor::new(&[750f32, 750.0], &dev)?;
        let cond = splatforge_nn::rng::randn(2, &[2, 1374, cfg.cond_channels], DType::F32, &dev)?;

        // Each phase says itself on stderr first, so that a fault names the phase.
        eprintln!("eager forward");
        let eager = flow.forward(&x, &t, &cond)?;
        let eager_ms = median_ms(&dev, || -> R<()> {
            flow.forward(&x, &t, &cond)?;
            Ok(())
        })?;

        // The captured buffers: the graph reads its inputs from these addresses.
        let (xs, ts, cs) = (x.copy()?, t.copy()?, cond.copy()?);
        dev.synchronize()?;
        // SAFETY: one stream does all of candle's work here; with event tracking off, no op
        // waits on an event recorded outside the capture.
        unsafe { cuda.disable_event_tracking() };
        let stream = cuda.cuda_stream();
        eprintln!("capture");
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
        let captured = flow.forward(&xs, &ts, &cs);
        let graph = stream.end_capture(
            sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
        );
        let (output, graph) = match (captured, graph) {
            (Ok(output), Ok(Some(graph))) => (output, graph),
            (captured, graph) => {
                let why = match (captured, graph) {
                    (Err(e), _) => format!("the forward failed under capture: {e}"),
                    (_, Err(e)) => format!("end of capture / instantiation failed: {e:?}"),
                    _ => "the capture recorded nothing".to_string(),
                };
                println!(
                    "{}",
                    serde_json::json!({"dtype": format!("{dtype:?}"), "eager_ms": eager_ms, "captured": false, "error": why})
                );
                std::process::exit(2);
            }
        };
        eprintln!("first launch");
        graph.launch()?;
        dev.synchronize()?;
        eprintln!("copy out");
        let replayed = output.copy()?;
        let err = relative_error(&replayed, &eager)?;
        eprintln!("replays");
        let replay_ms = median_ms(&dev, || -> R<()> {
            xs.slice_set(&x, 0, 0)?;
            ts.slice_set(&t, 0, 0)?;
            cs.slice_set(&cond, 0, 0)?;
            graph.launch()?;
            output.copy()?;
            Ok(())
        })?;
        println!(
            "{}",
            serde_json::json!({
                "dtype": format!("{dtype:?}"),
                "eager_ms": eager_ms,
                "captured": true,
                "replay_ms": replay_ms,
                "replay_over_eager": replay_ms / eager_ms,
                "relative_error": err,
            })
        );
        std::process::exit(if err <= 1e-6 { 0 } else { 1 });
    }
}

#[cfg(feature = "cuda")]
fn main() -> probe::R<()> {
    probe::run()
}

#[cfg(not(feature = "cuda"))]
fn main() -> Result<(), &'static str> {
    Err("graph_probe needs a CUDA build (--features cuda)")
}
