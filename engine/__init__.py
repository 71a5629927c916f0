"""omniroute engine."""
