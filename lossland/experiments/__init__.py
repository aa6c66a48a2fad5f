"""Experiments: options as dataclass fields, grids of cells, studies.

``options`` (one option system: dataclass fields -> flags), ``grid`` (cells
run in worker processes over a sweep directory), ``study`` (a Study is
propose / analyze / plot; ``run_study`` runs rounds of cells and writes one
run directory), and the two jamming-paper studies built on them:
``phase_study`` (the jamming phase diagram) and ``generalization_study``
(test error, ensembles and NTK fluctuations vs width).
"""
