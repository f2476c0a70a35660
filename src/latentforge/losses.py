"""Loss functions: small, pure, each with its formula and source.

Per-example quantities are summed over dimensions and returned with shape (N,), so callers
choose the reduction (mean over the batch for training, per-example for likelihood bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- VAE (Kingma & Welling 2014)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ), per example, in nats.

    KL = -1/2 * sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))
    Kingma & Welling 2014, appendix B.  mu, logvar: (N, D) -> (N,)
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_free_bits(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term with free bits, a scalar in nats: sum_j max(lambda, mean_batch KL_j).

    KL_j = -1/2 (1 + logvar_j - mu_j^2 - exp(logvar_j)) is the KL of latent dimension j; it is
    averaged over the batch first and clamped from below at lambda = `free_bits` nats after, so a
    dimension whose average KL is under lambda gets no gradient from the KL term (it may carry up
    to lambda nats of information for free). Kingma et al. 2016 (IAF), appendix C.8, with one
    group per latent dimension.  mu, logvar: (N, D) -> ()
    """
    kl_dim = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())  # (N, D)
    return kl_dim.mean(0).clamp(min=free_bits).sum()


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
    total: torch.Tensor  # scalar: mean over the batch of recon + beta * kl (the training loss; KL clamped with free bits)
    recon: torch.Tensor  # scalar: mean -log p(x|z)
    kl: torch.Tensor  # scalar: mean KL(q(z|x) || p(z))


def negative_elbo(decoded: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  likelihood: str, beta: float = 1.0, sigma: float = 0.1, free_bits: float = 0.0) -> ELBOParts:
    """-ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), averaged over the batch.

    beta = 1 is the ELBO of Kingma & Welling 2014; beta > 1 is the beta-VAE of Higgins et al. 2017.
    x is in [-1, 1] (the library's convention); the likelihood is over pixels in [0, 1].
    free_bits > 0: the total uses `kl_free_bits` in place of the KL (Kingma et al. 2016); `kl`
    still reports the true batch-mean KL.
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
    kl_term = kl_free_bits(mu, logvar, free_bits) if free_bits > 0 else kl_m
    return ELBOParts(total=recon_m + beta * kl_term, recon=recon_m, kl=kl_m)


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


def d_loss_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], batch means.

    Lim & Ye 2017 ("Geometric GAN"); used by Miyato et al. 2018 (SN-GAN). D outputs raw scores.
    """
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def g_loss_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: -E[D(G(z))]. Lim & Ye 2017; Miyato et al. 2018."""
    return -fake_logits.mean()


def d_loss_wasserstein(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss: E[D(G(z))] - E[D(x)] (minimized, i.e. the critic maximizes
    E[D(x)] - E[D(G(z))]). Arjovsky, Chintala & Bottou 2017. Needs a Lipschitz constraint on D:
    the gradient penalty (`gradient_penalty`) or spectral normalization."""
    return fake_logits.mean() - real_logits.mean()


def g_loss_wasserstein(fake_logits: torch.Tensor) -> torch.Tensor:
    """Wasserstein generator loss: -E[D(G(z))]. Arjovsky et al. 2017."""
    return -fake_logits.mean()


DRIFT_EPSILON = 0.001  # Karras et al. 2018, appendix A.1: epsilon_drift


def d_loss_wasserstein_drift(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss plus the drift term of Progressive GAN:
    E[D(G(z))] - E[D(x)] + epsilon_drift * E[D(x)^2], epsilon_drift = 0.001. The drift term keeps
    the critic's output near zero. Karras et al. 2018, appendix A.1 (used with WGAN-GP)."""
    return d_loss_wasserstein(real_logits, fake_logits) + DRIFT_EPSILON * real_logits.pow(2).mean()


def aux_class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The AC-GAN class term: -E[log softmax(class_logits)[label]], the cross-entropy of D's
    auxiliary class head (N, K) against the class indices (N,). D minimizes it on real images
    (it learns to classify the data), G on its own images with the classes it was asked for (it
    learns to make images that D recognizes as those classes). Odena et al. 2017, eq. 2 (L_C);
    there D's class loss also covers the generated images, here it takes the real ones only. The
    term pulls G towards easily classified images, at some cost in diversity (Shu et al. 2017,
    "AC-GAN learns a biased distribution"; Gong et al. 2019, TAC-GAN).  (N, K), (N,) -> ()"""
    return F.cross_entropy(class_logits, labels)


# name -> (discriminator loss, generator loss); the `loss` field of TrainConfig picks one
GAN_LOSSES = {
    "ns": (d_loss_nonsaturating, g_loss_nonsaturating),
    "hinge": (d_loss_hinge, g_loss_hinge),
    "wgan": (d_loss_wasserstein, g_loss_wasserstein),
    "wgan-drift": (d_loss_wasserstein_drift, g_loss_wasserstein),
}


def gradient_penalty(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2], x_hat = a * real + (1 - a) * fake, a ~ U(0, 1)
    per example. Gulrajani et al. 2017, eq. 3 (they weight it by lambda = 10).

    create_graph=True so the penalty itself can be backpropagated into D's weights. The
    penalty is per example only if D treats examples independently (no batch norm in train mode).
    """
    a = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device, dtype=real.dtype)
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: E[||grad_x D(x)||^2] on real data. Mescheder, Geiger & Nowozin 2018, eq. 9; the caller
    adds gamma / 2 times it to the discriminator loss. `real` must require grad and
    `real_logits` = D(real) must have been computed from it."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------- VAE-GAN (Larsen et al. 2016; Esser et al. 2021)


def feature_matching(real_feats: Sequence[torch.Tensor], fake_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Discriminator feature matching between images and their reconstructions, per example:

    FM(x, x_rec) = sum_l mean_i |D_l(x)_i - D_l(x_rec)_i|     (l: D's hidden layers; i: their elements)

    Larsen et al. 2016 (section 2.2) measure reconstruction error in D's feature space rather than
    pixel space; the L1 form summed over layers, each layer averaged over its elements, is the
    feature-matching loss of Wang et al. 2018 (pix2pixHD, eq. 4). Lists of (N, ...) -> (N,).
    The real features are the target: pass them detached.
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(f"need the same non-zero number of layers, got {len(real_feats)} and {len(fake_feats)}")
    return sum((r - f).abs().flatten(1).mean(1) for r, f in zip(real_feats, fake_feats))  # type: ignore[return-value]


def adaptive_adv_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                        eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's adaptive weight of the adversarial loss, a constant (detached) scalar:

    lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta),   clamped to [0, 1e4]

    G_L is the decoder's last layer, delta = 1e-4. The adversarial gradient at that layer then has
    the reconstruction gradient's size, whatever the two losses' scales. Esser, Rombach & Ommer
    2021 ("Taming Transformers"), eq. 7, and their code's clamp. Both losses must depend on
    `last_layer` through graphs that are kept (retain_graph) for the backward pass that follows.
    """
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_adv.norm() + eps)).clamp(0.0, max_weight).detach()
