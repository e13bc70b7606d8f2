"""The TAP service (IVOA TAP 1.1 with ADQL, VOSI, UWS): ADQL translated onto the sky index, run read-only."""
