"""Analysis: eval-cur and the linear probes, statistics, comparisons and sweeps, reports and figures."""
