"""The history chart: step latency, its ratio to torch eager, and peak memory against commit."""
from __future__ import annotations

from pathlib import Path


def plot_history(records: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no benchmark records to plot (run bench-model first, or check --history-dir)")
    out = Path(out)
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.6 * len(records) + 3), 9), sharex=True)
    groups = {}
    for i, r in enumerate(records):
        groups.setdefault((r.get("model"), r.get("tier")), []).append((i, r))
    labels = [f"{(r.get('git') or {}).get('short') or '?'}{'*' if (r.get('git') or {}).get('dirty') else ''}\n"
              f"{r.get('created', '')[:10]}" for r in records]
    for (model, tier), items in groups.items():
        xs = [i for i, _ in items]
        step = [r["stages"].get("denoise_step", {}).get("exported", {}).get("median") for _, r in items]
        ratio = [r["stages"].get("denoise_step", {}).get("ratio_torch") for _, r in items]
        ratio_pn = [r["stages"].get("denoise_step", {}).get("ratio_pynative") for _, r in items]
        rss = [(r.get("peak_rss_mb") or {}).get("exported_process") for _, r in items]
        name = f"{model} {tier}"
        axes[0].plot(xs, step, "o-", label=name)
        axes[1].plot(xs, ratio, "o-", label=f"{name}: exported / torch")
        axes[1].plot(xs, ratio_pn, "s--", label=f"{name}: exported / PyNative")
        axes[2].plot(xs, rss, "o-", label=name)
    axes[0].set_ylabel("denoising step (s, median)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("step time ratio")
    axes[1].axhline(1.0, color="gray", lw=0.8, ls=":")
    axes[2].set_ylabel("peak RSS, exported (MB)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].set_xticks(range(len(records)))
    axes[2].set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    axes[2].set_xlabel("commit (* = uncommitted changes)")
    fig.suptitle("video-aot benchmark history")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
