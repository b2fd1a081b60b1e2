"""The drift report as one self-contained HTML page: a summary, then each feature's histograms and figures.

Inline CSS and inline SVG only (no script, no external asset), so the file can be mailed, attached
to a ticket or opened offline. Features come most drifted first, as in the terminal table. Each
histogram is drawn over the reference's quantile bins, the same bins PSI and Jensen-Shannon are
computed on, so what the page shows is what was measured: equal-share bins make a reference that
fills each bar about equally, and drift shows as current bars that do not.
"""

from __future__ import annotations

from collections.abc import Iterator
from html import escape

from gateway.capture.drift import FeatureDrift
from gateway.capture.drift_report import DriftReport
from gateway.capture.drift_thresholds import JS_DRIFT, PSI_DRIFT, PSI_WARN, WASSERSTEIN_DRIFT

# Chart geometry, in SVG user units.
_WIDTH, _HEIGHT = 520, 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 40, 10, 10, 42
_MAX_SLOT = 60
_REFERENCE_COLOUR, _CURRENT_COLOUR = "#4c78a8", "#f58518"

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1f2933;
       background: #f5f7fa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0; }
.summary { background: #fff; border-radius: 8px; padding: 16px 20px; margin-bottom: 20px;
           box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.verdict { display: inline-block; font-weight: 600; padding: 4px 12px; border-radius: 14px; margin: 8px 0; }
.verdict.drift { background: #fde2e1; color: #a61b1b; } .verdict.ok { background: #dff5e3; color: #1b6b2f; }
.facts { color: #52606d; } .facts b { color: #1f2933; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px; }
.card { background: #fff; border-radius: 8px; padding: 12px 14px; box-shadow: 0 1px 3px rgba(0,0,0,.12);
        border-left: 5px solid #9aa5b1; }
.card.drift { border-left-color: #d64545; } .card.warn { border-left-color: #e8a33d; }
.card.ok { border-left-color: #3f9142; }
.head { display: flex; justify-content: space-between; align-items: baseline; }
.badge { font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px; text-transform: uppercase; }
.badge.drift { background: #fde2e1; color: #a61b1b; } .badge.warn { background: #fdf0d5; color: #8a5a00; }
.badge.ok { background: #dff5e3; color: #1b6b2f; }
table.stats { border-collapse: collapse; width: 100%; margin-top: 6px; font-variant-numeric: tabular-nums; }
table.stats td, table.stats th { padding: 2px 6px; text-align: right; font-size: 13px; }
table.stats th { color: #52606d; font-weight: 500; }
table.stats td.over { color: #a61b1b; font-weight: 600; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; border-radius: 2px; }
.skipped { color: #52606d; font-size: 13px; }
.chips { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 4px; }
.chip { font-size: 12px; padding: 1px 7px; border-radius: 9px; text-decoration: none; color: #1f2933;
        background: #dff5e3; }
.chip.drift { background: #f8c9c7; font-weight: 600; } .chip.warn { background: #fbe2b0; }
svg text { font: 10px system-ui, sans-serif; fill: #52606d; }
"""


def render(report: DriftReport) -> str:
    """The whole page."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Drift: {escape(report.model)} version {report.version}</title>",
            f"<style>{_STYLE}</style></head><body>",
            *_summary(report),
            '<div class="cards">',
            *(_card(feature) for feature in report.features),
            "</div></body></html>",
        ]
    )


def _summary(report: DriftReport) -> Iterator[str]:
    drifted = len(report.drifted_features)
    total = len(report.features)
    verdict = "drift" if report.drifted else "ok"
    text = "Dataset drift" if report.drifted else "No dataset drift"
    chosen = " (the newest version with captured rows)" if report.version_chosen else ""
    yield '<div class="summary">'
    yield f"<h1>Drift: {escape(report.model)} version {report.version}{chosen}</h1>"
    yield (
        f'<div class="verdict {verdict}">{text}: {drifted} of {total} features drifted'
        f" (the dataset drifts at {report.drift_share:.0%} or more)</div>"
    )
    yield (
        f'<div class="facts"><b>{report.rows:,}</b> served rows captured'
        f"{_window_text(report)} against <b>{report.reference_rows:,}</b> reference rows"
        f" from {escape(report.reference)}.</div>"
    )
    yield (
        '<div class="facts">A feature drifts when its Wasserstein distance over the reference\'s standard'
        f" deviation reaches {WASSERSTEIN_DRIFT:g} (Jensen-Shannon {JS_DRIFT:g} for features with few distinct"
        f" values), or its PSI reaches {PSI_DRIFT:g}; PSI from {PSI_WARN:g} is a warning."
        " The KS p-value is shown but does not vote.</div>"
    )
    yield (
        '<div class="legend facts">Histograms over the reference\'s quantile bins:'
        f'<span style="background:{_REFERENCE_COLOUR}"></span>reference'
        f'<span style="background:{_CURRENT_COLOUR}"></span>current</div>'
    )
    chips = "".join(
        f'<a class="chip {feature.level}" href="#{_anchor(feature.name)}">{escape(feature.name)}</a>'
        for feature in report.features
    )
    yield f'<div class="chips">{chips}</div>'
    if report.skipped:
        names = ", ".join(f"{escape(name)} ({escape(why)})" for name, why in sorted(report.skipped.items()))
        yield f'<div class="skipped">Not compared: {names}</div>'
    yield "</div>"


def _window_text(report: DriftReport) -> str:
    window = report.window
    if window is None or (window.since is None and window.until is None):
        return ""
    since = window.since.isoformat() if window.since else "the start"
    until = window.until.isoformat() if window.until else "now"
    return f" from {escape(since)} until {escape(until)}"


def _card(feature: FeatureDrift) -> str:
    wasserstein_over = feature.test == "wasserstein" and feature.wasserstein >= WASSERSTEIN_DRIFT
    cells = [
        ("PSI", f"{feature.psi:.4f}", feature.psi >= PSI_DRIFT),
        ("JS", f"{feature.js:.4f}", feature.test == "js" and feature.js >= JS_DRIFT),
        ("KS", f"{feature.ks:.4f}", False),
        ("KS p", f"{feature.ks_pvalue:.3g}", False),
        ("Wass./sd", f"{feature.wasserstein:.4f}", wasserstein_over),
        ("mean ref → cur", f"{feature.reference_mean:.3g} → {feature.current_mean:.3g}", False),
    ]
    header = "".join(f"<th>{name}</th>" for name, _, _ in cells)
    values = "".join(f'<td class="{"over" if over else ""}">{value}</td>' for _, value, over in cells)
    return (
        f'<div class="card {feature.level}" id="{_anchor(feature.name)}">'
        f'<div class="head"><h2>{escape(feature.name)}</h2>'
        f'<span class="badge {feature.level}">{feature.level}</span></div>'
        f"{histogram_svg(feature)}"
        f'<table class="stats"><tr>{header}</tr><tr>{values}</tr></table></div>'
    )


def _anchor(name: str) -> str:
    return "feature-" + "".join(character if character.isalnum() else "-" for character in name)


def histogram_svg(feature: FeatureDrift) -> str:
    """Reference and current shares per bin, overlaid: the reference as wide bars, the current as narrow."""
    bins = feature.reference_shares.size
    plot_width = _WIDTH - _LEFT - _RIGHT
    plot_height = _HEIGHT - _TOP - _BOTTOM
    top = max(float(feature.reference_shares.max()), float(feature.current_shares.max()), 1e-9)
    slot = min(plot_width / bins, _MAX_SLOT)  # a feature with two bins gets two bars, not two slabs
    parts = [
        f'<svg class="histogram" width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}"'
        f' role="img" aria-label="histograms of {escape(feature.name)}">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_height}" x2="{_WIDTH - _RIGHT}" y2="{_TOP + plot_height}"'
        ' stroke="#9aa5b1"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{top:.0%}</text>',
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_height}" text-anchor="end">0</text>',
    ]
    for index in range(bins):
        x = _LEFT + index * slot
        parts.append(_bar(x + slot * 0.08, slot * 0.84, feature.reference_shares[index], top, plot_height,
                          _REFERENCE_COLOUR, 0.55, "reference"))
        parts.append(_bar(x + slot * 0.28, slot * 0.44, feature.current_shares[index], top, plot_height,
                          _CURRENT_COLOUR, 0.9, "current"))
    for index, edge in enumerate(feature.edges, start=1):
        x = _LEFT + index * slot
        parts.append(f'<text x="{x:.1f}" y="{_TOP + plot_height + 14}" text-anchor="middle">{edge:.3g}</text>')
    parts.append(
        f'<text x="{_LEFT}" y="{_HEIGHT - 6}">'
        "bin edges (values up to each edge; the last bin is above the last edge)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _bar(x: float, width: float, share: float, top: float, plot_height: float, colour: str, opacity: float,
         side: str) -> str:
    height = plot_height * float(share) / top
    y = _TOP + plot_height - height
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{colour}"'
        f' fill-opacity="{opacity}"><title>{side}: {float(share):.1%}</title></rect>'
    )
