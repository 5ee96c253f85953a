"""Study results as data first (trials frame, Pareto front), rendered second (tables, HTML)."""
