"""Report forms beyond the terminal table and JSON: a PNG plot (:mod:`.plot`, needs matplotlib) and a Markdown
summary (:mod:`.summary`). Both work from a report's ``to_dict()`` form only (docs/report.schema.json), so they
render a report read back from a ``--json`` file as well as a live one."""
