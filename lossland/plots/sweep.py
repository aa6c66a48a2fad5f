"""Report figures of a sweep (:func:`lossland.sweep.report_series` computes the numbers)."""
import os

from lossland.plots import _agg


def plot_report(series: dict, out_dir: str) -> list:
  """Writes ``out_dir/report_<metric>.png`` for each metric of ``series``:
  the metric against ``series["x"]``, one line per label. The x axis is
  logarithmic when every x value is positive and they span more than a
  factor 20.

  Args:
    series: :func:`lossland.sweep.report_series`'s result.
    out_dir: an existing directory.

  Returns:
    the paths written (each renamed into place when complete).
  """
  plt = _agg.pyplot()
  from matplotlib import ticker
  x, numeric, xs_all = series["x"], series["numeric"], series["x_values"]
  paths = []
  for metric, m in series["metrics"].items():
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, pts in m["lines"].items():
      ax.plot([str(p[0]) if not numeric else p[0] for p in pts], [p[1] for p in pts],
              "o-", label=label or None)
    if numeric:
      pos = [v for v in xs_all if v > 0]
      if len(pos) == len(xs_all) and pos and max(pos) / min(pos) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(10, subs=(1, 2, 5)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(m["title"], fontsize=9)
    if any(m["lines"]):  # labelled lines
      ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"report_{metric}.png")
    tmp = f"{path}.{os.getpid()}.tmp"
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    paths.append(path)
  return paths
