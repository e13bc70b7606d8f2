"""Lens modelling (issue 33): a network's SIE + shear models of candidates, their storage and vetting."""
