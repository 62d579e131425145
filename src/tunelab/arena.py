"""Bradley-Terry ratings of systems from pairwise judgments, with bootstrap intervals.

    tunelab arena battles.jsonl [more.jsonl ...] --out runs/arena     # table + ratings.json + ratings.png

Input rows are FastChat battles: `model_a`, `model_b`, `winner` in {model_a, model_b, tie,
tie (bothbad)} (`tunelab label export --judgments` writes them from human labels). A tie is half a win
for each side. The model: P(i beats j) = sigmoid(theta_i - theta_j); theta is the maximum of the
log-likelihood, found by Newton's method (the problem is concave and has a handful of systems). A weak
Gaussian prior `prior * theta^2 / 2` keeps a system that never lost finite (prior=0 is the pure
maximum-likelihood fit). Ratings are on the Elo scale: 1000 + 400 * log10(strength), mean 1000.
The 95% intervals are percentiles over refits on battles resampled with replacement.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ELO = 400 / math.log(10)  # theta (natural log-strength) -> Elo points
WINNER_SCORE = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def read_battles(paths: list[str]) -> list[tuple[str, str, float]]:
    """(system a, system b, score of a) for every row of every file; bad rows stop with file:line."""
    from tunelab.data.read import read_dataset

    battles = []
    for path in paths:
        for row in read_dataset(path, "judgments"):
            if row["model_a"] != row["model_b"]:  # a system against itself says nothing
                battles.append((row["model_a"], row["model_b"], WINNER_SCORE[row["winner"]]))
    return battles


def win_matrix(battles: list[tuple[str, str, float]], systems: list[str]) -> np.ndarray:
    """wins[i, j] = wins of system i over system j, ties counted half to each."""
    index = {s: i for i, s in enumerate(systems)}
    a = np.array([index[x] for x, _, _ in battles])
    b = np.array([index[y] for _, y, _ in battles])
    return _wins(a, b, np.array([s for _, _, s in battles]), len(systems))


def _wins(a: np.ndarray, b: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    wins = np.zeros((n, n))
    np.add.at(wins, (a, b), score)
    np.add.at(wins, (b, a), 1 - score)
    return wins


def log_likelihood(theta: np.ndarray, wins: np.ndarray, prior: float = 0.0) -> float:
    diff = theta[:, None] - theta[None, :]  # (n, n) theta_i - theta_j
    return float(-(wins * np.logaddexp(0, -diff)).sum() - prior * (theta**2).sum() / 2)


def fit_bradley_terry(
    wins: np.ndarray, prior: float = 0.0, iters: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """Log-strengths theta (mean 0) maximising the Bradley-Terry likelihood of `wins` (Newton steps)."""
    n = len(wins)
    games = wins + wins.T
    theta = np.zeros(n)
    current = log_likelihood(theta, wins, prior)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))  # (n, n) P(i beats j)
        grad = (wins - games * p).sum(axis=1) - prior * theta
        curv = games * p * (1 - p)  # minus the Hessian's off-diagonal
        neg_hess = np.diag(curv.sum(axis=1) + prior) - curv
        step = np.linalg.lstsq(neg_hess, grad, rcond=None)[0]  # singular along (1,..,1) when prior = 0
        size = 1.0
        while size > 1e-6:  # halve until the likelihood does not drop
            proposal = theta + size * step
            value = log_likelihood(proposal, wins, prior)
            if value >= current - 1e-12:
                break
            size /= 2
        theta, gain, current = proposal, value - current, value
        if abs(gain) < tol and np.abs(step).max() < 1e-7:
            break
    return theta - theta.mean()


def to_elo(theta: np.ndarray) -> np.ndarray:
    return 1000 + ELO * (theta - theta.mean())


def rate(
    battles: list[tuple[str, str, float]], *, rounds: int = 1000, seed: int = 0, prior: float = 1e-3
) -> dict:
    """Ratings, bootstrap 95% intervals and the win-rate matrix, as a JSON-ready dict (best first)."""
    from tunelab.errors import TunelabError

    if rounds < 1 or prior < 0:
        raise TunelabError(f"arena needs --rounds >= 1 and --prior >= 0, got {rounds} and {prior}.")
    if not battles:
        raise TunelabError(
            "No judgments to rate (every row compared a system with itself, or none were given)."
        )
    systems = sorted({s for a, b, _ in battles for s in (a, b)})
    wins = win_matrix(battles, systems)
    elo = to_elo(fit_bradley_terry(wins, prior))
    index = {s: i for i, s in enumerate(systems)}
    a = np.array([index[x] for x, _, _ in battles])
    b = np.array([index[y] for _, y, _ in battles])
    score = np.array([s for _, _, s in battles])
    rng = np.random.default_rng(seed)
    samples = np.empty((rounds, len(systems)))
    for r in range(rounds):  # resample battles with replacement and refit
        pick = rng.integers(0, len(battles), size=len(battles))
        samples[r] = to_elo(fit_bradley_terry(_wins(a[pick], b[pick], score[pick], len(systems)), prior))
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    games = wins + wins.T
    order = sorted(range(len(systems)), key=lambda i: -elo[i])
    table = [
        {
            "system": systems[i],
            "rating": round(float(elo[i]), 1),
            "ci95": [round(float(low[i]), 1), round(float(high[i]), 1)],
            "games": int(round(games[i].sum())),
            "win_rate": round(float(wins[i].sum() / games[i].sum()), 3),
        }
        for i in order
    ]
    matrix = [
        [round(float(wins[i, j] / games[i, j]), 3) if games[i, j] and i != j else None for j in order]
        for i in order
    ]
    return {
        "ratings": table,
        "win_rate": {"systems": [systems[i] for i in order], "matrix": matrix},
        "battles": len(battles),
        "rounds": rounds,
        "prior": prior,
        "seed": seed,
    }


def plot(result: dict, path: Path) -> Path:
    """Ratings with their intervals, and the win-rate matrix, side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["ratings"]
    names = [r["system"] for r in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2.5))
    ys = np.arange(len(names))[::-1]
    ratings = np.array([r["rating"] for r in table])
    err = np.array([[r["rating"] - r["ci95"][0] for r in table], [r["ci95"][1] - r["rating"] for r in table]])
    left.errorbar(ratings, ys, xerr=err, fmt="o", capsize=4)
    left.set_yticks(ys, names)
    left.set_xlabel("Bradley-Terry rating (Elo scale), 95% bootstrap interval")
    left.grid(axis="x", alpha=0.3)
    matrix = np.array([[np.nan if v is None else v for v in row] for row in result["win_rate"]["matrix"]])
    image = right.imshow(matrix, vmin=0, vmax=1, cmap="RdYlGn")
    right.set_xticks(range(len(names)), names, rotation=45, ha="right")
    right.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if not np.isnan(matrix[i, j]):
                right.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    right.set_title("win rate of row over column (ties = 1/2)")
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(paths: list[str], out: str, *, rounds: int = 1000, seed: int = 0, prior: float = 1e-3) -> dict:
    """Read, rate, print the table and write ratings.json + ratings.png into `out`."""
    import json

    from rich.table import Table

    from tunelab.console import table as console_table
    from tunelab.console import table_console

    result = rate(read_battles(paths), rounds=rounds, seed=seed, prior=prior)
    result["files"] = list(paths)
    console = table_console()
    table = console_table(
        f"Bradley-Terry ratings from {result['battles']} judgments ({rounds} bootstrap rounds)",
        ("rank", "system", "rating", "95% interval", "games", "win rate"),
        left=("system",),
    )
    for rank, r in enumerate(result["ratings"], 1):
        low, high = r["ci95"]
        table.add_row(
            str(rank),
            r["system"],
            f"{r['rating']:.1f}",
            f"{low:.1f} .. {high:.1f}",
            str(r["games"]),
            f"{r['win_rate']:.3f}",
        )
    console.print(table)
    names = result["win_rate"]["systems"]
    console.print("win rate of row over column (ties count 1/2):")
    matrix = Table()
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    for name, row in zip(names, result["win_rate"]["matrix"]):
        matrix.add_row(name, *("-" if v is None else f"{v:.3f}" for v in row))
    console.print(matrix)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, folder / "ratings.png")
    console.print(f"wrote {folder / 'ratings.json'} and {folder / 'ratings.png'}")
    return result
