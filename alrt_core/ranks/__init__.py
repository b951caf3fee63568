"""ALRT's ranks: spectral maths on factors, the per-layer controller, static plans and schedules, byte and parameter
budgets, the manager that runs them while training, and the in-place resize that carries optimizer state."""
