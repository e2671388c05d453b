"""The HTML of the inspection report: Bokeh panels on pages of N spectra, and a summary page.

Every page is self-contained: Bokeh's JavaScript is inlined (inline resources, the
plotting core only, about 1.3 MB: the panels use no widgets), each panel's plot is a
:func:`bokeh.embed.json_item` drawn when it comes into view, the summary's sorting and
filtering is a few lines of plain JavaScript, and nothing is fetched, so the files open
offline from ``file://``.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import MissingDependencyError
from ..flags import Flag
from .panels import Panel, confidence, format_value, row_flag_names

__all__ = ["require_bokeh", "panel_figure", "panel_info", "page_html", "summary_html", "page_name"]

#: Colours: data, noise band, model, emission and absorption line markers.
COLOURS = {"data": "#333333", "band": "#8fb3d9", "model": "#d62728", "emission": "#2ca02c",
           "absorption": "#9467bd"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
nav a { margin-right: 1em; }
.panel { border-top: 1px solid #ccc; padding: 0.6em 0; display: flex; gap: 1em; }
.panel .info { flex: 0 0 19em; font-size: 0.85em; }
.panel .plot { flex: 1 1 auto; min-width: 0; }
.bar { display: inline-block; height: 0.7em; background: #4a7ab5; vertical-align: middle; }
.flags { color: #a33; } .clean { color: #383; } .note { color: #666; font-size: 0.9em; }
table.cat { border-collapse: collapse; font-size: 0.85em; }
table.cat th { cursor: pointer; background: #eee; position: sticky; top: 0; }
table.cat td, table.cat th { padding: 0.15em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
table.cat td.t, table.cat th.t { text-align: left; }
table.counts td, table.counts th { padding: 0.1em 0.8em; text-align: left; }
.controls { margin: 1em 0; } .controls label { margin-right: 1.5em; }
"""


def require_bokeh() -> None:
    """Raise a clear error when Bokeh, which the report draws with, is not installed.

    Raises
    ------
    MissingDependencyError
        ``bokeh`` cannot be imported; the message names the ``report`` extra.
    """
    try:
        import bokeh  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"the inspection report needs Bokeh, which is not installed ({err}); "
            'install it with: pip install "omnispectra[report]"') from err


def page_name(page: int) -> str:
    """File name of page ``page`` (1-based): ``page-001.html``."""
    return f"page-{page:03d}.html"


def _y_range(panel: Panel) -> tuple[float, float]:
    """A y range that shows the data (0.5-99.5 percentiles, padded), not a few wild pixels."""
    flux = panel.thinned.flux
    good = flux[np.isfinite(flux)]
    if not good.size:
        return -1.0, 1.0
    lo, hi = np.percentile(good, [0.5, 99.5])
    pad = 0.15 * (hi - lo if hi > lo else abs(hi) + 1.0)
    return float(lo - pad), float(hi + pad)


def panel_figure(panel: Panel) -> Any:
    """The Bokeh figure of a panel: data, its 1-sigma band, the template model, line markers."""
    from bokeh.models import ColumnDataSource, Range1d
    from bokeh.plotting import figure

    t = panel.thinned
    y0, y1 = _y_range(panel)
    unit = panel.flux_unit or "no unit in the file"
    fig = figure(height=PLOT_HEIGHT, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,box_zoom,reset",
                 active_scroll=None, y_range=Range1d(y0, y1),
                 x_axis_label="observed wavelength [Å]", y_axis_label=f"flux [{unit}]")
    sigma = np.where(np.isfinite(t.sigma), t.sigma, 0.0)
    source = ColumnDataSource({"x": t.wavelength, "y": t.flux, "lo": t.flux - sigma, "hi": t.flux + sigma})
    if np.isfinite(t.sigma).any():
        fig.varea(x="x", y1="lo", y2="hi", source=source, fill_color=COLOURS["band"], fill_alpha=0.6,
                  legend_label="1σ noise")
    fig.line(x="x", y="y", source=source, color=COLOURS["data"], line_width=1,
             legend_label="data" + (f" (binned ×{t.factor})" if t.factor > 1 else ""))
    if t.model is not None:
        fig.line(t.wavelength, t.model, color=COLOURS["model"], line_width=1.3, legend_label="template")
    for kind in ("emission", "absorption"):
        lines = [(name, x) for name, x, k in panel.lines if k == kind]
        if lines:
            xs = [x for _, x in lines]
            fig.segment(x0=xs, x1=xs, y0=[y0] * len(xs), y1=[y1] * len(xs), color=COLOURS[kind],
                        line_dash="dashed", line_alpha=0.7)
            fig.text(x=xs, y=[y1] * len(xs), text=[name for name, _ in lines], angle=np.pi / 2,
                     text_align="right", text_baseline="bottom", text_font_size="8pt",
                     text_color=COLOURS[kind], x_offset=-2, y_offset=4)
    fig.legend.location = "top_left"
    fig.legend.label_text_font_size = "8pt"
    fig.legend.click_policy = "hide"
    fig.legend.background_fill_alpha = 0.6
    fig.toolbar.logo = None
    return fig


def _probability_bars(row: dict[str, Any]) -> str:
    probs = [(name[5:], float(value)) for name, value in row.items() if name.startswith("prob_")]
    return "".join(
        f'<div>{html.escape(cls):<6} <span class="bar" style="width:{max(p, 0.0) * 8:.2f}em"></span> '
        f"{format_value('prob_', p)}</div>" for cls, p in probs)


def _stellar(row: dict[str, Any]) -> str:
    parts = []
    for name, label, unit in (("teff", "T<sub>eff</sub>", " K"), ("logg", "log g", ""),
                              ("fe_h", "[Fe/H]", "")):
        text = format_value(name, row.get(name), row.get(f"{name}_err"))
        if text:
            parts.append(f"{label} = {html.escape(text)}{unit}")
    return "<div>" + "<br>".join(parts) + "</div>" if parts else ""


def panel_info(panel: Panel) -> str:
    """The HTML beside a panel: id, class and probabilities, z, flags, stellar parameters."""
    row = panel.row
    flag = row.get("flag")
    names = row_flag_names(flag) if flag is not None else []
    flags = (f'<div class="flags">flag {int(flag)}: {html.escape(", ".join(names))}</div>' if names
             else '<div class="clean">flag 0 (use it)</div>' if flag is not None else "")
    z = format_value("z", row.get("z"), row.get("z_err"))
    extra = ", ".join(f"{label} {html.escape(text)}" for label, text in (
        ("Δχ²", format_value("deltachi2", row.get("deltachi2"))),
        ("anomaly", format_value("anomaly", row.get("anomaly")))) if text)
    parts = [
        f'<div><b>{html.escape(str(row["id"]))}</b> <span class="note">#{panel.index}</span></div>',
        f'<div class="note" title="{html.escape(str(row["source_file"]))}">'
        f'{html.escape(str(row.get("survey", "")))}</div>',
        f"<div>class <b>{html.escape(str(row['class']))}</b>"
        + (f" (fit: {html.escape(str(row['spectype']))})" if row.get("spectype") not in (None, "") else "")
        + "</div>",
        _probability_bars(row),
        f"<div>z = {html.escape(z)}</div>" if z else "",
        f"<div>{extra}</div>" if extra else "",
        flags,
        _stellar(row),
        f'<div class="note">{html.escape(panel.model_note)}</div>' if panel.model_note else "",
        f'<div class="flags">{html.escape(panel.problem)}</div>' if panel.problem else "",
    ]
    return "".join(parts)


#: Height of a panel's plot in pixels (its placeholder has it before the plot is drawn).
PLOT_HEIGHT = 250

#: Draws each panel's plot when it comes near the view (Bokeh.embed.embed_item): a page of
#: 50 plots drawn at once took 4.4-4.9 s to settle in headless Chromium, one screenful < 1 s.
_LAZY = """
(function () {
  const items = JSON.parse(document.getElementById("plot-data").textContent);
  function draw(el) {
    if (el.dataset.drawn) return;
    el.dataset.drawn = "1";
    Bokeh.embed.embed_item(items[el.dataset.plot], el.id);
  }
  const targets = document.querySelectorAll("div.plot[data-plot]");
  if (!("IntersectionObserver" in window)) { targets.forEach(draw); return; }
  const seen = new IntersectionObserver(function (entries) {
    for (const e of entries) if (e.isIntersecting) { seen.unobserve(e.target); draw(e.target); }
  }, {rootMargin: "400px"});
  targets.forEach(function (el) { seen.observe(el); });
})();
"""


def _nav(page: int, n_pages: int) -> str:
    links = ['<a href="index.html">summary</a>']
    if page > 1:
        links.append(f'<a href="{page_name(page - 1)}">previous</a>')
    if page < n_pages:
        links.append(f'<a href="{page_name(page + 1)}">next</a>')
    return "".join(links) + f" page {page} of {n_pages}"


def _bokeh_js() -> str:
    """Bokeh's plotting core as inline ``<script>`` tags (the panels use no widgets)."""
    from bokeh.resources import INLINE, Resources

    return Resources(mode="inline", components=["bokeh"], minified=INLINE.minified).render_js()


def page_html(panels: Sequence[Panel], page: int, n_pages: int, title: str, note: str) -> str:
    """One self-contained page of panels (Bokeh's JavaScript inline; plots drawn when in view)."""
    from bokeh.embed import json_item

    items, blocks = [], []
    for panel in panels:
        plot = ""
        if panel.thinned is not None:
            plot = (f'<div class="plot" id="plot-{panel.index}" data-plot="{len(items)}" '
                    f'style="min-height:{PLOT_HEIGHT}px"></div>')
            items.append(json_item(panel_figure(panel)))
        blocks.append(f'<div class="panel" id="row-{panel.index}"><div class="info">{panel_info(panel)}</div>'
                      f"{plot}</div>")
    first, last = panels[0].index, panels[-1].index
    nav = _nav(page, n_pages)
    # "</" inside the JSON would end the script element early
    data = json.dumps(items, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(f"{title} {page}/{n_pages}")}</title>
<style>{_CSS}</style>
{_bokeh_js()}
</head><body>
<h1>{html.escape(f"{title}: rows {first}-{last}")}</h1>
<nav>{nav}</nav>
<p class="note">{html.escape(note)}</p>
{"".join(blocks)}
<nav>{nav}</nav>
<script type="application/json" id="plot-data">{data}</script>
<script>{_LAZY}</script>
</body></html>
"""


_SCRIPT = """
(function () {
  const table = document.getElementById("cat"), body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const byClass = document.getElementById("f-class"), byFlag = document.getElementById("f-flag");
  const byConf = document.getElementById("f-conf"), shown = document.getElementById("shown");
  function keep(r) {
    const flag = parseInt(r.dataset.flag, 10), conf = parseFloat(r.dataset.conf);
    const least = parseFloat(byConf.value), f = byFlag.value;
    if (byClass.value !== "" && r.dataset.cls !== byClass.value) return false;
    if (least > 0 && !(conf >= least)) return false;
    if (f === "clean") return flag === 0;
    if (f === "flagged") return flag !== 0;
    return f === "" || (flag & parseInt(f, 10)) !== 0;
  }
  function apply() {
    let n = 0;
    for (const r of rows) { r.hidden = !keep(r); if (!r.hidden) n++; }
    shown.textContent = n;
  }
  for (const e of [byClass, byFlag, byConf]) {
    e.addEventListener("input", apply);
    e.addEventListener("change", apply);
  }
  Array.from(table.tHead.rows[0].cells).forEach(function (th, i) {
    th.addEventListener("click", function () {
      const dir = th.dataset.dir === "asc" ? -1 : 1, numeric = th.dataset.type === "n";
      th.dataset.dir = dir > 0 ? "asc" : "desc";
      const value = function (r) {
        const c = r.cells[i];
        return numeric ? parseFloat(c.dataset.v) : c.textContent;
      };
      rows.sort(function (a, b) {
        const x = value(a), y = value(b);
        if (numeric) { if (isNaN(x)) return isNaN(y) ? 0 : 1; if (isNaN(y)) return -1; return dir * (x - y); }
        return dir * x.localeCompare(y);
      });
      for (const r of rows) body.appendChild(r);
    });
  });
  apply();
})();
"""

#: Summary-table columns: (catalogue column, header, numeric).
_SUMMARY_COLUMNS = (("z", "z", True), ("z_err", "z_err", True), ("deltachi2", "Δχ²", True),
                    ("teff", "Teff [K]", True), ("logg", "log g", True), ("fe_h", "[Fe/H]", True),
                    ("anomaly", "anomaly", True))


def _counts(rows: Sequence[dict[str, Any]]) -> str:
    classes = Counter(str(r["class"]) for r in rows)
    bits: Counter[str] = Counter()
    clean = 0
    for r in rows:
        names = row_flag_names(r.get("flag", 0))
        clean += not names
        bits.update(names)
    cls = "".join(f"<tr><td>{html.escape(c)}</td><td>{n}</td></tr>" for c, n in sorted(classes.items()))
    flg = f"<tr><td>0 (use it)</td><td>{clean}</td></tr>" + "".join(
        f"<tr><td>{html.escape(b)}</td><td>{n}</td></tr>" for b, n in sorted(bits.items()))
    return (f'<div style="display:flex;gap:3em"><table class="counts" id="class-counts"><tr><th>class</th>'
            f'<th>rows</th></tr>{cls}</table><table class="counts" id="flag-counts"><tr><th>flag</th>'
            f"<th>rows</th></tr>{flg}</table></div>")


def _controls(rows: Sequence[dict[str, Any]]) -> str:
    classes = sorted({str(r["class"]) for r in rows})
    class_options = '<option value="">all</option>' + "".join(
        f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in classes)
    flag_options = ('<option value="">any</option><option value="clean">0 (use it)</option>'
                    '<option value="flagged">any bit set</option>' + "".join(
                        f'<option value="{int(f)}">{f.name}</option>' for f in Flag))
    return (f'<div class="controls"><label>class <select id="f-class">{class_options}</select></label>'
            f'<label>flag <select id="f-flag">{flag_options}</select></label>'
            '<label>confidence ≥ <input id="f-conf" type="number" min="0" max="1" step="0.05" value="0">'
            f'</label><span><span id="shown">{len(rows)}</span> of {len(rows)} rows shown</span></div>')


def _summary_row(row: dict[str, Any], index: int, page: int, columns: Sequence[tuple[str, str, bool]]) -> str:
    conf = confidence(row)
    flag = int(row.get("flag", 0) or 0)
    cells = [f'<td data-v="{index}">{index}</td>',
             f'<td class="t"><a href="{page_name(page)}#row-{index}">{html.escape(str(row["id"]))}</a></td>',
             f'<td class="t">{html.escape(str(row["class"]))}</td>',
             f'<td data-v="{conf}">{format_value("prob_", conf)}</td>',
             f'<td data-v="{flag}">{flag}</td>',
             f'<td class="t">{html.escape(", ".join(row_flag_names(flag)))}</td>']
    for name, _, _ in columns:
        value = row.get(name)
        number = float(value) if value is not None and np.ndim(value) == 0 else float("nan")
        err = row.get("z_err") if name == "z" else None  # z's digits follow its error (own column)
        text = format_value(name, value, err).split(" ± ")[0]
        cells.append(f'<td data-v="{number}">{html.escape(text)}</td>')
    return (f'<tr data-cls="{html.escape(str(row["class"]))}" data-flag="{flag}" data-conf="{conf}">'
            + "".join(cells) + "</tr>")


def summary_html(rows: Sequence[dict[str, Any]], per_page: int, title: str, meta: dict[str, Any],
                 note: str) -> str:
    """The summary page: counts per class and flag, and the sortable, filterable catalogue."""
    names = set().union(*(r.keys() for r in rows)) if rows else set()
    columns = [c for c in _SUMMARY_COLUMNS if c[0] in names]
    n_pages = max(1, -(-len(rows) // per_page))
    head = ['<th data-type="n">#</th>', '<th class="t">id</th>', '<th class="t">class</th>',
            '<th data-type="n">confidence</th>', '<th data-type="n">flag</th>', '<th class="t">bits</th>']
    head += [f'<th data-type="n">{html.escape(label)}</th>' for _, label, _ in columns]
    body = "\n".join(_summary_row(r, k, k // per_page + 1, columns) for k, r in enumerate(rows))
    pages = " ".join(f'<a href="{page_name(p)}">{p}</a>' for p in range(1, n_pages + 1))
    provenance = ", ".join(f"{html.escape(str(k))} = {html.escape(str(v))}" for k, v in meta.items()
                           if isinstance(v, (str, int, float)) and len(str(v)) < 80)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} spectra; pages of {per_page}: {pages}</p>
<p class="note">{html.escape(note)}</p>
<p class="note">{provenance}</p>
{_counts(rows)}
{_controls(rows)}
<table class="cat" id="cat"><thead><tr>{"".join(head)}</tr></thead><tbody>
{body}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""

