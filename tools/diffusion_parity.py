"""GPU parity and speed of splatforge-diffusion against diffusers (issue 5).

Usage (on the GPU machine, diffusers 0.42.1 importable, torch 2.11):
    python3 tools/diffusion_parity.py WORKDIR OUTDIR [PARITY_BINARY]

1. Makes full-size random-weight models with diffusers (seeded, default
   initialisation): the SD 2.1 UNet (`stabilityai/stable-diffusion-2-1`'s
   unet/config.json), the SD AutoencoderKL, and a FLUX.1-schnell transformer
   reduced to 2 double + 2 single blocks at full width (the full 12B model in
   f32 does not fit twice on one GPU); writes them with `save_pretrained`
   (diffusers layout, safetensors) under WORKDIR.
2. Runs them on fixed seeded inputs in f32 (TF32 off) and bf16; writes inputs
   and f32 outputs to WORKDIR/io.safetensors and diffusers' own bf16 error.
3. Times, in bf16 with PyTorch SDPA (diffusers' default attention processor):
   UNet step batch 8 at 32×32 latents; VAE decode 4×256²; VAE decode 2048²
   tiled (1024-px tiles, 128-px overlap); FLUX.1-schnell transformer step at
   512² and 1024² (full 19 + 38 blocks, random bf16 weights, 256 T5 tokens).
4. Runs PARITY_BINARY (crates/diffusion/examples/parity.rs built with
   `--features cuda`) on WORKDIR, which loads the same files and inputs and
   reports relative errors and its timings, then writes OUTDIR/summary.json
   and prints a Markdown table.
"""
import gc
import json
import os
import subprocess
import sys
import time
import traceback

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = "cuda"
BF = torch.bfloat16

SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
FLUX_SCHNELL = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)

# Attention timings: (name, batch, queries, keys, heads, head dim), in step with
# ATTENTION_SHAPES of crates/diffusion/examples/parity.rs (which says what each is).
ATTENTION_SHAPES = [
    ("op_attention_24x4352x128", 1, 4352, 4352, 24, 128),
    ("op_attention_mvdream_2x4096x5x64", 2, 4096, 4096, 5, 64),
    ("op_attention_trellis_ss_2x4096x16x64", 2, 4096, 4096, 16, 64),
    ("op_attention_trellis_cross_2x4096x1374x16x64", 2, 4096, 1374, 16, 64),
    ("op_attention_trellis_slat_2x5000x16x64", 2, 5000, 5000, 16, 64),
    ("op_attention_trellis_slat_2x17000x16x64", 2, 17000, 17000, 16, 64),
    ("op_attention_dinov2_1x1374x16x64", 1, 1374, 1374, 16, 64),
]
RESULTS = {"diffusers": diffusers.__version__, "torch": torch.__version__, "py_time_ms": {}, "py_bf16_rel_l2": {}, "errors": []}


def log(*a):
    print(*a, flush=True)


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def bench(fn, warm=3, iters=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def cudnn_dirs():
    """Folders holding libcudnn.so.9 (the binary's `cudnn` feature links it)."""
    import glob
    found = []
    try:
        import nvidia.cudnn
        found += [os.path.join(d, "lib") for d in nvidia.cudnn.__path__]  # a namespace package
    except ImportError:
        pass
    for pattern in ["/usr/local/cuda-13.0/lib64/libcudnn.so.9", "/usr/lib/x86_64-linux-gnu/libcudnn.so.9",
                    os.path.join(os.path.dirname(torch.__file__), "lib", "libcudnn.so.9")]:
        found += [os.path.dirname(p) for p in glob.glob(pattern)]
    return [d for d in found if os.path.exists(os.path.join(d, "libcudnn.so.9"))]


def free(*objs):
    for o in objs:
        del o
    gc.collect()
    torch.cuda.empty_cache()


def section(name, fn):
    t = time.time()
    try:
        fn()
    except Exception as e:  # keep going: one device call must report what it can
        traceback.print_exc()
        RESULTS["errors"].append(f"{name}: {e!r}")
    log(f"[{name}] {time.time() - t:.1f} s")
    gc.collect()
    torch.cuda.empty_cache()


def warm_gpu(seconds=3.0):
    """Brings the GPU out of its idle clocks before anything is timed."""
    a = torch.randn(8192, 8192, device=DEV, dtype=BF)
    t = time.time()
    while time.time() - t < seconds:
        a @ a
    torch.cuda.synchronize()


def main():
    work, out = sys.argv[1], sys.argv[2]
    warm_gpu()
    binary = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(work, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    io = {}
    log("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version(), "diffusers", diffusers.__version__, torch.cuda.get_device_name())

    @torch.no_grad()
    def unet():
        torch.manual_seed(0)
        with torch.device(DEV):
            m = UNet2DConditionModel(**SD21_UNET).eval()
        m.save_pretrained(os.path.join(work, "unet"))
        g = torch.Generator(DEV).manual_seed(1)
        x = torch.randn(2, 4, 64, 64, device=DEV, generator=g)
        ctx = torch.randn(2, 77, 1024, device=DEV, generator=g)
        t = torch.tensor([500.0, 500.0], device=DEV)
        ref = m(x, t, encoder_hidden_states=ctx).sample
        io.update(unet_x=x, unet_ctx=ctx, unet_t=t, unet_ref_f32=ref)
        m = m.to(BF)
        yb = m(x.to(BF), t, encoder_hidden_states=ctx.to(BF)).sample.float()
        io["unet_ref_bf16"] = yb
        RESULTS["py_bf16_rel_l2"]["unet"] = rel_l2(yb, ref)
        x8 = torch.randn(8, 4, 32, 32, device=DEV, dtype=BF)
        c8 = torch.randn(8, 77, 1024, device=DEV, dtype=BF)
        t8 = torch.full((8,), 500.0, device=DEV)
        RESULTS["py_time_ms"]["unet_step_b8_32x32"] = bench(lambda: m(x8, t8, encoder_hidden_states=c8).sample, 10, 30)
        log("unet", RESULTS["py_bf16_rel_l2"]["unet"], RESULTS["py_time_ms"]["unet_step_b8_32x32"])

    @torch.no_grad()
    def vae():
        torch.manual_seed(2)
        with torch.device(DEV):
            m = AutoencoderKL(**SD_VAE).eval()
        m.save_pretrained(os.path.join(work, "vae"))
        g = torch.Generator(DEV).manual_seed(3)
        z = torch.randn(1, 4, 64, 64, device=DEV, generator=g) * 5.0
        img = torch.rand(1, 3, 256, 256, device=DEV, generator=g) * 2.0 - 1.0
        dec = m.decode(z).sample
        enc = m.encode(img).latent_dist.mean
        io.update(vae_z=z, vae_img=img, vae_dec_ref_f32=dec, vae_enc_ref_f32=enc)
        m = m.to(BF)
        db = m.decode(z.to(BF)).sample.float()
        eb = m.encode(img.to(BF)).latent_dist.mean.float()
        io.update(vae_dec_ref_bf16=db, vae_enc_ref_bf16=eb)
        RESULTS["py_bf16_rel_l2"]["vae_decode"] = rel_l2(db, dec)
        RESULTS["py_bf16_rel_l2"]["vae_encode_mean"] = rel_l2(eb, enc)
        z4 = torch.randn(4, 4, 32, 32, device=DEV, dtype=BF)
        RESULTS["py_time_ms"]["vae_decode_4x256"] = bench(lambda: m.decode(z4).sample, 2, 10)

        m.requires_grad_(False)  # as in DreamGaussian's guidance: gradients to the images only

        def sds_encode():  # DreamGaussian's encode_imgs with the gradient to the images
            with torch.enable_grad():
                x = torch.rand(4, 3, 256, 256, device=DEV, dtype=BF, requires_grad=True)
                m.encode(2 * x - 1).latent_dist.mean.square().sum().backward()
                return x.grad
        RESULTS["py_time_ms"]["sds_encode_fwd_bwd_4x256"] = bench(sds_encode, 2, 5)
        m.enable_tiling()
        # diffusers' tiling with our tile size and overlap (1024 px, 128 px = 0.125).
        m.tile_sample_min_size = 1024
        m.tile_latent_min_size = 128
        m.tile_overlap_factor = 0.125
        z2k = torch.randn(1, 4, 256, 256, device=DEV, dtype=BF)
        RESULTS["py_time_ms"]["vae_decode_2048_tiled"] = bench(lambda: m.decode(z2k).sample, 1, 3)
        log("vae", RESULTS["py_bf16_rel_l2"], RESULTS["py_time_ms"])

    @torch.no_grad()
    def flux_small():
        torch.manual_seed(4)
        cfg = dict(FLUX_SCHNELL, num_layers=2, num_single_layers=2)
        with torch.device(DEV):
            m = FluxTransformer2DModel(**cfg).eval()
        m.save_pretrained(os.path.join(work, "flux_small"))
        g = torch.Generator(DEV).manual_seed(5)
        n = 32 * 32  # 512² image → 64² latents → 32² packed tokens
        img = torch.randn(1, n, 64, device=DEV, generator=g)
        ids = torch.zeros(32, 32, 3, device=DEV)
        ids[..., 1] = torch.arange(32, device=DEV)[:, None]
        ids[..., 2] = torch.arange(32, device=DEV)[None, :]
        img_ids = ids.reshape(n, 3)
        txt = torch.randn(1, 256, 4096, device=DEV, generator=g)
        txt_ids = torch.zeros(256, 3, device=DEV)
        pooled = torch.randn(1, 768, device=DEV, generator=g)
        t = torch.tensor([0.75], device=DEV)
        kw = dict(img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)
        ref = m(hidden_states=img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=t, **kw)[0]
        io.update(flux_img=img, flux_img_ids=img_ids, flux_txt=txt, flux_txt_ids=txt_ids, flux_pooled=pooled, flux_t=t, flux_small_ref_f32=ref)
        m = m.to(BF)
        y = m(hidden_states=img.to(BF), encoder_hidden_states=txt.to(BF), pooled_projections=pooled.to(BF), timestep=t.to(BF), **kw)[0]
        io["flux_small_ref_bf16"] = y.float()
        RESULTS["py_bf16_rel_l2"]["flux_small"] = rel_l2(y.float(), ref)
        with open(os.path.join(work, "flux_full_config.json"), "w") as f:
            json.dump(dict(FLUX_SCHNELL, _class_name="FluxTransformer2DModel"), f)
        log("flux small", RESULTS["py_bf16_rel_l2"]["flux_small"])

    @torch.no_grad()
    def flux_speed():
        torch.manual_seed(6)
        torch.set_default_dtype(BF)
        try:
            with torch.device(DEV):
                m = FluxTransformer2DModel(**FLUX_SCHNELL).eval()
        finally:
            torch.set_default_dtype(torch.float32)
        for side in (512, 1024):
            s = side // 16
            img = torch.randn(1, s * s, 64, device=DEV, dtype=BF)
            ids = torch.zeros(s, s, 3, device=DEV)
            ids[..., 1] = torch.arange(s, device=DEV)[:, None]
            ids[..., 2] = torch.arange(s, device=DEV)[None, :]
            txt = torch.randn(1, 256, 4096, device=DEV, dtype=BF)
            pooled = torch.randn(1, 768, device=DEV, dtype=BF)
            t = torch.tensor([0.75], device=DEV, dtype=BF)
            f = lambda: m(hidden_states=img, encoder_hidden_states=txt, pooled_projections=pooled, timestep=t,
                          img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(256, 3, device=DEV), guidance=None, return_dict=False)[0]
            RESULTS["py_time_ms"][f"flux_step_{side}"] = bench(f, 2, 5)
        log("flux speed", RESULTS["py_time_ms"])

    @torch.no_grad()
    def ops():
        # Single operations at the sizes that dominate the benchmarks (bf16).
        F = torch.nn.functional
        r = lambda *s: torch.randn(*s, device=DEV, dtype=BF)
        x = r(4, 128, 256, 256)
        w = r(128, 128, 3, 3)
        x5 = r(4, 512, 64, 64)
        w5 = r(512, 512, 3, 3)
        gw, gb = r(128), r(128)
        xu = r(4, 128, 128, 128)
        a, b = r(4352, 3072), r(3072, 12288)
        P = RESULTS["py_time_ms"]
        P["op_conv3x3_4x128x256"] = bench(lambda: F.conv2d(x, w, padding=1))
        P["op_conv3x3_4x512x64"] = bench(lambda: F.conv2d(x5, w5, padding=1))
        x3, w3 = r(8, 320, 32, 32), r(320, 320, 3, 3)
        P["op_conv3x3_8x320x32"] = bench(lambda: F.conv2d(x3, w3, padding=1))
        P["op_group_norm_4x128x256"] = bench(lambda: F.group_norm(x, 32, gw, gb, 1e-6))
        P["op_group_norm_4x128x256+silu"] = bench(lambda: F.silu(F.group_norm(x, 32, gw, gb, 1e-6)))
        P["op_silu_4x128x256"] = bench(lambda: F.silu(x))
        P["op_upsample2x_4x128x128"] = bench(lambda: F.interpolate(xu, scale_factor=2.0, mode="nearest"))
        vq, vk, vv = r(1, 1, 16384, 512), r(1, 1, 16384, 512), r(1, 1, 16384, 512)
        P["op_attention_vae_1x16384x512"] = bench(lambda: F.scaled_dot_product_attention(vq, vk, vv))
        for name, b_, nq, nk, h, d in ATTENTION_SHAPES:
            aq, ak, av = r(b_, h, nq, d), r(b_, h, nk, d), r(b_, h, nk, d)
            P[name] = bench(lambda: F.scaled_dot_product_attention(aq, ak, av))
        P["op_matmul_4352x3072x12288"] = bench(lambda: a @ b)
        xl, wl, bl = r(8, 1024, 320), r(1280, 320), r(1280)
        P["op_linear_8x1024x320x1280"] = bench(lambda: F.linear(xl, wl, bl))
        log("ops", {k: round(v, 3) for k, v in P.items() if k.startswith("op_")})

    # PARITY_SECTIONS (comma-separated, default all) picks the reference
    # sections; the binary gets PARITY_ONLY with its own section names.
    wanted = os.environ.get("PARITY_SECTIONS", "ops,unet,vae,flux_small,flux_speed").split(",")
    for name, fn in [("ops", ops), ("unet", unet), ("vae", vae), ("flux_small", flux_small)]:
        if name in wanted:
            section(name, fn)
    save_file({k: v.float().contiguous().cpu() for k, v in io.items()}, os.path.join(work, "io.safetensors"))
    if "flux_speed" in wanted:
        section("flux_speed", flux_speed)

    ours = []
    if binary:
        t = time.time()
        env = dict(os.environ)
        # diffusers' f32 references ran with TF32 off; cuDNN (and cuBLAS) use
        # TF32 for f32 unless told otherwise.
        env["NVIDIA_TF32_OVERRIDE"] = "0"
        env["LD_LIBRARY_PATH"] = ":".join([*cudnn_dirs(), "/usr/local/cuda-13.0/lib64", env.get("LD_LIBRARY_PATH", "")])
        p = subprocess.run([binary, work, os.path.join(out, "ours.jsonl")], env=env, capture_output=True, text=True)
        log(p.stderr[-4000:])
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                ours.append(json.loads(line))
        if p.returncode != 0:
            RESULTS["errors"].append(f"parity binary exit {p.returncode}")
        log(f"[ours] {time.time() - t:.1f} s")
    RESULTS["ours"] = ours
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)

    log("\n| model | dtype | rel. L2 error | rel. max error | bound | pass |")
    log("|---|---|---|---|---|---|")
    for r in ours:
        if r["kind"] == "parity":
            log(f"| {r['model']} | {r['dtype']} | {r['rel_l2']:.2e} | {r['rel_max']:.2e} | {r['bound']:g} | {r['pass']} |")
    log("\n| case (bf16) | ours ms | diffusers ms | ratio |")
    log("|---|---|---|---|")
    py = RESULTS["py_time_ms"]
    for r in ours:
        if r["kind"] == "time":
            key = r["case"].split(" ")[0]
            ref = py.get(key)
            ratio = f"{r['ms'] / ref:.2f}×" if ref else "-"
            log(f"| {r['case']} | {r['ms']:.2f} | {ref if ref is None else round(ref, 2)} | {ratio} |")
    for r in ours:
        if r["kind"] == "value":
            log(f"{r['name']}: {r['value']:.4g}")
        elif r["kind"] == "text":
            log(f"{r['name']}: {r['value']}")
    log("diffusers bf16 vs f32:", json.dumps(RESULTS["py_bf16_rel_l2"]))
    log("errors:", RESULTS["errors"])


if __name__ == "__main__":
    main()
