"""The names training accepts, without importing torch (the command line registers them as choices)."""

OBJECTIVES: tuple[str, ...] = ("slice", "mil")
SCHEDULES: tuple[str, ...] = ("step", "cosine")
AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "flip+affine", "flip+affine+intensity")
RECIPE_NAMES: tuple[str, ...] = ("paper", "cpu")
RECIPE_CHOICES: tuple[str, ...] = ("auto", *RECIPE_NAMES)
