"""Follow-up target packs: sites, observability, exposure hints, finding charts, target lists, the pack."""
