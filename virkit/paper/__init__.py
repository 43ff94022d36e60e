"""The paper's layer: its catalogue (:mod:`.catalogue`: the labels of methods, attacks, datasets and models,
the paper's hyperparameters) and its tables (:mod:`.tables`: Tables 1-12, the appendix grids), the tables of
one's own runs beside them (:mod:`.report`, :mod:`.report_html`), its theory section (:mod:`.theory`: closed forms;
:mod:`.theory_empirical`: samples, Monte Carlo, trained linear models) and its figures (:mod:`.figures`)."""

from __future__ import annotations

from virkit.paper.catalogue import *  # noqa: F403  (the catalogue and the tables are this package's public face)
from virkit.paper.catalogue import __all__ as _catalogue_all
from virkit.paper.report import collect_runs, make_table, mean_std, report_main, to_markdown
from virkit.paper.report_html import write_html_report
from virkit.paper.tables import *  # noqa: F403
from virkit.paper.tables import __all__ as _tables_all

__all__ = [
    *_catalogue_all,
    *_tables_all,
    "collect_runs",
    "make_table",
    "mean_std",
    "report_main",
    "to_markdown",
    "write_html_report",
]
