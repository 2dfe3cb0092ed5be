"""Sphinx fixes for an offline Jupyter Book with widgets.

- Deduplicate inline scripts: sphinx-thebe registers its config script once per read phase, and Jupyter Book runs
  that phase twice, so pages declared ``const THEBE_JS_URL`` twice (a console SyntaxError).
- Load ``widgets/mathjax2-shim.js``: the ipywidgets HTML manager typesets labels through MathJax 2's
  ``MathJax.Hub.Queue``, while Sphinx loads MathJax 3.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for s in scripts:
        attrs = getattr(s, "attributes", {}) or {}
        key = (getattr(s, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(s)
    scripts[:] = unique


def setup(app):
    app.add_js_file("widgets-mathjax2-shim.js", priority=900)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
