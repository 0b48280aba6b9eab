"""What a finished loop or grid reports: tables with intervals, figures, the paper's claims checked, and
``report.html``."""
