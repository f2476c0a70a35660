"""VAE tools: the KL weight schedule, active units, the importance-weighted bound, and the
held-out evaluation of a trained VAE (log-likelihood, reconstructions, active units).

Every function reaches the VAE through its public interface only, so any model with a VAE
inside can use them:
    vae.encode(x) -> (mu, logvar)      x: (N, C, H, W) in [-1, 1]; mu, logvar: (N, D)
    vae.decode_raw(z) -> params        (N, C, H, W): Bernoulli logits ("bce") or Gaussian means ("mse")
    vae.decode(z) -> images            (N, C, H, W) in [-1, 1], the mean of p(x|z)
The likelihood ("bce" | "mse") and the Gaussian's sigma are passed explicitly (they live in the
run's TrainConfig as `recon_loss` and `gaussian_sigma`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .images import to_float
from .losses import bernoulli_nll, gaussian_nll
from .models import eval_mode

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .sample import Model

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: unit u is active if Cov_x(E_q[z_u|x]) > 1e-2
ACTIVE_UNITS_MAX_IMAGES = 10_000  # training images used for the end-of-training active-units count
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class VAELike(Protocol):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode_raw(self, z: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------------ training objective


def kl_weight(step: int, cfg: "TrainConfig") -> float:
    """The weight of the KL term in the update after `step` completed optimizer steps (0 = the first).

    W = cfg.kl_warmup steps, beta = cfg.beta:
      W = 0:     beta at every step (no warm-up; the plain (beta-)ELBO)
      linear:    beta * min(1, step / W)            Bowman et al. 2016 (sec. 3.1); Sonderby et al. 2016
      cyclical:  beta * min(1, (step mod 2W) / W)   Fu et al. 2019: cycles of 2W steps, the weight
                                                    ramps in the first half and stays at beta in the second
    """
    if cfg.kl_warmup <= 0:
        return cfg.beta
    pos = step if cfg.kl_schedule == "linear" else step % (2 * cfg.kl_warmup)
    return cfg.beta * min(1.0, pos / cfg.kl_warmup)


# ------------------------------------------------------------------------ active units


def _device_of(vae: Any) -> torch.device:
    try:
        return next(vae.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def posterior_means(vae: VAELike, images: torch.Tensor, batch_size: int = 500,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """E_q[z|x] = mu(x) for every image: uint8 (N, C, H, W), or float in [-1, 1] -> (N, D) float32
    on the CPU (`labels` (N,): the classes, for a conditional VAE). The network runs in eval mode
    (batch norm with its running statistics) and is put back in the mode it was in."""
    device = _device_of(vae)
    out = []
    with eval_mode(vae):
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size]
            x = to_float(x) if x.dtype == torch.uint8 else x
            c = None if labels is None else labels[i : i + batch_size].to(device)
            mu, _ = vae.encode(x.to(device)) if c is None else vae.encode(x.to(device), c)
            out.append(mu.float().cpu())
    return torch.cat(out)


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Number of active latent units and each unit's activity, from posterior means over a data set.

    A_u = Cov_x( E_{q(z|x)}[z_u] ),  unit u active  <=>  A_u > threshold (1e-2)
    Burda, Grosse & Salakhutdinov 2016 ("Importance Weighted Autoencoders"), sec. 5.2. The variance
    over the data set uses N - 1, in float64.  mu: (N, D) -> (count, A (D,))
    """
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ValueError(f"posterior means must have shape (N >= 2, D), got {tuple(mu.shape)}")
    activity = mu.double().var(dim=0)
    return int((activity > threshold).sum()), activity


def active_units_row(vae: VAELike, images_u8: torch.Tensor, seed: int,
                     max_images: int = ACTIVE_UNITS_MAX_IMAGES, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """The active units of a VAE on up to `max_images` of its training images (a seeded choice),
    as the fields of a metrics.jsonl line (`labels`: the images' classes, conditional VAEs)."""
    n = len(images_u8)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images] if n > max_images else None
    if not isinstance(images_u8, torch.Tensor):  # a memory-mapped data set (data.DeviceBatches): gather the rows
        idx = torch.arange(n) if idx is None else idx
        images_u8 = torch.cat([images_u8[idx[i : i + 1000]] for i in range(0, len(idx), 1000)])
    elif idx is not None:
        images_u8 = images_u8[idx.to(images_u8.device)]
    if idx is not None and labels is not None:
        labels = labels[idx.to(labels.device)]
    count, activity = active_units(posterior_means(vae, images_u8, labels=labels))
    return {"active_units": count, "z_dim": int(activity.numel()), "n": int(images_u8.shape[0]),
            "threshold": ACTIVE_UNIT_THRESHOLD, "data": "training images"}


# ------------------------------------------------------------------------ importance-weighted bound


def log_likelihood_of(params: torch.Tensor, x01: torch.Tensor, likelihood: str, sigma: float = 0.1) -> torch.Tensor:
    """log p(x|z) per example, in nats, for the decoder's raw output `params` and x in [0, 1]."""
    if likelihood == "bce":
        return -bernoulli_nll(params, x01)
    if likelihood == "mse":
        return -gaussian_nll(params, x01, sigma)
    raise ValueError(f"unknown likelihood {likelihood!r}; choose bce or mse")


def log_importance_weights(vae: VAELike, x: torch.Tensor, eps: torch.Tensor, likelihood: str,
                           sigma: float = 0.1, max_batch: int = 1024) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),  z_i = mu(x) + exp(logvar(x) / 2) * eps_i.

    p(z) = N(0, I); q(z|x) = N(mu, diag(exp(logvar))), so log q(z_i|x) = sum_j -eps_ij^2 / 2
    - logvar_j / 2 - log(2 pi) / 2; p(x|z) is the run's likelihood over pixels in [0, 1]
    (losses.bernoulli_nll / gaussian_nll). Burda et al. 2016, eq. 8.
    x: (N, C, H, W) in [-1, 1]; eps: (k, N, D) standard normal  ->  (k, N) float64, in nats.
    """
    mu, logvar = vae.encode(x)  # (N, D) each
    k, n, d = eps.shape
    if (n, d) != tuple(mu.shape):
        raise ValueError(f"eps must have shape (k, {mu.shape[0]}, {mu.shape[1]}), got {tuple(eps.shape)}")
    x01 = (x + 1) / 2
    out = []
    step = max(1, max_batch // n)  # samples per decoder call, bounded memory
    for j in range(0, k, step):
        e = eps[j : j + step].to(mu.device, mu.dtype)  # (kc, N, D)
        kc = e.shape[0]
        z = mu + torch.exp(0.5 * logvar) * e  # (kc, N, D)
        params = vae.decode_raw(z.reshape(kc * n, d))  # (kc * N, C, H, W)
        targets = x01.unsqueeze(0).expand(kc, *x01.shape).reshape(kc * n, *x01.shape[1:])
        log_px = log_likelihood_of(params, targets, likelihood, sigma).view(kc, n).double()
        log_pz = (-0.5 * z.double().pow(2) - HALF_LOG_2PI).sum(-1)
        log_qz = (-0.5 * e.double().pow(2) - 0.5 * logvar.double() - HALF_LOG_2PI).sum(-1)
        out.append(log_px + log_pz - log_qz)
    return torch.cat(out)


def image_noise(index: int, k: int, z_dim: int, seed: int) -> torch.Tensor:
    """The k standard-normal draws (k, z_dim) for image `index` of an evaluation with `seed`: one
    generator per image, so a bound never depends on how images are batched."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(k, z_dim, generator=g)


@torch.no_grad()
def seeded_log_weights(vae: VAELike, x: torch.Tensor, k: int, likelihood: str, sigma: float = 0.1, seed: int = 0,
                       max_batch: int = 1024) -> torch.Tensor:
    """log w for k posterior samples of each image (image i's noise from `image_noise(i, ...)`):
    (N, k) float64 on the CPU. The network runs in eval mode and is put back after."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = _device_of(vae)
    rows = []
    with eval_mode(vae):
        per_chunk = max(1, max_batch // k)  # images per chunk
        z_dim = _z_dim(vae, x[:1].to(device))
        for i in range(0, x.shape[0], per_chunk):
            xc = x[i : i + per_chunk].to(device)
            eps = torch.stack([image_noise(i + j, k, z_dim, seed) for j in range(xc.shape[0])], dim=1)  # (k, b, D)
            rows.append(log_importance_weights(vae, xc, eps, likelihood, sigma, max_batch).T.cpu())  # (b, k)
    return torch.cat(rows)


def _z_dim(vae: VAELike, x: torch.Tensor) -> int:
    cfg = getattr(vae, "cfg", None)
    if cfg is not None and hasattr(cfg, "z_dim"):
        return int(cfg.z_dim)
    return int(vae.encode(x[:1])[0].shape[1])


def iwae_bound(vae: VAELike, x: torch.Tensor, k: int, likelihood: str = "bce", sigma: float = 0.1, seed: int = 0,
               max_batch: int = 1024) -> torch.Tensor:
    """The importance-weighted bound per image, in nats: (N,) float64.

    L_k(x) = log (1/k) sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q(z|x),
    computed as logsumexp_i(log w_i) - log k. Burda, Grosse & Salakhutdinov 2016, eq. 8.
    E[L_1] is the ELBO; E[L_k] <= E[L_{k+1}] <= log p(x), and L_k -> log p(x) as k grows.
    x: (N, C, H, W) in [-1, 1] (for "bce" with binarized data: values in {-1, 1}).
    """
    lw = seeded_log_weights(vae, x, k, likelihood, sigma, seed, max_batch)  # (N, k)
    return torch.logsumexp(lw, dim=1) - math.log(k)


def binarize(images_u8: torch.Tensor, seed: int) -> torch.Tensor:
    """Stochastic binarization with a fixed seed: pixel = 255 with probability x / 255, else 0.
    (One draw per pixel; the dynamic binarization of Salakhutdinov & Murray 2008, frozen by the seed.)"""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(images_u8.shape, generator=g)
    return torch.where(u < images_u8.cpu().float() / 255, 255, 0).to(torch.uint8)


def likelihood_statement(likelihood: str, sigma: float, binarized: bool) -> str:
    """One sentence saying what the reported log-likelihood is a likelihood of."""
    if likelihood == "bce" and binarized:
        return ("Bernoulli p(x|z) per pixel on stochastically binarized images (fixed seed): a discrete "
                "likelihood; bits/dim are bits per binary pixel")
    if likelihood == "bce":
        return ("Bernoulli p(x|z) per pixel evaluated at [0,1] grey values (the cross-entropy of Kingma & "
                "Welling 2014): not a normalized likelihood of grey-level images; compare only between models "
                "of this kind, or use --binarize for a discrete likelihood")
    return (f"Gaussian p(x|z) with fixed sigma {sigma:g} per pixel on continuous [0,1] intensities: a density "
            "per [0,1] intensity unit (per 8-bit level: subtract ln 256 nats per pixel, add 8 bits/dim)")


# ------------------------------------------------------------------------ held-out evaluation


def evaluate_vae(vae: VAELike, images_u8: torch.Tensor, likelihood: str, sigma: float = 0.1, *, iwae_k: int = 0,
                 recon: bool = False, binarized: bool = False, seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """Active units, and optionally the test log-likelihood (IWAE bound with k = iwae_k) and the
    reconstruction metrics, of a VAE on uint8 (N, C, H, W) images.

    `binarized=True` means the images are already binarized (see `binarize`): it only changes the
    stated likelihood. Reconstructions are decode(E_q[z|x]) in [0, 1], not quantized to 8 bits.
    """
    from .metrics.recon import recon_metrics

    n = int(images_u8.shape[0])
    mu = posterior_means(vae, images_u8, batch_size)
    count, activity = active_units(mu)
    result: dict[str, Any] = {
        "n": n,
        "active_units": {"count": count, "z_dim": int(activity.numel()), "threshold": ACTIVE_UNIT_THRESHOLD,
                         "activity": [round(float(a), 6) for a in activity],
                         "rule": "Cov_x(E_q[z_u|x]) > threshold (Burda et al. 2016)"},
    }
    if recon:
        rec = _decode_all(vae, mu, batch_size)  # (N, C, H, W) in [-1, 1]
        x01 = images_u8.cpu().float() / 255
        result["recon"] = {**recon_metrics(x01, ((rec + 1) / 2).clamp(0, 1)),
                           "reconstruction": "decode(E_q[z|x]) in [0,1], not quantized"}
    if iwae_k:
        x = to_float(images_u8.cpu())
        lw = seeded_log_weights(vae, x, iwae_k, likelihood, sigma, seed)  # (N, k)
        bound = torch.logsumexp(lw, dim=1) - math.log(iwae_k)  # (N,)
        elbo = lw[:, 0]  # one-sample ELBO estimate per image (unbiased)
        dims = int(images_u8[0].numel())
        mean = float(bound.mean())
        se = float(bound.std() / math.sqrt(n)) if n > 1 else float("nan")
        result["log_likelihood"] = {
            "k": int(iwae_k), "log_likelihood_nats": mean, "standard_error_nats": se, "nll_nats": -mean,
            "bits_per_dim": -mean / (dims * math.log(2)), "elbo_nats": float(elbo.mean()), "dims": dims,
            "likelihood": likelihood_statement(likelihood, sigma, binarized), "binarized": bool(binarized),
            "bound": f"importance-weighted bound L_k (Burda et al. 2016), k = {iwae_k}, a lower bound on log p(x); "
                     f"mean over {n} images",
        }
    return result


@torch.no_grad()
def _decode_all(vae: VAELike, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    """decode(z) in batches, in eval mode, on the CPU as float32."""
    device = _device_of(vae)
    with eval_mode(vae):
        return torch.cat([vae.decode(z[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, z.shape[0], batch_size)])


def evaluate_vae_run(model: "Model", ref_spec: str, n: int, seed: int = 0, *, iwae_k: int = 0, recon: bool = False,
                     binarize_images: bool = False) -> dict[str, Any]:
    """`evaluate_vae` on n held-out images of `ref_spec` (at the run's resolution and channels),
    chosen by the evaluation protocol's selection rule (metrics.evaluate.SELECTION_RULE)."""
    from .config import ConfigError
    from .data import load_images
    from .metrics.evaluate import SELECTION_RULE, select_indices

    if model.family != "vae":
        raise ConfigError(f"{model.run_dir} is a {model.config.model} run; log-likelihood, reconstruction and "
                          "active units need a VAE run")
    if iwae_k < 0:
        raise ConfigError(f"--iwae-k must be >= 0, got {iwae_k}")
    likelihood, sigma = model.config.recon_loss, float(model.config.gaussian_sigma)
    if binarize_images and not iwae_k:
        raise ConfigError("--binarize changes the data of the log-likelihood: give it with --iwae-k K")
    if binarize_images and likelihood != "bce":
        raise ConfigError("--binarize applies to Bernoulli (recon_loss bce) runs; this run has a Gaussian likelihood")
    if getattr(model, "conditional", False):
        raise ConfigError(f"{model.run_dir} is a conditional VAE; log-likelihood, reconstruction and active units "
                          "are computed for unconditional VAEs only")
    data = load_images(ref_spec, res=model.resolution, channels=model.channels)
    if n < 2:
        raise ConfigError(f"--n must be at least 2 for VAE metrics, got {n}")
    idx = select_indices(int(data.images.shape[0]), n, seed)
    images = data.images[torch.from_numpy(idx)]
    if iwae_k and binarize_images:
        # active units and reconstructions on the images as they are; the likelihood on binarized ones
        base = evaluate_vae(model.nets["vae"], images, likelihood, sigma, recon=recon, seed=seed)
        ll = evaluate_vae(model.nets["vae"], binarize(images, seed), likelihood, sigma, iwae_k=iwae_k,
                          binarized=True, seed=seed)
        result = {**base, "log_likelihood": ll["log_likelihood"]}
        result["log_likelihood"]["binarization"] = f"x_bin ~ Bernoulli(x / 255), one draw per pixel, seed {seed}"
    else:
        result = evaluate_vae(model.nets["vae"], images, likelihood, sigma, iwae_k=iwae_k, recon=recon, seed=seed)
    result.update({"ref_spec": str(ref_spec), "ref_total": int(data.images.shape[0]), "selection": SELECTION_RULE,
                   "seed": int(seed), "resolution": [int(v) for v in images.shape[1:]]})
    return result


def format_vae_table(res: dict[str, Any]) -> str:
    """Plain-text table of an `evaluate_vae_run` result."""
    rows: list[tuple[str, str]] = []
    au = res["active_units"]
    rows.append(("active units", f"{au['count']} / {au['z_dim']}  (activity > {au['threshold']:g})"))
    ll = res.get("log_likelihood")
    if ll:
        rows.append((f"log-likelihood (IWAE k={ll['k']})", f"{ll['log_likelihood_nats']:.2f} ± "
                                                           f"{ll['standard_error_nats']:.2f} nats"))
        rows.append(("NLL bits/dim", f"{ll['bits_per_dim']:.4f}"))
        rows.append(("ELBO (one sample)", f"{ll['elbo_nats']:.2f} nats"))
    rec = res.get("recon")
    if rec:
        rows.append(("recon MSE", f"{rec['mse']:.5f}"))
        rows.append(("recon PSNR", f"{rec['psnr_db']:.2f} dB"))
        rows.append(("recon SSIM", f"{rec['ssim']:.4f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'VAE metric':<{width}}  value", f"{'-' * width}  {'-' * 24}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", "protocol (VAE metrics)", f"  n: {res['n']} held-out images of {res['ref_spec']} "
              f"(of {res['ref_total']}), resolution {res['resolution']}", f"  selection: {res['selection']}",
              f"  seed: {res['seed']}"]
    if ll:
        lines.append(f"  likelihood: {ll['likelihood']}")
        if "binarization" in ll:
            lines.append(f"  binarization: {ll['binarization']}")
    if rec:
        lines.append(f"  reconstruction: {rec['reconstruction']}; {rec['protocol']}")
    return "\n".join(lines)
