"""Presets as values: each is a study config whose docstring gives its command
and its measured runtime (``phase``: the jamming phase diagram;
``generalization``: test error and fluctuations vs width)."""
