"""Loss functions: small, pure, each with its formula and source.

Per-example quantities are summed over dimensions and returned with shape (N,), so callers
choose the reduction (mean over the batch for training, per-example for likelihood bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- VAE (Kingma & Welling 2014)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ), per example, in nats.

    KL = -1/2 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))
    Kingma & Welling 2014, appendix B.  mu, logvar: (N, D) -> (N,)
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def bernoulli_nll(logits: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) for a Bernoulli per pixel, with targets x in [0, 1], per example, in nats.

    -log p = sum_i BCE(sigmoid(l_i), x_i) = sum_i [softplus(l_i) - x_i * l_i]
    For grey values in (0, 1) this is the cross-entropy used by Kingma & Welling 2014 (MNIST);
    it is an exact likelihood only for binarized x.  (N, C, H, W) -> (N,)
    """
    return F.binary_cross_entropy_with_logits(logits, x01, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x01: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log p(x|z) for an isotropic Gaussian with fixed std `sigma`, per example, in nats.

    -log p = sum_i [ (x_i - m_i)^2 / (2 sigma^2) + log(sigma) + log(2 pi) / 2 ]
    ("MSE" up to scale and a constant.)  (N, C, H, W) -> (N,)
    """
    d = mean[0].numel()
    sq = (x01 - mean).pow(2).flatten(1).sum(1)
    return sq / (2 * sigma**2) + d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))


@dataclass
class ELBOParts:
    total: torch.Tensor  # scalar: mean over the batch of recon + beta * kl (the training loss)
    recon: torch.Tensor  # scalar: mean -log p(x|z)
    kl: torch.Tensor  # scalar: mean KL(q(z|x) || p(z))


def negative_elbo(decoded: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  likelihood: str, beta: float = 1.0, sigma: float = 0.1) -> ELBOParts:
    """-ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), averaged over the batch.

    beta = 1 is the ELBO of Kingma & Welling 2014; beta > 1 is the beta-VAE of Higgins et al. 2017.
    x is in [-1, 1] (the library's convention); the likelihood is over pixels in [0, 1].
    """
    x01 = (x + 1) / 2
    if likelihood == "bce":
        recon = bernoulli_nll(decoded, x01)
    elif likelihood == "mse":
        recon = gaussian_nll(decoded, x01, sigma)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    kl = kl_standard_normal(mu, logvar)
    recon_m, kl_m = recon.mean(), kl.mean()
    return ELBOParts(total=recon_m + beta * kl_m, recon=recon_m, kl=kl_m)


# ---------------------------------------------------------------- GAN (Goodfellow et al. 2014)


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the original GAN: -log D(x) - log(1 - D(G(z))), batch mean.

    With D = sigmoid(logit): -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l).
    Goodfellow et al. 2014, eq. 1.
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)) = softplus(-logit), batch mean.

    Goodfellow et al. 2014, section 3: maximize log D(G(z)) instead of minimizing
    log(1 - D(G(z))), which saturates early in training when D rejects samples confidently.
    """
    return F.softplus(-fake_logits).mean()
