"""``report.html``: the Markdown report as one self-contained page (plots embedded as data
URIs), to open in any browser or attach to an e-mail without its folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; }
td { text-align: right; } td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""
_IMG_SRC = re.compile(r'(<img\b[^>]*\bsrc=")([^":]+\.png)(")')


def render_html(markdown_text: str, folder: Path, title: str = "volseg evaluation report") -> str:
    """The report's HTML with every local PNG it shows (relative to ``folder``) inlined.

    Links to other files (per_case.csv, summary.json) stay relative, as in the Markdown.
    """
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def inline(match: re.Match[str]) -> str:
        data = base64.b64encode((folder / match.group(2)).read_bytes()).decode("ascii")
        return f"{match.group(1)}data:image/png;base64,{data}{match.group(3)}"

    body = _IMG_SRC.sub(inline, body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
