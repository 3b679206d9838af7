"""Domain evaluation (paper Appendix H, Tables 13-14): benchmark items, metrics, scoring."""
