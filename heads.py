"""The property heads fitted on N labelled latents: the ResidualMLP (models.py) trained many at once,
and Gaussian kernel ridge regression."""
import copy

import torch

import selection
from models import ResidualMLP

HEADS = ("mlp", "krr")


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


def train_mlp_heads(x, y, x_val, y_val, seeds, cfg):
    """H heads at once, each exactly as train_mlp would train it alone (own init, batch order and
    early stopping); a head that stops leaves the stack, so no work is spent on it afterwards.
    x (H, N, d), y (H, N) standardized per head; x_val (V, d) shared, y_val (H, V).
    Returns (best parameters {name: (H, ...)}, best epoch (H,) and its validation MAE (H,) per head,
    the StackedHeads)."""
    num_heads, n = y.shape
    heads = StackedHeads(seeds, x.shape[2], cfg, x.device, x.dtype)
    params = heads.initial_params
    optimizer = torch.optim.Adam(params.values(), lr=cfg.MLP_LR)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    best = {name: p.detach().clone() for name, p in params.items()}
    best_mae = torch.full((num_heads,), float("inf"), dtype=x.dtype, device=x.device)
    best_epoch = torch.zeros(num_heads, dtype=torch.long, device=x.device)
    live = torch.arange(num_heads, device=x.device)  # heads still training, in stack order
    for epoch in range(1, cfg.MLP_EPOCHS + 1):
        # each head's own shuffle, as train_mlp draws it; one copy to the device per epoch
        order = torch.stack([torch.randperm(n, generator=generators[h]) for h in live.tolist()]).to(x.device)
        for rows in order.split(cfg.MLP_BATCH_SIZE, dim=1):  # (live heads, B)
            prediction = heads.per_head(params, x[live[:, None], rows])
            loss = ((prediction - y[live[:, None], rows]) ** 2).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_mae = (heads.shared(params, x_val) - y_val[live]).abs().mean(dim=1)
        improved = val_mae < best_mae[live]
        for name, p in params.items():
            mask = improved.view(-1, *[1] * (p.dim() - 1))
            best[name][live] = torch.where(mask, p.detach(), best[name][live])
        best_mae[live] = torch.where(improved, val_mae, best_mae[live])
        best_epoch[live] = torch.where(improved, epoch, best_epoch[live])
        going = epoch - best_epoch[live] < cfg.MLP_PATIENCE
        if not bool(going.all()):  # the one host sync of an epoch
            live = live[going]
            if len(live) == 0:
                break
            params, optimizer = keep_heads(params, optimizer, going)
    return best, best_epoch, best_mae, heads


def krr_fit(x, y, x_val, y_val, widths, ridges):
    """Kernel ridge regression with a Gaussian kernel, in float64: x (N, d), y (N,) standardized;
    the width (a multiple of the median pairwise distance of x) and the ridge are the pair of the
    grid with the lowest MAE on x_val (V, d), y_val (V,). One eigendecomposition per width serves
    every ridge: alpha = Q (L + ridge)^-1 Q^T y. Returns {x, alpha (N,), gamma, width, ridge, val_mae}."""
    x, y, x_val, y_val = (t.double() for t in (x, y, x_val, y_val))
    squared = selection.squared_distances(x, x)
    median = selection.pairwise_median(squared)
    val_squared = selection.squared_distances(x_val, x)
    best = {"val_mae": float("inf")}
    for width in widths:
        gamma = 1.0 / (2.0 * (width * median) ** 2)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.exp(-gamma * squared))
        projected = eigenvectors.T @ y  # (N,)
        val_basis = torch.exp(-gamma * val_squared) @ eigenvectors  # (V, N)
        for ridge in ridges:
            coefficients = projected / (eigenvalues + ridge)
            val_mae = float((val_basis @ coefficients - y_val).abs().mean())
            if val_mae < best["val_mae"]:
                best = {"x": x, "alpha": eigenvectors @ coefficients, "gamma": gamma, "width": width, "ridge": ridge,
                        "val_mae": val_mae}
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


def fit_mlp_heads(x, y, y_val, inputs, seeds, cfg):
    """Test predictions (H, T) and validation MAEs (H,) in standardized units of MLP heads trained
    together, and per head its extra result columns."""
    params, best_epoch, best_mae, heads = train_mlp_heads(x, y, inputs["val"][0], y_val, seeds, cfg)
    with torch.no_grad():
        predictions = heads.shared(params, inputs["test"][0])
    return predictions, best_mae, [{"best_epoch": epoch} for epoch in best_epoch.tolist()]


def fit_krr_heads(x, y, y_val, inputs, seeds, cfg):
    """As fit_mlp_heads, for kernel ridge heads fitted one after the other."""
    predictions, val_mae, columns = [], [], []
    for h in range(len(seeds)):
        model = krr_fit(x[h], y[h], inputs["val"][0], y_val[h], cfg.KRR_WIDTHS, cfg.KRR_RIDGES)
        predictions.append(krr_predict(model, inputs["test"][0]))
        val_mae.append(model["val_mae"])
        columns.append({"krr_width": model["width"], "krr_ridge": model["ridge"]})
    return torch.stack(predictions).to(y.dtype), torch.tensor(val_mae, dtype=y.dtype, device=y.device), columns

FIT_HEADS = {"mlp": fit_mlp_heads, "krr": fit_krr_heads}
