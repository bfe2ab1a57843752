"""`edgesplit report`: one self-contained HTML page from the files the stages wrote.

``scan`` finds and loads the files of a run folder (``report.scan``), the sections render each kind of file
(``report.sections``) from HTML pieces (``report.html``), and ``build_report``/``write_report`` assemble the page
(``report.page``).
"""

from edgesplit.report.page import REPORT_KIND, REPORT_VERSION, build_report, report_index, write_report
from edgesplit.report.scan import Found, RunFiles, detect_kind, find_png, scan

__all__ = ["REPORT_KIND", "REPORT_VERSION", "Found", "RunFiles", "build_report", "detect_kind", "find_png",
           "report_index", "scan", "write_report"]
