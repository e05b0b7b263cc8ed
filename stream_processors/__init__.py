"""Stream processors: follow each case across agencies, compute rolling KPIs, raise lag alerts."""
