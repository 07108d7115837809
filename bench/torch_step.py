"""PyTorch's SwiftBrush step on a diffusers UNet folder, for side-by-side time and memory with `swiftbrush bench`.

The official train_swiftbrush.py step in float32: student x̂0 = (z − σ_T ε_θ(z, T−1, y)) / α_T; the frozen teacher
and the LoRA teacher (LoRA r 64, alpha 108 on to_q/to_v, PEFT's init) each with CFG (conditional + null prompt)
under no_grad; the VSD loss backward into the student; the LoRA teacher's denoising loss backward into the
adapter; Adam on both, gradient clipping at 1, and the student's EMA (decay 0.9999), as `swiftbrush bench` runs it.

Usage: OPENBLAS_NUM_THREADS=1 python torch_step.py UNET_DIR [BATCH] [TOKENS] [STEPS] [--no-ema]
Prints `JSON {...}`: params, step_s (median of STEPS after one warm-up step), forward_ms and
forward_backward_ms of the student alone, and peak_rss_mib (ru_maxrss of the whole process).
"""
import copy, json, math, os, resource, statistics, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
import safetensors.torch  # noqa: F401
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

args = [a for a in sys.argv[1:] if not a.startswith("--")]
unet_dir = args[0]
B = int(args[1]) if len(args) > 1 else 1
L = int(args[2]) if len(args) > 2 else 77
steps = int(args[3]) if len(args) > 3 else 3
ema_on = "--no-ema" not in sys.argv
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)
R, ALPHA, W = 64, 108.0, 4.5

teacher = UNet2DConditionModel.from_pretrained(unet_dir).eval()
student = UNet2DConditionModel.from_pretrained(unet_dir).train()
for p in teacher.parameters():
    p.requires_grad_(False)


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scaling, self.enabled = base, alpha / r, True
        self.A = nn.Parameter(torch.empty(r, base.in_features)); nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        y = self.base(x)
        return y + (x @ self.A.T @ self.B.T) * self.scaling if self.enabled else y


loras = []
for name, mod in list(teacher.named_modules()):
    for child in ("to_q", "to_v"):
        if hasattr(mod, child) and isinstance(getattr(mod, child), nn.Linear):
            lora = LoRALinear(getattr(mod, child), R, ALPHA)
            setattr(mod, child, lora)
            loras.append(lora)
lora_params = [p for l in loras for p in (l.A, l.B)]


def set_lora(on):
    for l in loras:
        l.enabled = on


opt_s = torch.optim.Adam(student.parameters(), lr=1e-6)
opt_l = torch.optim.Adam(lora_params, lr=1e-3)
ema = copy.deepcopy(student).requires_grad_(False) if ema_on else None
ac = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ac = torch.cumprod(1 - ac, 0).float()
cfg = student.config
C, H, D = cfg.in_channels, cfg.sample_size, cfg.cross_attention_dim
null = torch.zeros(1, L, D)


def add_noise(x, n, t):
    a = ac[t].view(-1, 1, 1, 1)
    return a.sqrt() * x + (1 - a).sqrt() * n


def step():
    y = torch.randn(B, L, D)
    z = torch.randn(B, C, H, H)
    aT = ac[-1]
    x0 = (z - (1 - aT).sqrt() * student(z, torch.full((B,), 999), y).sample) / aT.sqrt()
    t = torch.randint(20, 981, (B,))
    noisy = add_noise(x0, torch.randn_like(x0), t)
    y0 = null.expand(B, -1, -1)
    with torch.no_grad():
        set_lora(False)
        tp = teacher(torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([y0, y])).sample.chunk(2)
        set_lora(True)
        lp = teacher(torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([y0, y])).sample.chunk(2)
        score = (1 - ac[t]).view(-1, 1, 1, 1) * ((tp[0] + W * (tp[1] - tp[0])) - (lp[0] + W * (lp[1] - lp[0])))
    loss = 0.5 * F.mse_loss(x0, (x0 - torch.nan_to_num(score)).detach())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt_s.step(); opt_s.zero_grad(set_to_none=True)
    x0d = x0.detach()
    t2 = torch.randint(0, 1000, (B,))
    n2 = torch.randn_like(x0d)
    set_lora(True)
    pred = teacher(add_noise(x0d, n2, t2), t2, y).sample
    a2 = ac[t2].sqrt().view(-1, 1, 1, 1)
    F.mse_loss(a2 * pred, a2 * n2).backward()
    torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
    opt_l.step(); opt_l.zero_grad(set_to_none=True)
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema.parameters(), student.parameters()):
                e.lerp_(p, 1 - 0.9999)


def timed(f, n):
    f()
    xs = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


step_s = timed(step, steps)
x, c = torch.randn(B, C, H, H), torch.randn(B, L, D)
ts = torch.full((B,), 500)


def fwd():
    with torch.no_grad():
        student(x, ts, c)


def fwd_bwd():
    student(x, ts, c).sample.square().mean().backward()
    student.zero_grad(set_to_none=True)


print("JSON", json.dumps({"params": sum(p.numel() for p in student.parameters()), "batch": B, "tokens": L, "latent": H,
                          "threads": torch.get_num_threads(), "ema": ema_on, "step_s": round(step_s, 3),
                          "forward_ms": round(1000 * timed(fwd, steps), 1), "forward_backward_ms": round(1000 * timed(fwd_bwd, steps), 1),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "torch": torch.__version__}))
