"""lenscat: a database-centric catalogue system for finding strong gravitational lenses."""

__version__ = "0.1.0"
