#!/usr/bin/env python3
"""Reference fitting loop for issue 4's GPU benchmark: gsplat 1.5.3 `rasterization`
+ torch Adam, with splatforge's loss, schedule and densification.

It fits exactly what `gpu_fit bench --export DIR` (crates/fit/examples/gpu_fit.rs)
writes, so both sides fit identical targets from identical initial Gaussians:

    DIR/train_rgb.npy            [V,H,W,3] float32 targets (white background)
    DIR/init_*.npy               initial means / quats (wxyz) / log_scales /
                                 opacity_logits / sh [N,K,3]
    DIR/schedule.json            config (DreamGaussian key names), scene extent,
                                 cameras (OpenCV world->camera, fx fy cx cy, near, far),
                                 and per step: the view(s), background, position LR,
                                 active SH degree, whether gradients count for
                                 densification; the steps after which to densify
                                 and to reset opacity (recorded from our trainer)

What it does per step, as splatforge's CPU reference (crates/fit/src):
  - render with gsplat `rasterization` (packed=False, classic mode, eps2d 0.3,
    SH colours, the step's background), scales = exp(log_scales),
    opacities = sigmoid(logits);
  - loss = (1 - l)*L1 + l*(1 - SSIM) on the render clamped to [0, 1]
    (3DGS's SSIM: 11x11 Gaussian window, sigma 1.5, zero padding), l = lambda_ssim;
  - densification statistics: ||d loss / d means2d|| in NDC units (pixel gradient
    times W/2, H/2 and the number of cameras, as gsplat's DefaultStrategy), summed
    over the steps where the Gaussian is visible, count of those steps, max radius;
  - torch.optim.Adam (fused, eps 1e-15, betas 0.9/0.999), one group per parameter
    with DreamGaussian's learning rates, the position LR set per step from the
    recorded schedule;
  - densify as densify.rs: clone (grad >= threshold, max scale <= percent_dense *
    extent), split into 2 (max scale larger; N(0, I) offsets rotated and scaled,
    scales / 1.6), prune by opacity (and screen / world size when max_screen_size is
    set); new rows get zero Adam moments, kept rows keep theirs, step counts stay;
    reset opacity caps at 0.01 and zeroes the opacity moments.

The split samples come from torch's generator, not from splatforge's, so the two fits
are not bit-for-bit the same trajectory; everything else is.

Output: FOLDER/ref.ply (3DGS binary PLY, scored by `gpu_fit eval` with splatforge's
evaluator on the same held-out views) and --json (wall times: from parameter upload to the fitted tensors
back on the host, after a warm-up fit of --warmup-iters steps).

    python3 gsplat_fit_reference.py DIR [DIR ...] --runs 3 --json ref.json

With several folders (one per seed, `gpu_fit bench --seeds 0,1,2 --export D` writes
D/seed0, D/seed1, ...), the first is timed (--runs fits after a warm-up) and every
folder gets one fit whose PLY is written to FOLDER/ref.ply.
"""
import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from gsplat import rasterization


def gaussian_window(size=11, sigma=1.5, device="cuda"):
    x = torch.arange(size, dtype=torch.float64)
    g = torch.exp(-((x - size // 2) ** 2) / (2 * sigma * sigma))
    g = (g / g.sum()).float()
    w2 = torch.outer(g, g)
    return w2.expand(3, 1, size, size).contiguous().to(device)


def ssim(x, y, window):
    """3DGS's ssim(): x, y [B,3,H,W]; zero-padded 11x11 Gaussian window."""
    pad = window.shape[-1] // 2
    mu1 = F.conv2d(x, window, padding=pad, groups=3)
    mu2 = F.conv2d(y, window, padding=pad, groups=3)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = F.conv2d(x * x, window, padding=pad, groups=3) - mu1_sq
    s2 = F.conv2d(y * y, window, padding=pad, groups=3) - mu2_sq
    s12 = F.conv2d(x * y, window, padding=pad, groups=3) - mu12
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return m.mean()


def quat_to_rotmat(q):
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    r, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
            2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
            2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


NAMES = ["means", "sh0", "shN", "opacity_logits", "log_scales", "quats"]


class Fitter:
    def __init__(self, data, device="cuda", seed=0):
        self.d = data
        self.cfg = data["schedule"]["config"]
        self.extent = float(data["schedule"]["extent"])
        self.dev = device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        init = {k: torch.from_numpy(v).to(device) for k, v in data["init"].items()}
        sh = init["sh"]
        self.K = sh.shape[1]
        tensors = {
            "means": init["means"],
            "sh0": sh[:, :1, :].contiguous(),
            "shN": sh[:, 1:, :].contiguous() if self.K > 1 else None,
            "opacity_logits": init["opacity_logits"],
            "log_scales": init["log_scales"],
            "quats": init["quats"],
        }
        c = self.cfg
        lrs = {
            "means": 0.0,  # set per step from the schedule
            "sh0": c["feature_lr"],
            "shN": c["feature_lr"] / 20.0,
            "opacity_logits": c["opacity_lr"],
            "log_scales": c["scaling_lr"],
            "quats": c["rotation_lr"],
        }
        self.names = [n for n in NAMES if tensors[n] is not None]
        self.p = {n: torch.nn.Parameter(tensors[n].clone()) for n in self.names}
        self.opt = torch.optim.Adam(
            [{"params": [self.p[n]], "lr": lrs[n], "name": n} for n in self.names],
            lr=0.0, betas=(0.9, 0.999), eps=1e-15, fused=True,
        )
        self.group = {g["name"]: g for g in self.opt.param_groups}
        n = tensors["means"].shape[0]
        self.reset_stats(n)

        cams = data["schedule"]["cameras"]
        self.viewmats = torch.tensor([c["viewmat"] for c in cams], dtype=torch.float32, device=device)
        self.Ks = torch.tensor(
            [[[c["fx"], 0.0, c["cx"]], [0.0, c["fy"], c["cy"]], [0.0, 0.0, 1.0]] for c in cams],
            dtype=torch.float32, device=device,
        )
        self.W, self.H = cams[0]["width"], cams[0]["height"]
        self.near, self.far = float(cams[0]["near"]), float(cams[0]["far"])
        self.targets = torch.from_numpy(data["train_rgb"]).to(device)  # [V,H,W,3]
        self.window = gaussian_window(device=device)
        self.mode = "antialiased" if c.get("antialiased") else "classic"

    def reset_stats(self, n):
        self.grad_accum = torch.zeros(n, device=self.dev)
        self.denom = torch.zeros(n, device=self.dev)
        self.max_radii = torch.zeros(n, device=self.dev)

    def colors(self):
        if "shN" in self.p:
            return torch.cat([self.p["sh0"], self.p["shN"]], dim=1)
        return self.p["sh0"]

    def step(self, st):
        c = self.cfg
        self.group["means"]["lr"] = st["lr_xyz"]
        vids = st["views"]
        C = len(vids)
        bg = torch.tensor(st["bg"], dtype=torch.float32, device=self.dev).expand(C, 3)
        render, alpha, info = rasterization(
            self.p["means"], self.p["quats"], torch.exp(self.p["log_scales"]),
            torch.sigmoid(self.p["opacity_logits"]), self.colors(),
            self.viewmats[vids], self.Ks[vids], self.W, self.H,
            near_plane=self.near, far_plane=self.far, eps2d=0.3,
            sh_degree=st["sh_degree"], packed=False, backgrounds=bg,
            rasterize_mode=self.mode,
        )
        if st["accumulate"]:
            info["means2d"].retain_grad()
        x = render.clamp(0.0, 1.0)
        gt = self.targets[vids]
        lam = c["lambda_ssim"]
        l1 = (x - gt).abs().mean()
        s = ssim(x.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), self.window)
        loss = (1.0 - lam) * l1 + lam * (1.0 - s)
        loss.backward()
        if st["accumulate"]:
            with torch.no_grad():
                g = info["means2d"].grad.clone()  # [C,N,2] pixels
                g[..., 0] *= self.W / 2.0 * C
                g[..., 1] *= self.H / 2.0 * C
                radii = info["radii"]
                if radii.dim() == g.dim():  # [C,N,2] (gsplat >= 1.5)
                    vis = (radii > 0).all(dim=-1)
                    rmax = radii.max(dim=-1).values.float()
                else:
                    vis = radii > 0
                    rmax = radii.float()
                norm = g.norm(dim=-1)
                self.grad_accum += (norm * vis).sum(0)
                self.denom += vis.sum(0).float()
                self.max_radii = torch.maximum(self.max_radii, (rmax * vis).max(0).values)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    @torch.no_grad()
    def _replace(self, name, new_rows, keep):
        """cat(param, new_rows)[keep], with Adam moments following (zeros for new rows)."""
        old = self.p[name]
        grp = self.group[name]
        st = self.opt.state.pop(old, {})
        data = torch.cat([old.data, new_rows], 0)[keep]
        newp = torch.nn.Parameter(data)
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key] = torch.cat([st[key], torch.zeros_like(new_rows)], 0)[keep]
        grp["params"][0] = newp
        self.p[name] = newp
        if st:
            self.opt.state[newp] = st

    @torch.no_grad()
    def densify(self):
        c = self.cfg
        p = self.p
        n0 = p["means"].shape[0]
        grads = torch.where(self.denom > 0, self.grad_accum / self.denom.clamp_min(1e-30),
                            torch.zeros_like(self.grad_accum))
        limit = c["percent_dense"] * self.extent
        ms = torch.exp(p["log_scales"].max(dim=1).values)
        hot = grads >= c["densify_grad_threshold"]
        clone = hot & (ms <= limit)
        split = hot & (ms > limit)
        ic = clone.nonzero().squeeze(1)
        isp = split.nonzero().squeeze(1)
        ns = isp.numel()
        nc = ic.numel()
        # Split children: two passes over the split rows.
        s = torch.exp(p["log_scales"][isp]).repeat(2, 1)
        R = quat_to_rotmat(p["quats"][isp]).repeat(2, 1, 1)
        eps = torch.randn(2 * ns, 3, device=self.dev, generator=self.gen)
        child_means = p["means"][isp].repeat(2, 1) + (R @ (s * eps).unsqueeze(-1)).squeeze(-1)
        shrink = math.log(0.8 * 2)
        child_ls = p["log_scales"][isp].repeat(2, 1) - shrink
        new_rows = {}
        for name in self.names:
            base = p[name].data
            rows = [base[ic], base[isp].repeat((2,) + (1,) * (base.dim() - 1))]
            if name == "means":
                rows[1] = child_means
            elif name == "log_scales":
                rows[1] = child_ls
            new_rows[name] = torch.cat(rows, 0)
        total = n0 + nc + 2 * ns
        keep = torch.ones(total, dtype=torch.bool, device=self.dev)
        keep[isp] = False
        op_all = torch.cat([p["opacity_logits"].data, new_rows["opacity_logits"]], 0)
        prune = torch.sigmoid(op_all) < c["min_opacity"]
        if c.get("max_screen_size") is not None:
            ls_all = torch.cat([p["log_scales"].data, new_rows["log_scales"]], 0)
            radius = torch.cat([self.max_radii, torch.zeros(nc + 2 * ns, device=self.dev)])
            prune |= (radius > c["max_screen_size"]) | (torch.exp(ls_all.max(dim=1).values) > 0.1 * self.extent)
        keep &= ~prune
        for name in self.names:
            self._replace(name, new_rows[name], keep)
        after = int(keep.sum().item())
        self.reset_stats(after)
        return {"before": n0, "cloned": nc, "split": ns, "pruned": total - after - ns, "after": after}

    @torch.no_grad()
    def reset_opacity(self):
        cap = math.log(0.01 / (1 - 0.01))
        p = self.p["opacity_logits"]
        p.data.clamp_(max=cap)
        st = self.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key].zero_()

    def fit(self, steps, densify_after, reset_after):
        dens = []
        loss = None
        dset, rset = set(densify_after), set(reset_after)
        for i, st in enumerate(steps, start=1):
            loss = self.step(st)
            if i in dset:
                dens.append([i] + list(self.densify().values()))
            if i in rset:
                self.reset_opacity()
        host = {n: t.detach().cpu().numpy() for n, t in self.p.items()}
        return host, dens, float(loss.item()) if loss is not None else float("nan")


def write_ply(path, host, K):
    n = host["means"].shape[0]
    sh0 = host["sh0"].reshape(n, 3)
    cols = [("x", host["means"][:, 0]), ("y", host["means"][:, 1]), ("z", host["means"][:, 2])]
    cols += [(a, np.zeros(n, np.float32)) for a in ("nx", "ny", "nz")]
    cols += [(f"f_dc_{i}", sh0[:, i]) for i in range(3)]
    if K > 1:
        rest = host["shN"].transpose(0, 2, 1).reshape(n, -1)  # 3DGS: channel-major
        cols += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    cols += [("opacity", host["opacity_logits"])]
    cols += [(f"scale_{i}", host["log_scales"][:, i]) for i in range(3)]
    cols += [(f"rot_{i}", host["quats"][:, i]) for i in range(4)]
    arr = np.empty(n, dtype=[(name, "<f4") for name, _ in cols])
    for name, v in cols:
        arr[name] = v
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join("property float %s\n" % name for name, _ in cols) + "end_header\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(arr.tobytes())


def load_dir(d):
    data = {"schedule": json.load(open(os.path.join(d, "schedule.json")))}
    data["train_rgb"] = np.load(os.path.join(d, "train_rgb.npy"))
    data["init"] = {
        "means": np.load(os.path.join(d, "init_means.npy")),
        "quats": np.load(os.path.join(d, "init_quats.npy")),
        "log_scales": np.load(os.path.join(d, "init_log_scales.npy")),
        "opacity_logits": np.load(os.path.join(d, "init_opacity_logits.npy")),
        "sh": np.load(os.path.join(d, "init_sh.npy")),
    }
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+", help="export folders (one per seed); the first is timed")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup-iters", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0, help="torch generator seed (split samples)")
    ap.add_argument("--ply", help="PLY of the first folder's last timed run (each folder also gets ref.ply)")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = False
    walls, runs, per_dir = [], [], []
    warm_s = None
    for di, d in enumerate(a.dirs):
        data = load_dir(d)
        sched = data["schedule"]
        steps = sched["steps"]
        dens_after, reset_after = sched["densify_after_step"], sched["reset_opacity_after_step"]
        K = int(data["init"]["sh"].shape[1])
        if di == 0:
            # Warm-up: gsplat's kernels, cuDNN, the caching allocator.
            t0 = time.time()
            w = Fitter(data, seed=a.seed)
            w.fit(steps[: a.warmup_iters], [s for s in dens_after if s <= a.warmup_iters], [])
            torch.cuda.synchronize()
            warm_s = time.time() - t0
            del w
        host = None
        for r in range(a.runs if di == 0 else 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            f = Fitter(data, seed=a.seed)
            host, dens, last_loss = f.fit(steps, dens_after, reset_after)
            wall = time.perf_counter() - t
            rec = {"dir": d, "wall_s": wall, "final_gaussians": int(host["means"].shape[0]),
                   "final_loss": last_loss, "densifications": dens}
            if di == 0:
                walls.append(wall)
                runs.append(rec)
            print(f"reference {d} run {r}: {wall:.3f} s, {host['means'].shape[0]} Gaussians, loss {last_loss:.4f}",
                  flush=True)
            del f
        write_ply(os.path.join(d, "ref.ply"), host, K)
        if di == 0 and a.ply:
            write_ply(a.ply, host, K)
        per_dir.append(rec)
    res = {
        "impl": "gsplat 1.5.3 rasterization + torch Adam (fused)",
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
        "iters": len(steps), "runs": a.runs, "warmup_s": warm_s, "warmup_iters": a.warmup_iters,
        "wall_s": walls, "wall_s_median": statistics.median(walls) if walls else None,
        "details": runs, "per_dir": per_dir,
    }
    print(json.dumps({k: v for k, v in res.items() if k not in ("details", "per_dir")}))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
