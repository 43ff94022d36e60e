"""The paper's layer: its catalogue (:mod:`.catalogue`: Tables 1-12, the labels of methods, attacks,
datasets and models, the appendix grids), the tables of one's own runs beside it (:mod:`.report`,
:mod:`.report_html`), its theory section (:mod:`.theory`) and its figures (:mod:`.figures`)."""

from virkit.paper.catalogue import *  # noqa: F403  (the catalogue is this package's public face)
from virkit.paper.catalogue import __all__ as _catalogue_all
from virkit.paper.report import collect_runs, make_table, mean_std, report_main, to_markdown
from virkit.paper.report_html import write_html_report

__all__ = [*_catalogue_all, "collect_runs", "make_table", "mean_std", "report_main", "to_markdown", "write_html_report"]
