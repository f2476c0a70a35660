"""Where a VAE's latents come from when it generates: the prior, or an ex-post density estimate.

    prior  z ~ N(0, I), the VAE's own prior (Kingma & Welling 2014)
    gmm    z ~ a Gaussian mixture fitted after training to the posterior means E_q[z|x] of the
           training set: the "ex-post density estimation" of Ghosh et al. 2020 ("From Variational
           to Deterministic Autoencoders", ICLR 2020, sec. 4; they use 10 full-covariance
           components). The aggregate posterior of a trained VAE rarely fills N(0, I); decoding
           latents from its holes gives poor images, the mixture avoids them.

The mixture: k full-covariance components (default 10), fitted by EM (Dempster, Laird & Rubin
1977) in float64 from k-means++ seeds (Arthur & Vassilvitskii 2007), with `reg` added to each
covariance's diagonal (as scikit-learn's reg_covar) so that it stays positive definite.

On disk, beside the weights it was fitted to (RUN/ for the latest weights, RUN/best/ for the best):
    gmm_sampler.safetensors  weights (k,), means (k, D), covariances (k, D, D), float64
    gmm_sampler.json         k, seed, n, log-likelihood, iterations, and the SHA-256 of the weights
A cached mixture whose weights hash is not that of the current weights file is fitted again.

Sampling is a pure function of the seed: seed s draws eps exactly as the prior's latent of seed s
(`train.latents_for_seeds`), then a uniform u from the same generator picks the component c by the
cumulative weights; z = mean_c + L_c eps with L_c the Cholesky factor of covariance_c.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .sample import Model

SAMPLERS = ("prior", "gmm")
GMM_WEIGHTS = "gmm_sampler.safetensors"
GMM_INFO = "gmm_sampler.json"
GMM_K = 10  # mixture components (Ghosh et al. 2020 use 10)
GMM_N = 10_000  # training images whose posterior means are fitted (a seeded choice)
GMM_REG = 1e-6  # added to every covariance's diagonal
GMM_MAX_ITER = 200
GMM_TOL = 1e-6  # stop when the mean log-likelihood per point improves by less (nats)


# ------------------------------------------------------------------------ the mixture


@dataclass
class GaussianMixture:
    weights: torch.Tensor  # (k,) float64, positive, sum 1
    means: torch.Tensor  # (k, D) float64
    covariances: torch.Tensor  # (k, D, D) float64, symmetric positive definite

    @property
    def k(self) -> int:
        return int(self.weights.numel())

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log w_c + log N(z | mean_c, cov_c) for every point and component: (N, D) -> (N, k)."""
        return self.weights.log() + gaussian_log_probs(z.double(), self.means, self.covariances)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_c (log w_c + log N(z | mean_c, cov_c)), in nats: (N, D) -> (N,)."""
        return torch.logsumexp(self.component_log_probs(z), dim=1)

    def latents_for_seeds(self, seeds: list[int] | range) -> torch.Tensor:
        """One latent per seed, (len(seeds), D) float32 on the CPU; see the module docstring."""
        chol = torch.linalg.cholesky(self.covariances)  # (k, D, D)
        cum = torch.cumsum(self.weights, 0)
        out = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            eps = torch.randn(self.dim, generator=g)  # the prior's latent of seed s
            u = torch.rand(1, generator=g, dtype=torch.float64)
            c = min(int(torch.searchsorted(cum, u * cum[-1]).item()), self.k - 1)
            out.append(self.means[c] + chol[c] @ eps.double())
        return torch.stack(out).float() if out else torch.empty(0, self.dim)

    def save(self, directory: str | Path, info: dict[str, Any]) -> None:
        """Write gmm_sampler.safetensors and gmm_sampler.json into `directory`, atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"weights": self.weights.contiguous(), "means": self.means.contiguous(),
                   "covariances": self.covariances.contiguous()}
        tmp = directory / (GMM_WEIGHTS + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, directory / GMM_WEIGHTS)
        tmp = directory / (GMM_INFO + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, directory / GMM_INFO)

    @classmethod
    def load(cls, directory: str | Path) -> tuple["GaussianMixture", dict[str, Any]]:
        from safetensors.torch import load_file

        directory = Path(directory)
        t = load_file(str(directory / GMM_WEIGHTS))
        info = json.loads((directory / GMM_INFO).read_text())
        return cls(weights=t["weights"], means=t["means"], covariances=t["covariances"]), info


def gaussian_log_probs(z: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """log N(z | m_c, S_c) for each point and component, via Cholesky S_c = L_c L_c^T:
    -1/2 (||L_c^-1 (z - m_c)||^2 + log det S_c + D log 2 pi).  z (N, D), m (k, D), S (k, D, D) -> (N, k)"""
    d = z.shape[1]
    chol = torch.linalg.cholesky(covariances)  # (k, D, D)
    diff = (z.unsqueeze(0) - means.unsqueeze(1)).transpose(1, 2)  # (k, D, N)
    sol = torch.linalg.solve_triangular(chol, diff, upper=False)  # (k, D, N)
    maha = sol.pow(2).sum(1)  # (k, N)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # (k,)
    return (-0.5 * (maha + logdet.unsqueeze(1) + d * math.log(2 * math.pi))).T


def kmeans_pp_centers(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first center uniformly at random, each
    next one with probability proportional to the squared distance to the nearest chosen center.
    z (N, D) -> (k, D)"""
    n = z.shape[0]
    idx = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (z - z[idx[0]]).pow(2).sum(1)  # (N,)
    for _ in range(1, k):
        total = d2.sum()
        if not total > 0:
            raise ValueError(f"the data have fewer than {k} distinct points; fit fewer components")
        i = int(torch.multinomial(d2 / total, 1, generator=generator))
        idx.append(i)
        d2 = torch.minimum(d2, (z - z[i]).pow(2).sum(1))
    return z[idx]


def _m_step(z: torch.Tensor, resp: torch.Tensor, reg: float) -> GaussianMixture:
    """Maximization: weights, means and covariances from responsibilities resp (N, k)."""
    n, d = z.shape
    nk = resp.sum(0) + 10 * torch.finfo(z.dtype).eps  # (k,), never 0
    means = resp.T @ z / nk.unsqueeze(1)  # (k, D)
    diff = z.unsqueeze(0) - means.unsqueeze(1)  # (k, N, D)
    covs = torch.einsum("nk,kni,knj->kij", resp, diff, diff) / nk.view(-1, 1, 1)
    covs = 0.5 * (covs + covs.transpose(1, 2)) + reg * torch.eye(d, dtype=z.dtype)
    return GaussianMixture(weights=nk / nk.sum(), means=means, covariances=covs)


def fit_gmm(z: torch.Tensor, k: int = GMM_K, seed: int = 0, max_iter: int = GMM_MAX_ITER, tol: float = GMM_TOL,
            reg: float = GMM_REG) -> tuple[GaussianMixture, dict[str, Any]]:
    """Fit a full-covariance Gaussian mixture to points z (N, D) by EM, float64, deterministic given seed.

    Init: k-means++ centers (seeded), each point assigned to its nearest center, one M-step.
    E-step: r_nc = w_c N(z_n | m_c, S_c) / sum_c' w_c' N(z_n | m_c', S_c').
    M-step: N_c = sum_n r_nc; w_c = N_c / N; m_c = sum_n r_nc z_n / N_c;
            S_c = sum_n r_nc (z_n - m_c)(z_n - m_c)^T / N_c + reg I.   (Bishop 2006, sec. 9.2.2)
    Stops when the mean log-likelihood per point improves by less than `tol` nats.
    Returns (mixture, info) with info = {k, seed, n, dim, log_likelihood (mean per point, nats),
    iterations, converged, reg}.
    """
    if z.ndim != 2:
        raise ValueError(f"points must have shape (N, D), got {tuple(z.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if z.shape[0] < 2 * k:
        raise ValueError(f"{z.shape[0]} points are too few for {k} components (need at least {2 * k})")
    z = z.detach().double().cpu()
    g = torch.Generator().manual_seed(seed)
    centers = kmeans_pp_centers(z, k, g)
    labels = torch.cdist(z, centers).argmin(1)
    gmm = _m_step(z, torch.nn.functional.one_hot(labels, k).double(), reg)
    prev, converged, it = -math.inf, False, 0
    for it in range(1, max_iter + 1):
        logp = gmm.component_log_probs(z)  # (N, k)  E-step
        lse = torch.logsumexp(logp, 1, keepdim=True)
        ll = float(lse.mean())
        gmm = _m_step(z, (logp - lse).exp(), reg)  # M-step
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    info = {"k": k, "seed": seed, "n": int(z.shape[0]), "dim": int(z.shape[1]),
            "log_likelihood": float(gmm.log_prob(z).mean()), "iterations": it, "converged": converged, "reg": reg}
    return gmm, info


# ------------------------------------------------------------------------ a run's sampler


def sampler_dir(model: "Model") -> Path:
    """The folder of the weights the model was loaded from: RUN/ (latest) or RUN/best/ (best)."""
    return model.run_dir if model.checkpoint == "latest" else model.run_dir / "best"


def weights_sha256(model: "Model") -> str:
    from .checkpoint import WEIGHTS

    h = hashlib.sha256()
    with open(sampler_dir(model) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_kind(model: "Model") -> str:
    """"ema" when the model holds the training's moving average of the VAE (--ema-decay), else "raw":
    one weights file holds both, and a mixture fitted to one encoder's codes is stale for the other."""
    return "ema" if model.ema else "raw"


def _vae_of(model: "Model") -> Any:
    if model.family != "vae":
        raise ConfigError(f"{model.run_dir} is a {model.config.model} run; the gmm sampler needs a VAE run "
                          "(use --sampler prior)")
    return model.nets["vae"]


def fit_sampler(model: "Model", k: int = GMM_K, n: int = GMM_N, seed: int = 0,
                log: Callable[[str], None] | None = None) -> tuple[GaussianMixture, dict[str, Any]]:
    """Fit the gmm sampler of a VAE run on the posterior means of n training images (the
    evaluation protocol's seeded selection) and save it beside the weights; returns (mixture, info)."""
    from .data import load_images
    from .metrics.evaluate import SELECTION_RULE, select_indices
    from .vae_tools import posterior_means

    vae = _vae_of(model)
    if k < 1 or n < 2 * k:
        raise ConfigError(f"need k >= 1 and n >= 2k training images, got k={k}, n={n}")
    data = load_images(model.config.data, res=model.resolution, channels=model.channels)
    idx = select_indices(int(data.images.shape[0]), n, seed)
    if log:
        log(f"encoding {len(idx)} training images of {model.config.data} ...")
    mu = posterior_means(vae, data.images[torch.from_numpy(idx)])
    try:
        gmm, info = fit_gmm(mu, k=k, seed=seed)
    except ValueError as e:
        raise ConfigError(f"cannot fit the gmm sampler: {e}") from None
    info.update({"sampler": "gmm", "fitted_on": "posterior means E_q[z|x] of training images",
                 "data": model.config.data, "selection": SELECTION_RULE, "checkpoint": model.checkpoint,
                 "weights_sha256": weights_sha256(model), "weights": _weights_kind(model),
                 "method": "EM, full covariances, k-means++ init (Ghosh et al. 2020, ex-post density estimation)"})
    gmm.save(sampler_dir(model), info)
    if log:
        log(f"gmm sampler: k={k}, n={info['n']}, mean log-likelihood {info['log_likelihood']:.3f} nats per code, "
            f"{info['iterations']} EM iterations{'' if info['converged'] else ' (not converged)'}")
    return gmm, info


def load_sampler(model: "Model") -> tuple[GaussianMixture, dict[str, Any]] | None:
    """The cached gmm sampler of the model's weights, or None when there is none or it is stale."""
    d = sampler_dir(model)
    if not ((d / GMM_WEIGHTS).is_file() and (d / GMM_INFO).is_file()):
        return None
    gmm, info = GaussianMixture.load(d)
    if (info.get("weights_sha256") != weights_sha256(model) or info.get("weights", "raw") != _weights_kind(model)
            or gmm.dim != model.z_dim):
        return None
    return gmm, info


def gmm_sampler(model: "Model", log: Callable[[str], None] | None = None) -> tuple[GaussianMixture, dict[str, Any]]:
    """The run's gmm sampler: from the cache, else fitted now with the defaults and cached."""
    _vae_of(model)
    return load_sampler(model) or fit_sampler(model, log=log)


def check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def sampler_latents(model: "Model", seeds: list[int] | range, sampler: str = "prior") -> torch.Tensor:
    """(len(seeds), D) latents on the model's device; latent i is a pure function of seeds[i]."""
    check_sampler(sampler)
    if sampler == "prior":
        return model.latents(seeds)
    gmm, _ = gmm_sampler(model)
    return gmm.latents_for_seeds(seeds).to(model.device)


def describe_sampler(model: "Model", sampler: str) -> str:
    """One line saying where the latents of a run's samples come from (for evaluation results)."""
    check_sampler(sampler)
    if sampler == "prior":
        return "prior: z ~ N(0, I), one latent per seed"
    gmm, info = gmm_sampler(model)
    return (f"gmm: Gaussian mixture, k={info['k']} full-covariance components fitted by EM (seed {info['seed']}) to "
            f"the posterior means of {info['n']} training images (Ghosh et al. 2020); one latent per seed")
