"""The grading web app (``lenscat serve``): inspection grids, candidate pages, search, export."""
