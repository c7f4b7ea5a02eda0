"""The property heads fitted on N labelled latents: the ResidualMLP (models.py) trained many at once,
and Gaussian kernel ridge regression."""
import copy

import numpy as np
import psutil
import torch

import selection
from models import ResidualMLP
from utils import InputError

HEADS = ("mlp", "krr")
KRR_PEAK_MATRICES = 6  # N x N float64 matrices krr_fit_loo holds at its peak (measured: 6.2 at N = 4000)


def new_head(seed, latent_dim, cfg):
    """A ResidualMLP whose initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResidualMLP(latent_dim, cfg.MLP_HIDDEN_DIM, cfg.MLP_LAYERS)


def epoch_batches(generator, n, batch_size):
    """Shuffled minibatch row indices of one epoch (what train_mlp_heads draws per head)."""
    return torch.split(torch.randperm(n, generator=generator), batch_size)


def train_mlp(model, x, y, x_val, y_val, cfg, seed):
    """One head, the plain way: Adam on MSE over standardized y, early stopping on validation MAE.
    x (N, d), y (N,) standardized; x_val (V, d), y_val (V,) in the same units.
    Returns the model with its best-validation weights and the epoch they came from."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.MLP_LR)
    generator = torch.Generator().manual_seed(seed)
    best_mae, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.MLP_EPOCHS + 1):
        model.train()
        for rows in epoch_batches(generator, len(x), cfg.MLP_BATCH_SIZE):
            rows = rows.to(x.device)
            loss = ((model(x[rows]) - y[rows]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_mae = float((model(x_val) - y_val).abs().mean())
        if val_mae < best_mae:
            best_mae, best_epoch, best_state = val_mae, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.MLP_PATIENCE:
            break
    model.load_state_dict(best_state)
    return model, best_epoch


class StackedHeads:
    """H ResidualMLPs as one stack of parameters {name: (H, ...)}, evaluated with vmap."""

    def __init__(self, seeds, latent_dim, cfg, device, dtype):
        heads = [new_head(seed, latent_dim, cfg).to(device, dtype) for seed in seeds]
        self.initial_params, _ = torch.func.stack_module_state(heads)
        self.template = copy.deepcopy(heads[0]).to("meta")

    def _call(self, params, x):
        return torch.func.functional_call(self.template, params, (x,))

    def per_head(self, params, x):
        """x (H, B, d), one batch per head -> (H, B)."""
        return torch.vmap(self._call)(params, x)

    def shared(self, params, x):
        """x (B, d), the same batch for every head -> (H, B)."""
        return torch.vmap(self._call, in_dims=(0, None))(params, x)


def keep_heads(params, optimizer, keep):
    """The stacked parameters and Adam state of only the heads where `keep` (H,) is True."""
    kept = {name: p.detach()[keep].requires_grad_() for name, p in params.items()}
    kept_optimizer = torch.optim.Adam(kept.values(), **optimizer.defaults)
    for old, new in zip(params.values(), kept.values()):
        kept_optimizer.state[new] = {key: value if key == "step" else value[keep]
                                     for key, value in optimizer.state[old].items()}
    return kept, kept_optimizer


def train_stack(heads, x, y, seeds, cfg, after_epoch, source=None, weight=None):
    """The epoch loop of stacked heads. Stack head s trains on x[source[s]] (N, d), y[source[s]] (N,)
    (source (S,), default s); each draws its own shuffle and takes Adam steps on the MSE of its batches,
    as train_mlp does, counting only rows where `weight` (S, N) is 1 when given. After every epoch,
    after_epoch(params, live, epoch) returns which live heads go on (bool, (len(live),)); the others
    leave the stack, so no work is spent on them afterwards."""
    params = heads.initial_params
    optimizer = torch.optim.Adam(params.values(), lr=cfg.MLP_LR)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    source = torch.arange(len(seeds), device=x.device) if source is None else source
    live = torch.arange(len(seeds), device=x.device)  # heads still training, in stack order
    for epoch in range(1, cfg.MLP_EPOCHS + 1):
        # each head's own shuffle, as train_mlp draws it; one copy to the device per epoch
        order = torch.stack([torch.randperm(x.shape[1], generator=generators[h]) for h in live.tolist()]).to(x.device)
        data = source[live][:, None]  # (live heads, 1): whose rows each live head trains on
        for rows in order.split(cfg.MLP_BATCH_SIZE, dim=1):  # (live heads, B)
            squared = (heads.per_head(params, x[data, rows]) - y[data, rows]) ** 2
            if weight is None:
                loss = squared.mean(dim=1).sum()
            else:
                w = weight[live[:, None], rows]
                loss = ((squared * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        going = after_epoch(params, live, epoch)
        if not bool(going.all()):  # the one host sync of an epoch
            live = live[going]
            if len(live) == 0:
                break
            params, optimizer = keep_heads(params, optimizer, going)


def train_mlp_heads(x, y, x_val, y_val, seeds, cfg):
    """H heads at once, each exactly as train_mlp would train it alone (own init, batch order and
    early stopping on validation MAE). x (H, N, d), y (H, N) standardized per head; x_val (V, d)
    shared, y_val (H, V). Returns (best parameters {name: (H, ...)}, best epoch (H,) and its
    validation MAE (H,) per head, the StackedHeads)."""
    num_heads = len(seeds)
    heads = StackedHeads(seeds, x.shape[2], cfg, x.device, x.dtype)
    best = {name: p.detach().clone() for name, p in heads.initial_params.items()}
    best_mae = torch.full((num_heads,), float("inf"), dtype=x.dtype, device=x.device)
    best_epoch = torch.zeros(num_heads, dtype=torch.long, device=x.device)

    def after_epoch(params, live, epoch):
        with torch.no_grad():
            val_mae = (heads.shared(params, x_val) - y_val[live]).abs().mean(dim=1)
        improved = val_mae < best_mae[live]
        for name, p in params.items():
            mask = improved.view(-1, *[1] * (p.dim() - 1))
            best[name][live] = torch.where(mask, p.detach(), best[name][live])
        best_mae[live] = torch.where(improved, val_mae, best_mae[live])
        best_epoch[live] = torch.where(improved, epoch, best_epoch[live])
        return epoch - best_epoch[live] < cfg.MLP_PATIENCE

    train_stack(heads, x, y, seeds, cfg, after_epoch)
    return best, best_epoch, best_mae, heads


def cv_folds(n, seeds, folds):
    """Seeded folds of each head's n rows: the fold of every row (H, n), and the rows of every fold
    (H, folds, M), M = ceil(n / folds), padded with row 0 where `real` (folds, M) is False. A numpy
    permutation seeded with the head's seed ranks the rows, and fold f holds ranks f, f + folds, ...
    (torch's generator of that seed draws the head's batch order, which the folds should not follow)."""
    ranks = np.stack([np.random.default_rng(seed).permutation(n) for seed in seeds])  # (H, n)
    size = -(-n // folds)
    by_rank = np.zeros((len(seeds), size * folds), dtype=np.int64)
    by_rank[:, :n] = ranks.argsort(axis=1)
    real = (np.arange(size * folds) < n).reshape(size, folds).T
    return ranks % folds, by_rank.reshape(len(seeds), size, folds).transpose(0, 2, 1), real


def cv_epochs(x, y, seeds, cfg):
    """The epoch count of each head, chosen by HEAD_CV_FOLDS-fold cross-validation on its own N labels:
    x (H, N, d), y (H, N) standardized. Each head has one copy per fold, with the head's initialisation
    and batch order, trained on the other folds' rows; all copies of all heads train together. A row
    left out is masked, not dropped, so a copy takes as many steps per epoch as the refit on all N
    rows will. The count is the epoch with the lowest held-out MAE pooled over the folds; a head's
    copies stop together MLP_PATIENCE epochs after it. Returns (epochs (H,), that MAE (H,))."""
    num_heads, n = y.shape
    folds = cfg.HEAD_CV_FOLDS
    fold_of_row, fold_rows, real = (torch.as_tensor(a, device=x.device) for a in cv_folds(n, seeds, folds))
    source = torch.arange(num_heads, device=x.device).repeat_interleave(folds)  # copy h * folds + f: head h, fold f
    copy_fold = torch.arange(folds, device=x.device).repeat(num_heads)
    train_weight = (fold_of_row[source] != copy_fold[:, None]).to(x.dtype)  # (S, N)
    held_rows = fold_rows.reshape(len(source), -1)  # (S, M)
    x_held, y_held = x[source[:, None], held_rows], y[source[:, None], held_rows]
    held_real = real.repeat(num_heads, 1).to(x.dtype)  # (S, M)
    copy_seeds = [seeds[h] for h in source.tolist()]
    heads = StackedHeads(copy_seeds, x.shape[2], cfg, x.device, x.dtype)
    best_mae = torch.full((num_heads,), float("inf"), dtype=x.dtype, device=x.device)
    best_epoch = torch.zeros(num_heads, dtype=torch.long, device=x.device)

    def after_epoch(params, live, epoch):
        with torch.no_grad():
            error = (heads.per_head(params, x_held[live]) - y_held[live]).abs() * held_real[live]
        pooled = error.sum(dim=1).view(-1, folds).sum(dim=1) / n  # (live heads,): a head's copies are adjacent
        mine = source[live][::folds]
        improved = pooled < best_mae[mine]
        best_mae[mine] = torch.where(improved, pooled, best_mae[mine])
        best_epoch[mine] = torch.where(improved, epoch, best_epoch[mine])
        return (epoch - best_epoch[mine] < cfg.MLP_PATIENCE).repeat_interleave(folds)

    train_stack(heads, x, y, copy_seeds, cfg, after_epoch, source=source, weight=train_weight)
    return best_epoch, best_mae


def train_mlp_epochs(x, y, seeds, epochs, cfg):
    """H heads trained together on all their rows, head h for epochs[h] epochs (at least one): x (H, N, d),
    y (H, N) standardized. Returns (parameters {name: (H, ...)}, the StackedHeads)."""
    heads = StackedHeads(seeds, x.shape[2], cfg, x.device, x.dtype)
    final = {name: p.detach().clone() for name, p in heads.initial_params.items()}

    def after_epoch(params, live, epoch):
        done = epochs[live] <= epoch
        for name, p in params.items():
            final[name][live[done]] = p.detach()[done]
        return ~done

    train_stack(heads, x, y, seeds, cfg, after_epoch)
    return final, heads


def check_kernel_width(x, where, remedy="use other latents or drop krr from HEAD"):
    """Refuse labelled latents x (N, d) whose median pairwise distance is 0 (more than half the pairs
    identical rows): every kernel width is a multiple of it, and a zero width has no Gaussian kernel.
    Refused rather than patched: any other width would be a setting nobody chose, and such latents
    cannot tell the structures apart. Counted exactly; squared_distances would blur 0 into rounding.
    `remedy` ends the message: what the user of this kernel can do."""
    _, counts = torch.unique(x, dim=0, return_counts=True)
    identical, pairs = int((counts * (counts - 1) // 2).sum()), len(x) * (len(x) - 1) // 2
    if identical > (pairs - 1) // 2:  # pairwise_median takes the lower median, sorted position (pairs - 1) // 2
        raise InputError(f"{where}: {identical} of the {pairs} pairs of the {len(x)} labelled structures have "
                         "identical latents, so the Gaussian kernel's width (KRR_WIDTHS times their median "
                         f"distance) would be 0; {remedy}")


def free_memory(device):
    """Bytes a new allocation on `device` can take: free GPU memory, or the host's available memory."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available


def check_krr_memory(n, device):
    """Refuse a budget whose kernel ridge head cannot fit in memory, before hours of other heads run."""
    need, free = KRR_PEAK_MATRICES * 8 * n * n, free_memory(device)
    if need > free:
        raise InputError(f"N={n}: a kernel ridge head needs about {need / 2**30:.2g} GiB ({KRR_PEAK_MATRICES} N x N "
                         f"float64 matrices) and {device} has {free / 2**30:.2g} GiB free; expected a smaller "
                         "budget, or drop krr from HEAD (--heads mlp)")


def krr_eigen(x, widths):
    """Per width of `widths` (multiples of the median pairwise distance of x (N, d) float64), the
    Gaussian kernel's gamma and eigendecomposition: (width, gamma, eigenvalues (N,), eigenvectors (N, N))."""
    check_kernel_width(x, "kernel ridge head")
    squared = selection.squared_distances(x, x)
    median = selection.pairwise_median(squared)
    for width in widths:
        gamma = selection.gaussian_gamma(width, median)
        yield (width, gamma, *torch.linalg.eigh(torch.exp(-gamma * squared)))


def krr_fit(x, y, x_val, y_val, widths, ridges):
    """Kernel ridge regression with a Gaussian kernel, in float64: x (N, d), y (N,) standardized;
    the width (a multiple of the median pairwise distance of x) and the ridge are the pair of the
    grid with the lowest MAE on x_val (V, d), y_val (V,). One eigendecomposition per width serves
    every ridge: alpha = Q (L + ridge)^-1 Q^T y. Returns {x, alpha (N,), gamma, width, ridge, val_mae}."""
    x, y, x_val, y_val = (t.double() for t in (x, y, x_val, y_val))
    val_squared = selection.squared_distances(x_val, x)
    best = {"val_mae": float("inf")}
    for width, gamma, eigenvalues, eigenvectors in krr_eigen(x, widths):
        projected = eigenvectors.T @ y  # (N,)
        val_basis = torch.exp(-gamma * val_squared) @ eigenvectors  # (V, N)
        for ridge in ridges:
            coefficients = projected / (eigenvalues + ridge)
            val_mae = float((val_basis @ coefficients - y_val).abs().mean())
            if val_mae < best["val_mae"]:
                best = {"x": x, "alpha": eigenvectors @ coefficients, "gamma": gamma, "width": width, "ridge": ridge,
                        "val_mae": val_mae}
    return best


def krr_fit_loo(x, y, widths, ridges):
    """As krr_fit, but the width and ridge are the pair with the lowest leave-one-out MAE on the N labels
    themselves, in closed form: with K = Q diag(l) Q^T and G = Q (l + ridge)^-1 Q^T, alpha = G y and
    the residual of point i, fitted without it, is alpha_i / G_ii (the width stays that of all N).
    Returns {x, alpha (N,), gamma, width, ridge, loo_mae}."""
    x, y = x.double(), y.double()
    ridges = torch.tensor(ridges, dtype=torch.float64, device=x.device)
    best = {"loo_mae": float("inf")}
    for width, gamma, eigenvalues, eigenvectors in krr_eigen(x, widths):
        inverse = 1.0 / (eigenvalues[None, :] + ridges[:, None])  # (R, N)
        alpha = (inverse * (eigenvectors.T @ y)) @ eigenvectors.T  # (R, N)
        diagonal = inverse @ (eigenvectors ** 2).T  # (R, N): G_ii
        loo_mae = (alpha / diagonal).abs().mean(dim=1)  # (R,)
        r = int(loo_mae.argmin())  # the first of equals, as krr_fit keeps it
        if float(loo_mae[r]) < best["loo_mae"]:
            best = {"x": x, "alpha": alpha[r], "gamma": gamma, "width": width, "ridge": float(ridges[r]),
                    "loo_mae": float(loo_mae[r])}
    return best


def krr_predict(model, x):
    """Predictions (T,) of a krr_fit model at x (T, d), a block of rows at a time."""
    return torch.cat([torch.exp(-model["gamma"] * selection.squared_distances(rows.double(), model["x"]))
                      @ model["alpha"] for rows in x.split(4096)])


def budget_inputs(chosen, inputs):
    """Head inputs for the chosen pool rows (H, N): x (H, N, d), and y (H, N) and y_val (H, V)
    standardized per head by its own labels, with that (mean, std), each (H, 1), to map back to label units."""
    x_pool, y_pool = inputs["pool"]
    y_chosen = y_pool[chosen]
    mean, std = y_chosen.mean(dim=1, keepdim=True), y_chosen.std(dim=1, keepdim=True)
    return x_pool[chosen], (y_chosen - mean) / std, (inputs["val"][1][None] - mean) / std, (mean, std)


def fit_mlp_heads(x, y, val, test_x, seeds, cfg):
    """MLP heads trained together, tuned per HEAD_TUNING: "labels", the epoch count cross-validated on
    each head's own labels (cv_epochs), then a refit on all of them; "validation", early stopping on
    val = (x_val (V, d), y_val (H, V)). Returns test predictions (H, T) and validation MAEs (H,), in
    standardized units, the latter measured after the fit, and per head its extra result columns."""
    if cfg.HEAD_TUNING == "labels":
        epochs, _ = cv_epochs(x, y, seeds, cfg)
        params, heads = train_mlp_epochs(x, y, seeds, epochs, cfg)
    else:
        params, epochs, _, heads = train_mlp_heads(x, y, *val, seeds, cfg)
    with torch.no_grad():
        predictions, val_predictions = heads.shared(params, test_x), heads.shared(params, val[0])
    return predictions, (val_predictions - val[1]).abs().mean(dim=1), [{"best_epoch": e} for e in epochs.tolist()]


def fit_krr_heads(x, y, val, test_x, seeds, cfg):
    """As fit_mlp_heads, for kernel ridge heads fitted one after the other, the width and ridge chosen
    by leave-one-out error on the head's labels ("labels") or by the validation MAE ("validation")."""
    predictions, val_mae, columns = [], [], []
    for h in range(len(seeds)):
        if cfg.HEAD_TUNING == "labels":
            model = krr_fit_loo(x[h], y[h], cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        else:
            model = krr_fit(x[h], y[h], val[0], val[1][h], cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        predictions.append(krr_predict(model, test_x))
        val_mae.append(float((krr_predict(model, val[0]) - val[1][h]).abs().mean()))
        columns.append({"krr_width": model["width"], "krr_ridge": model["ridge"]})
    return torch.stack(predictions).to(y.dtype), torch.tensor(val_mae, dtype=y.dtype, device=y.device), columns

FIT_HEADS = {"mlp": fit_mlp_heads, "krr": fit_krr_heads}

TUNINGS = ("labels", "validation")  # HEAD_TUNING: on the N labels alone, or on the validation subset
