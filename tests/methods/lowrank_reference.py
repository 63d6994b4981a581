"""Plain reference loops for the projection optimizers, written from the papers' update rules, one matrix at a time."""
import torch


def adam_direction(x, m, v, t, betas=(0.9, 0.999), eps=1e-8):
    m = betas[0] * m + (1 - betas[0]) * x
    v = betas[1] * v + (1 - betas[1]) * x * x
    return (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps), m, v


def svd_proj(rank):
    """Top-r singular vectors of G on its short side, by torch.linalg.svd (`projection: svd`)."""
    def fn(g, t):
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        return u[:, :rank] if g.shape[0] < g.shape[1] else vh[:rank].T
    return fn


def eigh_proj(rank):
    """The same vectors as the eigenvectors of G Gᵀ (Gᵀ G on the right) of largest eigenvalue (`projection: eigh`)."""
    def fn(g, t):
        left = g.shape[0] < g.shape[1]
        _, vectors = torch.linalg.eigh(g @ g.T if left else g.T @ g)
        return vectors[:, -rank:].flip(1)
    return fn


def project(g, proj, left):
    return proj.T @ g if left else g @ proj


def back(r, proj, left):
    return proj @ r if left else r @ proj.T


def run(w0, grads, lr, gap, proj_fn, update_fn):
    """update_fn(g, r, n, proj, left, memo) -> ΔW; proj_fn(g, step) -> projection (short side × rank)."""
    w, m, v, proj, memo = w0.clone(), None, None, None, {}
    left = w0.shape[0] < w0.shape[1]
    for t, g in enumerate(grads, start=1):
        if (t - 1) % gap == 0:
            proj = proj_fn(g, t)
        r = project(g, proj, left)
        if m is None:
            m, v = torch.zeros_like(r), torch.zeros_like(r)
        n, m, v = adam_direction(r, m, v, t)
        w = w - lr * update_fn(g, r, n, proj, left, memo)
    return w


def limit(update, memo, key, gamma=1.01):
    norm = update.norm()
    if key in memo and norm > gamma * memo[key]:
        update, norm = update * (gamma * memo[key] / norm), gamma * memo[key]
    memo[key] = norm
    return update
