"""Measuring and reporting: memory per network, the figure report and the frontier/controls report."""
