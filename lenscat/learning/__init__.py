"""Human-in-the-loop learning: active-learning campaigns retrained on graders' verdicts."""
