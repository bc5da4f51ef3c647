"""_render: a report as text, HTML and SVG charts, its timeline, the price table and the
shared formatting helpers. Imports _base, _core and _journal (to report on a journal
file) only; knows no terminal or CLI."""
