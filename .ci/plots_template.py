"""Write .dvc/plots/offline.html: DVC's plot page with Vega inlined, so `dvc plots show` renders offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, and every plot box stays empty
without a network. `.dvc/config` points `plots.html_template` at this page instead; it has no
`{scripts}` placeholder, so DVC adds no CDN tags. The libraries come from the npm packages that
`.ci/run` installs (the versions dvc-render asks for), and the test suite checks the committed
page is exactly what this script writes from them:

    python .ci/plots_template.py            # after `bash .ci/run` has installed .ci/vega
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VEGA = ROOT / ".ci/vega/node_modules"
LIBRARIES = (("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2"))  # as dvc-render's page loads them
TEMPLATE = ROOT / ".dvc/plots/offline.html"


def page() -> str:
    scripts = []
    for name, version in LIBRARIES:
        js = (VEGA / name / "build" / f"{name}.min.js").read_text(encoding="utf8")
        if "</script" in js:
            raise SystemExit(f"{name}: its code contains </script and cannot be inlined as it is")
        scripts.append(f"<!-- {name} {version} (BSD-3-Clause), from npm -->\n<script>{js}</script>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html>",
            "<head>",
            '<meta charset="utf-8">',
            "{refresh_tag}",
            "<title>DVC Plot</title>",
            *scripts,
            "<style>table { border-spacing: 15px; }</style>",
            "</head>",
            "<body>",
            "{plot_divs}",
            "</body>",
            "</html>",
            "",
        ]
    )


if __name__ == "__main__":
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page(), encoding="utf8")
    print(f"{TEMPLATE.relative_to(ROOT)}: {TEMPLATE.stat().st_size:,} bytes", file=sys.stderr)
