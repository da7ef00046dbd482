"""The paper's figures (2, 4, 5, 6 and the weight heat map) as matplotlib figures and PNGs."""
from olss_jax._src.figures import (
    correlation_figure,
    correlation_matrix,
    error_vs_steps_figure,
    generation_paths_figure,
    image_grid_figure,
    save_image_grid,
    to_display_images,
    weights_figure,
)
from olss_jax._src.workbench import (
    FIGURE_BASELINES,
    FIGURE_NAMES,
    PATH_METHODS,
    generation_paths,
    paper_figures,
)

__all__ = ["FIGURE_BASELINES", "FIGURE_NAMES", "PATH_METHODS", "correlation_figure",
           "correlation_matrix", "error_vs_steps_figure", "generation_paths",
           "generation_paths_figure", "image_grid_figure", "paper_figures", "save_image_grid",
           "to_display_images", "weights_figure"]
